//! The `anchises` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    bound_malloc_retention();
    let cli = anchises::cli::Cli::parse();
    if !matches!(
        cli.command,
        anchises::cli::Command::Node(_) | anchises::cli::Command::Control(_)
    ) {
        exit_quietly_on_closed_stdout();
    }
    anchises::cli::main(cli)
}

/// A client command whose output goes to a pipe that closes early
/// (`anchises backup list --json | head -1`) ends like any Unix tool, by
/// SIGPIPE, instead of failing on the write. The servers (`node`, `control`)
/// keep Rust's default of ignoring it: a closed pipe to a child process must
/// not end them.
fn exit_quietly_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal, before any
    // other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
