//! mimalloc's purge delay: how long memory the program freed stays with
//! the process before mimalloc hands it back to the operating system.
//! Both binaries allocate through mimalloc and choose a delay: the
//! collector a long one (queries free and rebuild large tables), the agent
//! none (a router counts every resident page).

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`'s `mi_option_e`, v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Environment variable that sets the delay instead (mimalloc's own).
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Sets mimalloc's purge delay to `ms` milliseconds (0: at once) unless
/// [`PURGE_DELAY_ENV`] chose one. Call it first thing in `main`, before
/// any other thread exists, and only where mimalloc is the global
/// allocator.
pub fn set_purge_delay(ms: i64) {
    if std::env::var_os(PURGE_DELAY_ENV).is_some() {
        return;
    }
    // SAFETY: `mi_option_set` writes one entry of mimalloc's option table
    // and is safe to call at any time except concurrently with itself;
    // the callers run it before starting any thread.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms as std::ffi::c_long);
    }
}

/// The purge delay in force, in milliseconds.
pub fn purge_delay() -> std::ffi::c_long {
    // SAFETY: reads one entry of mimalloc's option table.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Option 15 is the purge delay: before it is set it holds mimalloc
    /// v3's default delay, 1000 ms, a value no neighbouring option has
    /// (a mimalloc that renumbered its options fails here); afterwards
    /// it holds what was set. The test binary links mimalloc without
    /// allocating through it, which leaves the option table as the binary
    /// has it.
    #[test]
    fn option_15_is_the_purge_delay() {
        if std::env::var_os(PURGE_DELAY_ENV).is_some() {
            return;
        }
        assert_eq!(purge_delay(), 1000);
        set_purge_delay(10_000);
        assert_eq!(purge_delay(), 10_000);
        set_purge_delay(0);
        assert_eq!(purge_delay(), 0);
    }
}
