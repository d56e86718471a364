//! gRPC ingest: `Enroll` and `Report`.
//!
//! A `Report` is admitted before its body is read ([`Admission`]): its
//! token is checked, its agent's rate limit and the collector's limits on
//! reports in flight and unflushed batches are applied, all from the
//! request's headers. Only an admitted report is decompressed (at most
//! `--max-message-bytes`) and decoded (its repeated fields counted first,
//! see `leakwatch_proto::codec::WireBound`), so neither an unauthenticated
//! client nor an enrolled one can make the collector hold more than
//! `max_in_flight` messages at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use leakwatch_proto::v1::collector_server::{Collector, CollectorServer};
use leakwatch_proto::v1::{AckStatus, EnrollRequest, EnrollResponse, ReportAck, ReportBatch};
use tonic::{Request, Response, Status};

use crate::log::{AgentToken, AppendOutcome, CodeUse, DurableLog};
use crate::metrics::{AckStage, IngestMetrics, RejectReason};
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

/// Default of [`IngestLimits::max_in_flight`]: with 16 MiB messages, at
/// most about 2 GiB of reports decompressed and decoded at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            agent_reports_per_sec: 100,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_unflushed_batches: DEFAULT_MAX_UNFLUSHED_BATCHES,
        }
    }
}

/// Full path of the `Report` method, as requests name it.
const REPORT_PATH: &str = "/leakwatch.v1.Collector/Report";

/// A report that passed [`Ingest::admit`]: its agent, and its place among
/// the reports being stored (given back when the request ends).
#[derive(Clone)]
struct Admitted {
    agent_id: String,
    _permit: Arc<tokio::sync::OwnedSemaphorePermit>,
    /// Set once the handler runs: a report that never reaches it was
    /// refused while decoding (see [`Admission`]).
    reached: Arc<std::sync::atomic::AtomicBool>,
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
    with_retry_hint(Status::resource_exhausted(message), retry_after_ms)
}

/// `status` with a `retry-after-ms` hint in the trailers.
fn with_retry_hint(mut status: Status, retry_after_ms: u64) -> Status {
    if let Ok(v) = retry_after_ms.to_string().parse() {
        status.metadata_mut().insert("retry-after-ms", v);
    }
    status
}

/// `Unavailable` for a log that cannot be written: the agent keeps the
/// report and tries again (or another collector), as for one that is away.
fn storage_failing(failure: &str) -> Status {
    with_retry_hint(
        Status::unavailable(format!(
            "collector storage: the log cannot be written ({failure}); the report stays with the agent, retry later"
        )),
        STORAGE_RETRY_MS,
    )
}

