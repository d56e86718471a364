//! Uploader: batches in, acknowledgements from the collector out.
//!
//! Enrolls on first contact (credentials are kept in the state directory),
//! sends each batch gzip-compressed with the agent's bearer token and
//! retries transient failures (`Unavailable`, `ResourceExhausted`,
//! `Aborted`, `DeadlineExceeded`, `Cancelled`, connection errors) with exponential
//! backoff and jitter (or the collector's `retry-after-ms` hint) until the
//! delivery deadline. Batch ids are stable, so a retry of a batch the
//! collector already stored is answered `duplicate`, never stored twice.
//! A refused token (revoked by the operator) is not replaced behind the
//! operator's back: the error says to enroll again.
//!
//! Several collectors (a comma-separated list of URLs) share the load and
//! stand in for each other. The agent starts with the one its install
//! secret picks, so agents with the same list spread evenly over it, and
//! stays with it while it answers. After [`FAILOVER_AFTER`] failures in a
//! row that say the collector is away (unreachable, restarting, a broken
//! connection; not "busy" or "rate limited") it moves to the next one,
//! enrolling there with the same enrollment code on first contact. A batch
//! whose answer was lost can so be stored by two collectors; readers count
//! it once (see `leakwatch_query`'s `copies` rule).

use std::time::{Duration, Instant};

use leakwatch_proto::v1::collector_client::CollectorClient;
use leakwatch_proto::v1::{AckStatus, EnrollRequest, ReportAck, ReportBatch};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::state::{AgentState, Credentials};
use crate::{Error, Result};

/// Counts of what the collector answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Batches stored by this run.
    pub batches_accepted: u64,
    /// Batches the collector already had.
    pub batches_duplicate: u64,
    /// Records stored by this run.
    pub records_accepted: u64,
    /// Retries after transient failures.
    pub retries: u64,
    /// Moves to another collector of the list.
    pub failovers: u64,
}

/// TLS settings of the agent's side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA certificates (PEM) to verify the collector with; the system's
    /// roots when `None`.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate chain (PEM), for collectors that require one.
    pub cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    pub key: Option<std::path::PathBuf>,
}

/// Failures in a row, each saying the collector is away, after which the
/// uploader moves to the next collector of its list.
pub const FAILOVER_AFTER: u32 = 3;

/// One collector of the list.
#[derive(Debug)]
struct Target {
    url: String,
    client: CollectorClient<Channel>,
    creds: Credentials,
}

/// A connection to a collector (and the others of its list, to fail over
/// to).
#[derive(Debug)]
pub struct Uploader {
    targets: Vec<Target>,
    current: usize,
    /// Failures in a row of the current collector that say it is away.
    away: u32,
    state: AgentState,
    enrollment_code: String,
    deliver_timeout: Duration,
    /// What happened so far.
    pub stats: DeliveryStats,
}

/// The collector URLs of `list` (comma-separated, blanks ignored).
pub fn collector_urls(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_string).collect()
}

/// True for failures worth retrying: the collector is away, busy or
/// restarting.
pub fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::Unknown
            // The connection broke mid-call (the collector died or restarted).
            | Code::Cancelled
    )
}

/// True for failures that say the collector is away, rather than busy.
fn away(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled)
}

fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(9)).min(30_000);
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}

