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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LEAKWATCH_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // Colours only on a terminal, not in a journal or a redirected log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Queries are planned (and, for Ballista, serialized) on these threads too.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(leakwatch_query::QUERY_THREAD_STACK)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(leakwatch::run(leakwatch::flags::Cli::parse())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
