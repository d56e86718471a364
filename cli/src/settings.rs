//! The collector's settings, resolved from the parsed flags
//! ([`crate::flags`]): checked, combined and given their defaults.

use std::path::PathBuf;
use std::time::Duration;

use leakwatch_collector::flusher::SharedStore;
use leakwatch_collector::server::{DataDir, ServeConfig};
use leakwatch_dashboard::{DashboardConfig, DataLicence, Thresholds};
use leakwatch_query::QueryConfig;
use leakwatch_query::memory::QueryMemory;

use crate::flags::{BallistaArgs, ListenArgs, QueryArgs, ServeArgs};
use crate::{Error, Result};

impl BallistaArgs {
    /// The store the cluster reads.
    pub fn flow_store(&self) -> Result<leakwatch_query::FlowStore> {
        match (&self.store.store, &self.data_dir) {
            (Some(url), _) => {
                let options = leakwatch_query::S3Options {
                    endpoint: self.store.s3_endpoint.clone(),
                    region: self.store.s3_region.clone(),
                    credentials: None,
                };
                leakwatch_query::FlowStore::s3(url, &options, None)
                    .map_err(|source| Error::Store { flag: "--store", source })
            }
            (None, Some(dir)) => Ok(DataDir::new(dir.clone()).flow_store()?),
            (None, None) => Err(Error::Config(
                "--store s3://BUCKET/PREFIX or --data-dir DIR: the cluster needs the store to read".into(),
            )),
        }
    }
}

impl QueryArgs {
    /// The limits the flags set (checked where they are used:
    /// [`QueryConfig::check`]).
    pub fn config(&self) -> QueryConfig {
        QueryConfig {
            memory_limit_bytes: self.query_memory_mib.saturating_mul(1024 * 1024),
            total_memory: QueryMemory::new(self.query_memory_total_mib.saturating_mul(1024 * 1024)),
            timeout: Duration::from_secs(self.query_timeout_secs),
            stall_after: Duration::from_secs(self.query_stall_secs),
            ballista: self.ballista.clone(),
        }
    }
}

/// The shared store `serve` was given, its collector id settled: the flag,
/// else the id recorded in the data directory, else a new random one.
fn shared_store(args: &ServeArgs) -> Result<Option<SharedStore>> {
    let Some(url) = &args.store.store else { return Ok(None) };
    leakwatch_query::parse_s3_url(url).map_err(|source| Error::Store { flag: "--store", source })?;
    let recorded = DataDir::new(args.data_dir.data_dir.clone()).shared_store()?.map(|s| s.collector_id);
    let collector_id = match (&args.collector_id, recorded) {
        (Some(id), _) => id.clone(),
        (None, Some(id)) => id,
        (None, None) => format!("collector-{}", hex::encode(rand::random::<[u8; 4]>())),
    };
    if let Some(endpoint) = &args.store.s3_endpoint
        && endpoint.starts_with("http://")
    {
        tracing::warn!(endpoint = %endpoint, "S3 endpoint in plain HTTP: credentials and data cross the network unencrypted");
    }
    Ok(Some(SharedStore {
        url: url.clone(),
        endpoint: args.store.s3_endpoint.clone(),
        region: args.store.s3_region.clone(),
        collector_id,
        credentials: None,
    }))
}

/// Refuses plain-text listeners off loopback unless allowed.
fn check_plaintext(listen: &ListenArgs, allow: bool, tls: bool) -> Result<()> {
    let flight = listen.flight_listen.map(|a| ("--flight-listen", a, tls));
    let pg = listen.pg_listen.map(|a| ("--pg-listen", a, tls));
    let listeners = [("--grpc-listen", listen.grpc_listen, tls), ("--http-listen", listen.http_listen, tls)];
    for (flag, addr, tls) in listeners.into_iter().chain(flight).chain(pg) {
        if !tls && !addr.ip().is_loopback() {
            if !allow {
                return Err(Error::Config(format!(
                    "{flag} {addr}: plain text off loopback would expose agent tokens and data; \
                     listen on 127.0.0.1 behind a TLS proxy, or pass --allow-plaintext"
                )));
            }
            tracing::warn!(listen = %addr, "Serving plain text off loopback (--allow-plaintext)");
        }
    }
    Ok(())
}

pub fn serve_config(data_dir: PathBuf, open_enrollment: bool, listen: &ListenArgs) -> ServeConfig {
    ServeConfig {
        data_dir,
        grpc_listen: listen.grpc_listen,
        http_listen: listen.http_listen,
        open_enrollment,
        flush_interval: Duration::from_secs(listen.flush_interval_secs.max(1)),
        max_message_bytes: listen.max_message_bytes,
        retention_days: listen.retention_days,
        tls: None,
        client_ca: None,
        limits: leakwatch_collector::ingest::IngestLimits {
            agent_reports_per_sec: listen.agent_rate_limit,
            max_in_flight: listen.max_in_flight,
            max_unflushed_batches: listen.max_unflushed_batches,
        },
        query: listen.query.config(),
        flight_listen: listen.flight_listen,
        pg_listen: listen.pg_listen,
        pg: leakwatch_collector::pg::PgLimits {
            max_connections: listen.pg_max_connections.max(1),
            max_logging_in_per_client: listen.pg_max_logging_in_per_client.max(1),
            idle_timeout: Duration::from_secs(listen.pg_idle_timeout_secs.max(1)),
            ..leakwatch_collector::pg::PgLimits::default()
        },
        dashboard: DashboardConfig {
            thresholds: Thresholds {
                min_devices: listen.public_min_devices,
                min_volunteers: listen.public_min_volunteers,
            },
            requests_per_second: listen.public_rate,
            min_refresh_interval: Duration::from_secs(listen.public_refresh_secs),
            licence: DataLicence { name: listen.data_licence.clone(), url: listen.data_licence_url.clone() },
            public_url: listen.public_url.clone(),
            state_dir: None,
            trusted_proxies: listen.trusted_proxies.clone().into(),
        },
        http: leakwatch_collector::http::HttpLimits {
            header_timeout: Duration::from_secs(listen.http_header_timeout_secs),
            total: listen.http_max_connections.max(1),
            per_client: listen.http_max_connections_per_client.max(1),
            ..leakwatch_collector::http::HttpLimits::default()
        },
        grpc: leakwatch_collector::grpc::GrpcLimits {
            handshake_timeout: Duration::from_secs(listen.grpc_handshake_timeout_secs),
            total: listen.grpc_max_connections.max(1),
            per_client: listen.grpc_max_connections_per_client.max(1),
        },
        store: None,
    }
}

impl ServeArgs {
    /// The collector's settings: plain text off loopback refused unless
    /// allowed, the shared store's collector id settled.
    pub fn settings(self) -> Result<ServeConfig> {
        check_plaintext(&self.listen, self.allow_plaintext, self.tls_cert.is_some())?;
        let store = shared_store(&self)?;
        let mut config = serve_config(self.data_dir.data_dir, self.open_enrollment, &self.listen);
        config.store = store;
        config.tls = self.tls_cert.zip(self.tls_key);
        config.client_ca = self.tls_client_ca;
        Ok(config)
    }
}
