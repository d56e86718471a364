//! The binaries' log on stderr: which events (`LEAKWATCH_LOG`, an
//! `EnvFilter` such as `info` or `leakwatch_collector=debug`; default
//! `warn`), as text or as JSON lines (`--log-format`).

/// `--log-format`'s values.
pub const FORMATS: [&str; 2] = ["text", "json"];

/// Starts the log in `format` (one of [`FORMATS`]; anything else is
/// text). Text has colours only on a terminal; JSON is one object a line
/// (`timestamp`, `level`, `target`, `fields` with the message, and the
/// spans), for a log collector to read.
pub fn init(format: &str) {
    let _ = JSON.set(format == "json");
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEAKWATCH_LOG").unwrap_or_else(|_| "warn".into());
    let log = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        log.json().with_current_span(false).init();
    } else {
        // Colours only on a terminal, not in a journal or a redirected log.
        log.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
}

/// Whether the log is JSON lines (set by [`init`]).
static JSON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Tells the person running a command `message` on stderr: as a line of
/// its own in text (`error: ` or `warning: ` before it at those levels),
/// or in `json` as an event of the log at `level` (which `LEAKWATCH_LOG`
/// filters like every event), so that every line on stderr is one JSON
/// object for a log collector.
pub fn say(level: tracing::Level, message: &dyn std::fmt::Display) {
    if JSON.get().copied().unwrap_or(false) {
        match level {
            tracing::Level::ERROR => tracing::error!("{message}"),
            tracing::Level::WARN => tracing::warn!("{message}"),
            tracing::Level::INFO => tracing::info!("{message}"),
            tracing::Level::DEBUG => tracing::debug!("{message}"),
            tracing::Level::TRACE => tracing::trace!("{message}"),
        }
        return;
    }
    match level {
        tracing::Level::ERROR => eprintln!("error: {message}"),
        tracing::Level::WARN => eprintln!("warning: {message}"),
        _ => eprintln!("{message}"),
    }
}

/// Says why the program stops: `error: ...` on stderr, or in `json` an
/// event like every other line of the log.
pub fn fatal(format: &str, error: &dyn std::fmt::Display) {
    if format == "json" {
        tracing::error!(error = %error, "Stopped");
    } else {
        eprintln!("error: {error}");
    }
}
