//! Retention: day partitions older than the configured number of days
//! deleted.

use leakwatch_query::files::FLOWS_DIR;

use super::DataStore;
use crate::Result;

impl DataStore {
    /// Deletes the day partitions before `cutoff`: how many files went,
    /// and how many stay for a later pass because a running query planned
    /// to read them.
    pub async fn apply_retention(&self, cutoff: chrono::NaiveDate) -> Result<Retained> {
        let (mut deleted, mut left) = (0, 0);
        for (file, meta) in self.flow_files().await? {
            if chrono::NaiveDate::parse_from_str(&file.day, "%Y-%m-%d").is_ok_and(|d| d < cutoff) {
                if self.delete(&meta.location).await? {
                    deleted += 1;
                } else {
                    left += 1;
                }
            }
        }
        // The local store leaves empty day directories behind.
        if let Some(root) = &self.local
            && let Ok(days) = std::fs::read_dir(root.join(FLOWS_DIR))
        {
            for day in days.flatten() {
                let _ = std::fs::remove_dir(day.path()); // only succeeds when empty
            }
        }
        if deleted > 0 || left > 0 {
            tracing::info!(deleted, left, cutoff = %cutoff, "Retention deleted old partitions (left: read by running queries)");
        }
        Ok(Retained { deleted, left })
    }
}

/// What a retention pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    /// Files deleted.
    pub deleted: u64,
    /// Files left because a running query planned to read them.
    pub left: u64,
}
