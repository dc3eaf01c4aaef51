//! The `embq` binary: parses arguments, installs logging, runs a subcommand.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = embq::cli::Cli::parse();
    embq::cli::main(cli)
}