/// A client of the collector at `url`, with this agent's credentials for
/// it when it has enrolled there before.
fn target(url: &str, client_tls: &ClientTls, state: &AgentState) -> Result<Target> {
    let ca_file = client_tls.ca_file.as_deref();
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::InvalidArgument {
            field: "--collector".into(),
            reason: format!("{url:?} is not a valid URL: {e}"),
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60));
    if url.starts_with("https://") {
        let tls = tonic::transport::ClientTlsConfig::new();
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
        };
        let mut tls = match ca_file {
            Some(path) => tls.ca_certificate(tonic::transport::Certificate::from_pem(read(path)?)),
            None => tls.with_native_roots(),
        };
        match (&client_tls.cert, &client_tls.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(Error::InvalidArgument {
                    field: "--client-cert/--client-key".into(),
                    reason: "give both or neither".into(),
                });
            }
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Error::InvalidArgument { field: "--ca-file".into(), reason: e.to_string() })?;
    } else if ca_file.is_some() || client_tls.cert.is_some() {
        return Err(Error::InvalidArgument {
            field: if ca_file.is_some() { "--ca-file" } else { "--client-cert" }.into(),
            reason: format!("given, but {url:?} is not an https:// URL"),
        });
    }
    let client = CollectorClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(4 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let creds = state.credentials(url)?.unwrap_or(Credentials { agent_id: String::new(), agent_token: String::new() });
    Ok(Target { url: url.to_string(), client, creds })
}

impl Uploader {
    /// Connects to `url` and enrolls unless `state` holds credentials for it.
    pub async fn connect(
        url: &str,
        state: &AgentState,
        enrollment_code: &str,
        deliver_timeout: Duration,
    ) -> Result<Self> {
        Self::connect_with_ca(url, None, state, enrollment_code, deliver_timeout).await
    }

    /// As [`Self::connect`]; an `https://` URL is verified against the
    /// PEM certificates in `ca_file`, or the system's roots without one.
    pub async fn connect_with_ca(
        url: &str,
        ca_file: Option<&std::path::Path>,
        state: &AgentState,
        enrollment_code: &str,
        deliver_timeout: Duration,
    ) -> Result<Self> {
        let tls = ClientTls { ca_file: ca_file.map(std::path::Path::to_path_buf), ..ClientTls::default() };
        let mut uploader = Self::open_with_tls(url, &tls, state, enrollment_code, deliver_timeout)?;
        uploader.ensure_enrolled().await?;
        Ok(uploader)
    }

    /// Connects to `url` without contacting the collector yet (the agent
    /// is enrolled on the first send), with the CA and client certificate
    /// of `client_tls`. `url` may list several collectors, separated by
    /// commas.
    pub fn open_with_tls(
        url: &str,
        client_tls: &ClientTls,
        state: &AgentState,
        enrollment_code: &str,
        deliver_timeout: Duration,
    ) -> Result<Self> {
        let urls = collector_urls(url);
        if urls.is_empty() {
            return Err(Error::InvalidArgument {
                field: "--collector".into(),
                reason: format!("{url:?} names no collector URL"),
            });
        }
        let targets = urls.iter().map(|u| target(u, client_tls, state)).collect::<Result<Vec<_>>>()?;
        // Agents with the same list spread over it, each always starting
        // with the same collector.
        let pick = u64::from_str_radix(&state.pseudonym("collector", b"")[..8], 16).unwrap_or(0);
        let current = usize::try_from(pick % targets.len() as u64).unwrap_or(0);
        Ok(Self {
            targets,
            current,
            away: 0,
            state: state.clone(),
            enrollment_code: enrollment_code.to_string(),
            deliver_timeout,
            stats: DeliveryStats::default(),
        })
    }

    /// Enrolls with the current collector unless this agent already holds
    /// credentials for it, retrying transient failures for the delivery
    /// timeout.
    pub async fn ensure_enrolled(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.deliver_timeout;
        let mut attempt = 0;
        loop {
            match self.enroll_once().await {
                Ok(()) => return Ok(()),
                Err(status) if transient(&status) && Instant::now() < deadline => {
                    self.stats.retries += 1;
                    tokio::time::sleep(backoff(attempt).min(deadline.saturating_duration_since(Instant::now()))).await;
                    attempt += 1;
                }
                Err(status) => return Err(Error::Collector { url: self.url().to_string(), status }),
            }
        }
    }

    /// The current collector's URL.
    pub fn url(&self) -> &str {
        &self.targets[self.current].url
    }

    /// The agent id this uploader reports as to the current collector.
    pub fn agent_id(&self) -> &str {
        &self.targets[self.current].creds.agent_id
    }

