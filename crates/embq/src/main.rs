//! The `embq` binary: parses arguments, installs logging, runs a subcommand.

use std::process::ExitCode;

use clap::Parser;

/// Counts live heap bytes for `worker_memory_usage_bytes{type="heapUsed|heapTotal"}`.
#[global_allocator]
static ALLOC: embq::memory::CountingAlloc = embq::memory::CountingAlloc;

fn main() -> ExitCode {
    let cli = embq::cli::Cli::parse();
    embq::cli::main(cli)
}
