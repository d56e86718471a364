//! `leakwatch`: see the [`leakwatch`] crate.

use std::process::ExitCode;

use clap::Parser as _;

// Ingest decodes, checks and converts thousands of small strings per
// report, and queries allocate and free batches all the time: mimalloc
// does both at a fraction of the system allocator's cost (whose malloc and
// free were a fifth of the ingest profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before any other thread exists (see the function).
    leakwatch_collector::allocator::keep_freed_memory_longer();
    let cli = leakwatch::flags::Cli::parse();
    let log_format = cli.log_format.clone();
    leakwatch_core::log::init(&log_format);
    // Queries are planned (and, for Ballista, serialized) on these threads too.
    let runtime = match leakwatch_query::query_runtime_builder().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(leakwatch::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            leakwatch_core::log::fatal(&log_format, &e);
            ExitCode::from(1)
        }
    }
}
