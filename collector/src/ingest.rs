//! gRPC ingest: `Enroll` and `Report`.

use std::sync::Arc;

use leakwatch_proto::v1::collector_server::Collector;
use leakwatch_proto::v1::{AckStatus, EnrollRequest, EnrollResponse, ReportAck, ReportBatch};
use tonic::{Request, Response, Status};

use crate::log::{AgentToken, AppendOutcome, CodeUse, DurableLog};
use crate::metrics::{IngestMetrics, RejectReason};
use crate::{Error, validate};

/// Per-agent rate limiter (reports per second, by agent id).
type AgentLimiter = governor::DefaultKeyedRateLimiter<String>;

/// Limits that protect the collector from one agent and from overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    /// Reports per second one agent may send (token bucket), with a burst
    /// of twice that.
    pub agent_reports_per_sec: u32,
    /// Reports being stored at once, over all agents; more are refused.
    pub max_in_flight: usize,
    /// Acknowledged batches waiting in the log for the flusher; while
    /// there are this many, reports are refused (agents keep them in their
    /// spool and retry), so that a flusher falling behind under sustained
    /// load cannot fill the disk with log.
    pub max_unflushed_batches: u64,
}

/// Default of [`IngestLimits::max_unflushed_batches`].
pub const DEFAULT_MAX_UNFLUSHED_BATCHES: u64 = 100_000;

impl Default for IngestLimits {
    fn default() -> Self {
        Self { agent_reports_per_sec: 100, max_in_flight: 512, max_unflushed_batches: DEFAULT_MAX_UNFLUSHED_BATCHES }
    }
}

/// The `leakwatch.v1.Collector` service.
#[derive(Clone)]
pub struct Ingest {
    log: Arc<DurableLog>,
    metrics: Arc<IngestMetrics>,
    open_enrollment: bool,
    limiter: Arc<AgentLimiter>,
    in_flight: Arc<tokio::sync::Semaphore>,
    limits: IngestLimits,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").field("open_enrollment", &self.open_enrollment).field("limits", &self.limits).finish()
    }
}

/// `ResourceExhausted` with a `retry-after-ms` hint in the trailers.
fn busy(message: String, retry_after_ms: u64) -> Status {
    let mut status = Status::resource_exhausted(message);
    if let Ok(v) = retry_after_ms.to_string().parse() {
        status.metadata_mut().insert("retry-after-ms", v);
    }
    status
}

impl Ingest {
    /// A service writing to `log`.
    pub fn new(log: Arc<DurableLog>, metrics: Arc<IngestMetrics>, open_enrollment: bool, limits: IngestLimits) -> Self {
        let rate = std::num::NonZeroU32::new(limits.agent_reports_per_sec.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).unwrap_or(std::num::NonZeroU32::MIN));
        let quota = governor::Quota::per_second(rate).allow_burst(burst);
        Self {
            log,
            metrics,
            open_enrollment,
            limiter: Arc::new(governor::RateLimiter::keyed(quota)),
            in_flight: Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight.max(1))),
            limits,
        }
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("authorization: missing; call Enroll and send `Bearer <agent_token>`")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization: expected `Bearer <agent_token>`"))?;
        let (agent_id, _) =
            token.split_once('.').ok_or_else(|| Status::unauthenticated("authorization: malformed agent token"))?;
        let stored = match self.log.agent_token_hash(agent_id).map_err(Status::from)? {
            AgentToken::Hash(h) => h,
            AgentToken::Unknown => return Err(Status::unauthenticated("authorization: unknown agent; enroll again")),
            AgentToken::Revoked => {
                return Err(Status::unauthenticated(format!(
                    "authorization: agent {agent_id} was revoked by the collector's operator"
                )));
            }
        };
        let hash = crate::admin::token_hash(token);
        if !crate::same_secret(&stored, &hash) {
            return Err(Status::unauthenticated("authorization: invalid agent token"));
        }
        Ok(agent_id.to_string())
    }
}

