//! The `anchises` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    bound_malloc_retention();
    anchises::cli::main(anchises::cli::Cli::parse())
}

/// Buffers of 128 KiB and more (file chunks, S3 parts) get their own mappings,
/// returned to the system when freed. Left to itself, glibc raises this
/// threshold after the first such buffer is freed and then keeps tens of MB
/// of freed part buffers resident in its per-thread arenas, which a
/// long-running sidecar pays for in RSS.
fn bound_malloc_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it runs before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
