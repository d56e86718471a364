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

/// Milliseconds freed memory stays with the process before mimalloc hands
/// it back to the operating system.
pub const PURGE_DELAY_MS: i64 = 10_000;

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`] unless
/// `MIMALLOC_PURGE_DELAY` chose one. Call it first thing in `main`, before
/// any other thread exists, and only where mimalloc is the global
/// allocator.
pub fn keep_freed_memory_longer() {
    leakwatch_core::allocator::set_purge_delay(PURGE_DELAY_MS);
}