/// The retry hint of [`storage_failing`]: about when the collector next
/// tries to open its log again.
const STORAGE_RETRY_MS: u64 = 2000;

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

    /// The agent whose token is in the `authorization` header.
    fn authenticate(&self, header: Option<&http::HeaderValue>) -> Result<String, Status> {
        let header = header.ok_or_else(|| {
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

    /// Checks a report from its headers alone, before its body is read:
    /// the agent's token, its rate limit, the reports in flight and the
    /// batches waiting for the flusher. Each refusal is counted.
    fn admit(&self, headers: &http::HeaderMap) -> Result<Admitted, Status> {
        let agent_id = match self.authenticate(headers.get("authorization")) {
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
        if let Some(failure) = self.log.failure() {
            self.metrics.reject(RejectReason::Storage);
            return Err(storage_failing(&failure));
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
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
        Ok(Admitted { agent_id, _permit: Arc::new(permit), reached: Arc::default() })
    }

    /// The gRPC service: `Report`s admitted before their body is read,
    /// messages of at most `max_message_bytes` (after decompression).
    pub fn into_service(self, max_message_bytes: usize) -> Admission {
        let inner = CollectorServer::new(self.clone())
            .max_decoding_message_size(max_message_bytes)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        Admission { inner, ingest: self }
    }
}

/// The `Collector` service behind its admission: a `Report` whose headers
/// do not pass [`Ingest::admit`] is answered at once, its body never read
/// (let alone decompressed or decoded).
#[derive(Clone)]
pub struct Admission {
    inner: CollectorServer<Ingest>,
    ingest: Ingest,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").field("ingest", &self.ingest).finish_non_exhaustive()
    }
}

impl tonic::server::NamedService for Admission {
    const NAME: &'static str = leakwatch_proto::COLLECTOR_SERVICE_NAME;
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Admission {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower_service::Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != REPORT_PATH {
            return Box::pin(tower_service::Service::<http::Request<tonic::body::Body>>::call(&mut self.inner, req));
        }
        let reached = match self.ingest.admit(req.headers()) {
            Ok(admitted) => {
                let reached = admitted.reached.clone();
                req.extensions_mut().insert(admitted);
                reached
            }
            Err(status) => {
                drop(req);
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        };
        let metrics = self.ingest.metrics.clone();
        let call = tower_service::Service::<http::Request<tonic::body::Body>>::call(&mut self.inner, req);
        Box::pin(async move {
            let response = call.await?;
            // Refused while decoding (malformed, over a count): the handler,
            // which counts its own refusals, never saw it.
            let invalid = response.headers().get("grpc-status").is_some_and(|s| s.as_bytes() == b"3");
            if invalid && !reached.load(std::sync::atomic::Ordering::Relaxed) {
                metrics.reject(RejectReason::Invalid);
            }
            Ok(response)
        })
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
        let (now, version) = (chrono::Utc::now().timestamp(), req.agent_version.clone());
        tokio::task::spawn_blocking(move || log.put_agent(&id, &hash, now, &version))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        tracing::info!(agent_id = %agent_id, agent_version = %req.agent_version, "Enrolled agent");
        Ok(Response::new(EnrollResponse { agent_id, agent_token: token }))
    }

    async fn report(&self, mut request: Request<ReportBatch>) -> Result<Response<ReportAck>, Status> {
        let arrived = std::time::Instant::now();
        // Admitted from the headers before the body was read (see
        // `Admission`); here too when the service is used without it.
        let admitted = match request.extensions_mut().remove::<Admitted>() {
            Some(admitted) => admitted,
            None => self.admit(request.metadata().as_ref())?,
        };
        admitted.reached.store(true, std::sync::atomic::Ordering::Relaxed);
        let agent_id = admitted.agent_id.clone();
        let batch = request.into_inner();
        let now = chrono::Utc::now();
        if let Err(invalid) = validate::check_batch(&batch, now.timestamp()) {
            self.metrics.reject(RejectReason::Invalid);
            tracing::warn!(agent_id = %agent_id, reason = %invalid, "Rejected report");
            return Err(Status::invalid_argument(invalid.0));
        }
        let log = self.log.clone();
        let records = batch.records.len() as u32;
        let batch_id = batch.batch_id.clone();
        let received = now.timestamp_millis();
        let id = agent_id.clone();
        let outcome = tokio::task::spawn_blocking(move || (arrived.elapsed(), log.append(&id, &batch, received)))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let (queued, outcome) = outcome;
        let mut stored = None;
        let ack = match outcome {
            Ok(AppendOutcome::Accepted { bytes, lookup, write, .. }) => {
                stored = Some([queued, lookup, write]);
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
                if e.is_storage() {
                    self.metrics.reject(RejectReason::Storage);
                    return Err(storage_failing(&e.to_string()));
                }
                if matches!(e, Error::Conflict(_)) {
                    self.metrics.reject(RejectReason::Conflict);
                    tracing::warn!(agent_id = %agent_id, batch_id = %batch_id, "Rejected batch id reused with other content");
                }
                return Err(e.into());
            }
        };
        let total = arrived.elapsed();
        self.metrics.ack_seconds.observe(total.as_secs_f64());
        if let Some(parts) = stored {
            let answer = total.saturating_sub(parts.iter().sum());
            for (stage, seconds) in AckStage::ALL.into_iter().zip(parts.into_iter().chain([answer])) {
                self.metrics.ack_stage(stage, seconds.as_secs_f64());
            }
        }
        Ok(Response::new(ack))
    }
}
