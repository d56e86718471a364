//! Delivery: the spool's batches to the collector, oldest first.
//!
//! A batch leaves the spool only after the collector answered `accepted`
//! or `duplicate` for it. Transient failures are retried by the
//! [`Uploader`] (backoff with jitter, the collector's retry hints); a batch
//! the collector refuses as invalid (`InvalidArgument`) can never be
//! stored, so it is removed and counted in `rejected_batches`; any other
//! refusal (a revoked token, say) stops delivery and keeps the spool.
//!
//! What happened is kept in `status.json` in the state directory for
//! `leakwatch-agent status`. It is informational: one that cannot be read
//! (cut short by a power loss: it is not fsynced) or written (a full disk)
//! is warned about and never stops delivery.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use leakwatch_proto::v1::{AckStatus, ReportBatch};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tonic::Code;

use crate::spool::{Spool, SpoolSummary};
use crate::uploader::{Uploader, transient};
use crate::{Error, Result};

/// What the agent last did with its collector, kept in `status.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStatus {
    /// Collector URL of the last delivery.
    pub collector: Option<String>,
    /// Batches the collector stored.
    pub sent_batches: u64,
    /// Records in them.
    pub sent_records: u64,
    /// Batches the collector already had (retries after a lost answer).
    pub duplicate_batches: u64,
    /// Batches the collector refused as invalid; removed from the spool.
    pub rejected_batches: u64,
    /// Spool entries that did not decode as a batch; removed.
    pub undecodable_entries: u64,
    /// Last delivery attempt (RFC 3339).
    pub last_attempt: Option<String>,
    /// Last batch the collector acknowledged (RFC 3339).
    pub last_success: Option<String>,
    /// The collector's last answer, in words.
    pub last_answer: Option<String>,
    /// The last error, in words; cleared by the next acknowledgement.
    pub last_error: Option<String>,
}

impl AgentStatus {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("status.json")
    }

    /// Reads `status.json` from the state directory (empty when missing).
    pub fn load(state_dir: &Path) -> Result<Self> {
        crate::state::read_json(Self::path(state_dir), "status")
    }

    /// Writes `status.json` (atomically; informational, so not fsynced).
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let path = Self::path(state_dir);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::State { path: path.clone(), reason: format!("cannot encode status: {e}") })?;
        std::fs::write(&tmp, bytes).map_err(|source| Error::Io { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &path).map_err(|source| Error::Io { path, source })
    }

    /// [`AgentStatus::save`], a failure warned about: delivery goes on.
    fn save_or_warn(&self, state_dir: &Path) {
        if let Err(e) = self.save(state_dir) {
            tracing::warn!(error = %e, "Agent status not saved");
        }
    }
}

/// What a delivery run did.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Batches stored by the collector.
    pub batches: u64,
    /// Records in them.
    pub records: u64,
    /// Batches the collector already had.
    pub duplicates: u64,
    /// Batches refused as invalid and removed.
    pub rejected: u64,
    /// What is still queued.
    pub remaining: SpoolSummary,
    /// Why delivery stopped before the spool was empty: the collector is
    /// unreachable (transient) or refused the agent.
    pub stopped_by: Option<Error>,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends the spool's batches, oldest first, removing each once the
/// collector acknowledged it; returns when the spool is empty, when
/// `deadline` passed while the collector was unreachable, or when the
/// collector refused the agent.
pub async fn deliver(
    spool: &Mutex<Spool>,
    uploader: &mut Uploader,
    state_dir: &Path,
    deadline: Instant,
) -> Result<Delivered> {
    let mut status = AgentStatus::load(state_dir).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "Agent status unreadable; counting afresh");
        AgentStatus::default()
    });
    status.collector = Some(uploader.url().to_string());
    let mut out = Delivered::default();
    loop {
        let Some(entry) = lock(spool).peek(1)?.pop() else { break };
        let batch = match ReportBatch::decode(entry.payload.as_slice()) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "Spool entry is not a batch; removed");
                status.undecodable_entries += 1;
                lock(spool).ack_through(entry.position)?;
                continue;
            }
        };
        status.last_attempt = Some(now_rfc3339());
        match uploader.send_until(&batch, deadline).await {
            Ok(ack) => {
                lock(spool).ack_through(entry.position)?;
                // It may have failed over to another collector of its list.
                status.collector = Some(uploader.url().to_string());
                status.last_success = status.last_attempt.clone();
                status.last_error = None;
                if ack.status() == AckStatus::Duplicate {
                    out.duplicates += 1;
                    status.duplicate_batches += 1;
                    status.last_answer = Some(format!("duplicate: batch {} was already stored", ack.batch_id));
                } else {
                    out.batches += 1;
                    out.records += u64::from(ack.records_accepted);
                    status.sent_batches += 1;
                    status.sent_records += u64::from(ack.records_accepted);
                    status.last_answer =
                        Some(format!("accepted: {} records of batch {}", ack.records_accepted, ack.batch_id));
                }
            }
            Err(Error::Collector { status: refused, url }) if refused.code() == Code::InvalidArgument => {
                tracing::error!(batch_id = %batch.batch_id, error = %refused.message(), "Collector refused a batch; removed");
                lock(spool).ack_through(entry.position)?;
                out.rejected += 1;
                status.rejected_batches += 1;
                status.last_answer = Some(format!("refused batch {}: {}", batch.batch_id, refused.message()));
                status.last_error =
                    Some(format!("collector {url} refused batch {}: {}", batch.batch_id, refused.message()));
            }
            Err(e) => {
                status.last_error = Some(e.to_string());
                if let Error::Collector { status: s, .. } = &e
                    && !transient(s)
                {
                    status.last_answer = Some(format!("{}: {}", s.code(), s.message()));
                }
                out.stopped_by = Some(e);
                break;
            }
        }
        status.save_or_warn(state_dir);
    }
    status.save_or_warn(state_dir);
    out.remaining = lock(spool).summary();
    Ok(out)
}
