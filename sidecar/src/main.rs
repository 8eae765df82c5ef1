//! The `anchises` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    anchises::cli::main(anchises::cli::Cli::parse())
}
