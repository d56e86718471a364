//! Retention: day partitions older than the configured number of days
//! deleted.

use leakwatch_query::files::FLOWS_DIR;

use super::DataStore;
use crate::Result;

impl DataStore {
    /// Deletes the day partitions before `cutoff`; returns how many files
    /// went.
    pub async fn apply_retention(&self, cutoff: chrono::NaiveDate) -> Result<u64> {
        let mut deleted = 0;
        for (file, meta) in self.flow_files().await? {
            if chrono::NaiveDate::parse_from_str(&file.day, "%Y-%m-%d").is_ok_and(|d| d < cutoff) {
                self.delete(&meta.location).await?;
                deleted += 1;
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
        if deleted > 0 {
            tracing::info!(deleted, cutoff = %cutoff, "Retention deleted old partitions");
        }
        Ok(deleted)
    }
}
