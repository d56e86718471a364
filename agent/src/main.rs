//! `leakwatch-agent`: see [`leakwatch_agent::cli`].

use std::process::ExitCode;

use clap::Parser as _;

// Import allocates and frees many small strings and vectors per connection;
// mimalloc does that at a fraction of the system allocator's cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LEAKWATCH_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // Colours only on a terminal, not in a journal or a redirected log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match leakwatch_agent::cli::run(leakwatch_agent::cli::Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
