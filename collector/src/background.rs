//! Background work (converting the log to Parquet, merging files, SQL)
//! runs at a lower CPU priority than ingest: an agent's acknowledgement
//! waits on ingest, while a flush or a query only finishes a little later
//! when the cores are busy. Lowered threads still get every idle moment and,
//! against busy ingest threads, a share of the cores (at
//! [`BACKGROUND_NICE_STEP`], about a tenth of what a busy ingest thread
//! gets), so the flusher keeps moving under sustained load; its lag is the
//! `leakwatch_flush_lag_batches` metric.

use crate::{Error, Result};

/// How much higher (lower priority) a background thread's nice value is
/// than the process's (its main thread's; 19 at most). Linux only;
/// elsewhere background threads keep the process's priority.
pub const BACKGROUND_NICE_STEP: i32 = 10;

/// The nice value background threads get: the process's plus
/// [`BACKGROUND_NICE_STEP`], at most 19.
pub fn background_nice() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // PRIO_PROCESS with the process id names the main thread.
        let process = rustix::process::getpriority_process(Some(rustix::process::getpid())).unwrap_or(0);
        (process + BACKGROUND_NICE_STEP).min(19)
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// Lowers the calling thread's CPU priority to [`background_nice`] (on
/// Linux the nice value is per thread) unless it is that low already. A
/// failure is logged and the thread keeps its priority.
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        let nice = background_nice();
        if this_thread_nice() < nice
            && let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)
        {
            tracing::debug!(error = %e, nice, "Could not lower a background thread's priority");
        }
    }
}

/// The calling thread's nice value (Linux; 0 elsewhere).
pub fn this_thread_nice() -> i32 {
    #[cfg(target_os = "linux")]
    {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// Runs `work` on a thread of its own named `name`, at background priority,
/// and waits for its result without blocking the runtime. A panic in
/// `work` becomes an error naming the thread.
pub async fn run<T: Send + 'static>(name: &str, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    run_at(name, true, work).await
}

/// [`run`], at background priority when `lowered`, else at the caller's
/// process's (for work that must catch up with ingest).
pub async fn run_at<T: Send + 'static>(
    name: &str,
    lowered: bool,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if lowered {
                lower_this_thread();
            }
            let _ = tx.send(work());
        })
        .map_err(|e| Error::Storage(format!("starting the {name} thread: {e}")))?;
    rx.await.map_err(|_| Error::Storage(format!("the {name} thread stopped without finishing (panicked)")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_lowered_and_its_result_or_panic_comes_back() {
        let before = this_thread_nice();
        let nice = run("test-background", || Ok(this_thread_nice())).await.expect("runs");
        assert_eq!(nice, background_nice().max(before), "the work's thread is lowered");
        #[cfg(target_os = "linux")]
        assert!(background_nice() > before || before == 19, "{before} -> {}", background_nice());
        assert_eq!(this_thread_nice(), before, "the caller's thread keeps its priority");
        let kept = run_at("test-background", false, || Ok(this_thread_nice())).await.expect("runs");
        assert_eq!(kept, before, "work not lowered keeps the process's priority");
        let failed = run::<()>("test-panics", || panic!("on purpose")).await.expect_err("a panic is an error");
        assert!(failed.to_string().contains("test-panics"), "{failed}");
    }
}