#[tonic::async_trait]
impl Collector for Ingest {
    async fn enroll(&self, request: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let req = request.into_inner();
        if req.enrollment_code.len() > 128 {
            return Err(Status::invalid_argument(format!(
                "enrollment_code: {} bytes, at most 128",
                req.enrollment_code.len()
            )));
        }
        if req.agent_version.len() > 64 {
            return Err(Status::invalid_argument(format!(
                "agent_version: {} bytes, at most 64",
                req.agent_version.len()
            )));
        }
        if req.enrollment_code.is_empty() {
            if !self.open_enrollment {
                return Err(Status::permission_denied(
                    "enrollment_code: required by this collector (its operator creates one with `leakwatch admin enroll-code`)",
                ));
            }
        } else {
            let hash = crate::admin::token_hash(&req.enrollment_code);
            let log = self.log.clone();
            let now = chrono::Utc::now().timestamp();
            let used = tokio::task::spawn_blocking(move || log.use_code(&hash, now))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
            match used {
                CodeUse::Accepted => {}
                CodeUse::Unknown => return Err(Status::permission_denied("enrollment_code: unknown code")),
                CodeUse::Expired => return Err(Status::permission_denied("enrollment_code: the code has expired")),
                CodeUse::UsedUp => {
                    return Err(Status::permission_denied("enrollment_code: the code's uses are all taken"));
                }
            }
        }
        let agent_id = hex::encode(rand::random::<[u8; 8]>());
        let token = format!("{agent_id}.{}", hex::encode(rand::random::<[u8; 32]>()));
        let hash = crate::admin::token_hash(&token);
        let log = self.log.clone();
        let id = agent_id.clone();
        tokio::task::spawn_blocking(move || log.put_agent(&id, &hash))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        tracing::info!(agent_id = %agent_id, agent_version = %req.agent_version, "Enrolled agent");
        Ok(Response::new(EnrollResponse { agent_id, agent_token: token }))
    }

    async fn report(&self, request: Request<ReportBatch>) -> Result<Response<ReportAck>, Status> {
        let agent_id = match self.authenticate(&request) {
            Ok(id) => id,
            Err(status) => {
                self.metrics.reject(RejectReason::Unauthenticated);
                return Err(status);
            }
        };
        if let Err(not_until) = self.limiter.check_key(&agent_id) {
            self.metrics.reject(RejectReason::RateLimited);
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            return Err(busy(
                format!(
                    "rate limit: agent {agent_id} sends more than {} reports/s; retry later",
                    self.limits.agent_reports_per_sec
                ),
                u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
            ));
        }
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            self.metrics.reject(RejectReason::Busy);
            return Err(busy(
                format!("collector busy: {} reports are being stored; retry later", self.limits.max_in_flight),
                100,
            ));
        };
        let unflushed = self.log.flush_lag();
        if unflushed >= self.limits.max_unflushed_batches {
            self.metrics.reject(RejectReason::Busy);
            return Err(busy(
                format!(
                    "collector behind: {unflushed} acknowledged batches wait for the flusher \
                     (limit {}, --max-unflushed-batches); retry later",
                    self.limits.max_unflushed_batches
                ),
                1000,
            ));
        }
        let batch = request.into_inner();
        let now = chrono::Utc::now();
        if let Err(msg) = validate::check_batch(&batch, now.timestamp()) {
            self.metrics.reject(RejectReason::Invalid);
            tracing::warn!(agent_id = %agent_id, reason = %msg, "Rejected report");
            return Err(Status::invalid_argument(msg));
        }
        let log = self.log.clone();
        let records = batch.records.len() as u32;
        let batch_id = batch.batch_id.clone();
        let received = now.timestamp_millis();
        let id = agent_id.clone();
        let outcome = tokio::task::spawn_blocking(move || log.append(&id, &batch, received))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let ack = match outcome {
            Ok(AppendOutcome::Accepted { bytes, .. }) => {
                IngestMetrics::add(&self.metrics.batches_accepted, 1);
                IngestMetrics::add(&self.metrics.records_accepted, u64::from(records));
                IngestMetrics::add(&self.metrics.bytes_accepted, bytes);
                tracing::debug!(agent_id = %agent_id, batch_id = %batch_id, records, "Stored batch");
                ReportAck {
                    status: AckStatus::Accepted as i32,
                    batch_id,
                    records_accepted: records,
                    records_already_stored: 0,
                }
            }
            Ok(AppendOutcome::Duplicate { records }) => {
                IngestMetrics::add(&self.metrics.batches_duplicate, 1);
                ReportAck {
                    status: AckStatus::Duplicate as i32,
                    batch_id,
                    records_accepted: 0,
                    records_already_stored: records,
                }
            }
            Err(e) => {
                if matches!(e, Error::Conflict(_)) {
                    self.metrics.reject(RejectReason::Conflict);
                    tracing::warn!(agent_id = %agent_id, batch_id = %batch_id, "Rejected batch id reused with other content");
                }
                return Err(e.into());
            }
        };
        Ok(Response::new(ack))
    }
}
