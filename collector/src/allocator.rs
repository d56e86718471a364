//! How long the allocator keeps freed memory before returning it.
//!
//! The `leakwatch` binary and the benchmarks allocate through mimalloc,
//! which returns memory to the operating system once it has been free for
//! a second (its default `purge_delay`). A query builds hash tables and
//! batches of hundreds of megabytes, grows them, frees them and builds the
//! next, so with that default much of its memory went back to the system
//! and came back again page by page, every page faulted in and zeroed by
//! the kernel. Ten seconds keeps it through a query and the queries right
//! after it, and still hands it back soon after the last one: on 50 M
//! simulated records, in runs alternating with mimalloc's default, the
//! six rules took 7 to 30 % less time (see the rules benchmark in
//! benches/README.md); on 20 M, ten seconds did about as well as never returning
//! memory at all.

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`'s `mi_option_e`, v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Milliseconds freed memory stays with the process before mimalloc hands
/// it back to the operating system.
pub const PURGE_DELAY_MS: i64 = 10_000;

/// Environment variable that sets the delay instead (mimalloc's own).
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`] unless
/// [`PURGE_DELAY_ENV`] chose one. Call it first thing in `main`, before
/// any other thread exists, and only where mimalloc is the global
/// allocator.
pub fn keep_freed_memory_longer() {
    if std::env::var_os(PURGE_DELAY_ENV).is_some() {
        return;
    }
    // SAFETY: `mi_option_set` writes one entry of mimalloc's option table
    // and is safe to call at any time except concurrently with itself;
    // the callers run it before starting any thread.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as std::ffi::c_long);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Option 15 is the purge delay: before it is set it holds mimalloc
    /// v3's default delay, 1000 ms, a value no neighbouring option has
    /// (a mimalloc that renumbered its options fails here); afterwards
    /// it holds ours. The test binary links mimalloc without allocating
    /// through it, which leaves the option table as the binary has it.
    #[test]
    fn option_15_is_the_purge_delay() {
        if std::env::var_os(PURGE_DELAY_ENV).is_some() {
            return;
        }
        #[allow(unsafe_code)]
        // SAFETY: reads one entry of mimalloc's option table.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(get(), 1000);
        keep_freed_memory_longer();
        assert_eq!(get(), PURGE_DELAY_MS as std::ffi::c_long);
    }
}