    /// One `Enroll` call to the current collector, unless this agent holds
    /// credentials for it.
    async fn enroll_once(&mut self) -> Result<(), Status> {
        let target = &mut self.targets[self.current];
        if !target.creds.agent_id.is_empty() {
            return Ok(());
        }
        let req = EnrollRequest {
            enrollment_code: self.enrollment_code.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let resp = target.client.enroll(req).await?.into_inner();
        target.creds = Credentials { agent_id: resp.agent_id, agent_token: resp.agent_token };
        tracing::info!(collector = %target.url, agent_id = %target.creds.agent_id, "Enrolled with collector");
        self.state
            .save_credentials(&target.url, &target.creds)
            .map_err(|e| Status::internal(format!("saving the credentials: {e}")))
    }

    /// One `Report` call to the current collector (enrolling first when
    /// needed).
    async fn report_once(&mut self, batch: &ReportBatch) -> Result<ReportAck, Status> {
        self.enroll_once().await?;
        let target = &mut self.targets[self.current];
        let mut req = Request::new(batch.clone());
        let bearer = format!("Bearer {}", target.creds.agent_token);
        let value = bearer.parse().map_err(|_| Status::internal("the stored agent token is not valid metadata"))?;
        req.metadata_mut().insert("authorization", value);
        Ok(target.client.report(req).await?.into_inner())
    }

    /// Moves to the next collector of the list after failures that say the
    /// current one is away; true when it did.
    fn fail_over(&mut self, status: &Status) -> bool {
        self.away = if away(status) { self.away + 1 } else { 0 };
        if self.targets.len() < 2 || self.away < FAILOVER_AFTER {
            return false;
        }
        let from = self.current;
        self.current = (self.current + 1) % self.targets.len();
        self.away = 0;
        self.stats.failovers += 1;
        tracing::warn!(
            from = %self.targets[from].url,
            to = %self.targets[self.current].url,
            code = ?status.code(),
            "Collector away; failing over"
        );
        true
    }

    /// Sends one batch, retrying transient failures for the delivery
    /// timeout.
    pub async fn send(&mut self, batch: &ReportBatch) -> Result<ReportAck> {
        self.send_until(batch, Instant::now() + self.deliver_timeout).await
    }

    /// Sends one batch, retrying transient failures until `deadline` (and
    /// moving to another collector of the list when this one is away).
    pub async fn send_until(&mut self, batch: &ReportBatch, deadline: Instant) -> Result<ReportAck> {
        let mut attempt = 0;
        loop {
            match self.report_once(batch).await {
                Ok(ack) => {
                    self.away = 0;
                    match ack.status() {
                        AckStatus::Duplicate => self.stats.batches_duplicate += 1,
                        _ => {
                            self.stats.batches_accepted += 1;
                            self.stats.records_accepted += u64::from(ack.records_accepted);
                        }
                    }
                    return Ok(ack);
                }
                Err(status) if status.code() == Code::Unauthenticated => {
                    return Err(Error::Collector {
                        url: self.url().to_string(),
                        status: Status::unauthenticated(format!(
                            "{}; this agent's token was refused (revoked by the operator?): \
                             get a new code and run `leakwatch-agent enroll`; queued records are kept",
                            status.message()
                        )),
                    });
                }
                Err(status) if transient(&status) && Instant::now() < deadline => {
                    tracing::debug!(batch_id = %batch.batch_id, code = ?status.code(), "Retrying batch");
                    self.stats.retries += 1;
                    if self.fail_over(&status) {
                        attempt = 0;
                        continue;
                    }
                    // Honour the collector's hint, within reason.
                    let hint = status
                        .metadata()
                        .get("retry-after-ms")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(|ms| Duration::from_millis(ms.min(30_000)));
                    let delay = hint.unwrap_or_else(|| backoff(attempt));
                    tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
                    attempt += 1;
                }
                Err(status) => return Err(Error::Collector { url: self.url().to_string(), status }),
            }
        }
    }
}
