//! Memory of queries: each session's own limit
//! ([`crate::QueryConfig::memory_limit_bytes`]), and one total that all
//! sessions running at once share ([`QueryMemory`]), so that many sessions
//! (PostgreSQL and Flight SQL clients, the dashboard's refresh) cannot
//! together hold more than the process was given for queries.
//!
//! A session's pool grows its own count first, then the total's; what the
//! total refuses is a ResourcesExhausted error that says so, as what the
//! session's own limit refuses is (operators that can spill spill then).

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
    human_readable_size,
};

/// Default of [`QueryMemory`]'s total: 4 GiB.
pub const DEFAULT_TOTAL_BYTES: usize = 4 << 30;

/// The memory all sessions' queries hold at once may not exceed. Clones
/// share it: give every session factory of one process the same one.
#[derive(Clone)]
pub struct QueryMemory(Arc<GreedyMemoryPool>);

impl QueryMemory {
    /// A total of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(GreedyMemoryPool::new(bytes)))
    }

    /// The default total, or `bytes` when that is more: a total one
    /// session given `bytes` fits in.
    pub fn at_least(bytes: usize) -> Self {
        Self::new(bytes.max(DEFAULT_TOTAL_BYTES))
    }

    /// The total, bytes.
    pub fn total_bytes(&self) -> usize {
        match self.0.memory_limit() {
            MemoryLimit::Finite(bytes) => bytes,
            MemoryLimit::Infinite | MemoryLimit::Unknown => usize::MAX,
        }
    }

    /// What the sessions hold now, bytes.
    pub fn reserved_bytes(&self) -> usize {
        self.0.reserved()
    }

    /// A session's pool: at most `limit` bytes of its own, within the total.
    pub(crate) fn session_pool(&self, limit: usize) -> Arc<dyn MemoryPool> {
        Arc::new(SessionPool {
            own: TrackConsumersPool::new(GreedyMemoryPool::new(limit), NonZeroUsize::new(5).expect("5")),
            total: self.clone(),
        })
    }
}

impl Default for QueryMemory {
    fn default() -> Self {
        Self::new(DEFAULT_TOTAL_BYTES)
    }
}

impl fmt::Debug for QueryMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryMemory")
            .field("total_bytes", &self.total_bytes())
            .field("reserved_bytes", &self.reserved_bytes())
            .finish()
    }
}

/// The same total (not merely one of the same size).
impl PartialEq for QueryMemory {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for QueryMemory {}

/// One session's pool: its own limit (with the largest consumers named
/// when it is reached), inside the shared total.
#[derive(Debug)]
struct SessionPool {
    own: TrackConsumersPool<GreedyMemoryPool>,
    total: QueryMemory,
}

impl fmt::Display for SessionPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session {} within all queries' {}", self.own, self.total.0)
    }
}

impl MemoryPool for SessionPool {
    fn name(&self) -> &str {
        "session within a total"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.own.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.own.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.own.grow(reservation, additional);
        self.total.0.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.own.shrink(reservation, shrink);
        self.total.0.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        if let Err(e) = self.own.try_grow(reservation, additional) {
            return Err(match e {
                DataFusionError::ResourcesExhausted(m) => DataFusionError::ResourcesExhausted(format!(
                    "{m} (one query's memory limit, --query-memory-mib: {})",
                    match self.own.memory_limit() {
                        MemoryLimit::Finite(bytes) => human_readable_size(bytes),
                        MemoryLimit::Infinite | MemoryLimit::Unknown => "none".to_string(),
                    }
                )),
                e => e,
            });
        }
        if self.total.0.try_grow(reservation, additional).is_err() {
            self.own.shrink(reservation, additional);
            let total = self.total.total_bytes();
            let held = self.total.reserved_bytes();
            return Err(DataFusionError::ResourcesExhausted(format!(
                "Failed to allocate additional {} for {}: the queries running now hold {} of the {} all \
                 queries may hold at once (--query-memory-total-mib); run it again when they are done",
                human_readable_size(additional),
                reservation.consumer().name(),
                human_readable_size(held),
                human_readable_size(total),
            )));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.own.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.own.memory_limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn sessions_share_the_total_and_each_keeps_its_own_limit() {
        let memory = QueryMemory::new(96 * MIB);
        let (a, b) = (memory.session_pool(64 * MIB), memory.session_pool(64 * MIB));
        let ra = MemoryConsumer::new("a's sort").register(&a);
        let rb = MemoryConsumer::new("b's join").register(&b);

        let own = ra.try_grow(65 * MIB).expect_err("over the session's own limit");
        assert!(own.to_string().contains("a's sort"), "{own}");
        assert_eq!(memory.reserved_bytes(), 0, "what the session refused is not held in the total");

        ra.try_grow(60 * MIB).expect("within both");
        let total = rb.try_grow(60 * MIB).expect_err("within b's own limit, over the total");
        let text = total.to_string();
        assert!(text.contains("--query-memory-total-mib") && text.contains("b's join"), "{text}");
        assert_eq!(b.reserved(), 0, "what the total refused is not held by the session");
        rb.try_grow(30 * MIB).expect("what the total has left");
        assert_eq!((a.reserved(), b.reserved(), memory.reserved_bytes()), (60 * MIB, 30 * MIB, 90 * MIB));

        drop(ra);
        assert_eq!(memory.reserved_bytes(), 30 * MIB, "a session's memory goes back to the total");
        rb.try_grow(30 * MIB).expect("b now has room");
        assert!(matches!(b.memory_limit(), MemoryLimit::Finite(l) if l == 64 * MIB), "a session's limit is its own");
    }
}
