//! Stored batches → `flows` rows.

use leakwatch_proto::v1::{BootSource, DomainSource, FlowRecord, Transport};
use leakwatch_query::{BatchLabels, FlowBatchBuilder, RecordValues};

use crate::log::StoredBatch;

/// A stored batch's labels, worked out once for all its records.
#[derive(Debug)]
pub struct Labels<'a> {
    stored: &'a StoredBatch,
    consent: String,
    boot_source: &'static str,
}

impl<'a> Labels<'a> {
    /// The labels of `stored`.
    pub fn of(stored: &'a StoredBatch) -> Self {
        let device = stored.batch.as_ref().and_then(|b| b.device.as_ref());
        let mut consent: Vec<(&String, &String)> = device.map(|d| d.consent.iter().collect()).unwrap_or_default();
        consent.sort();
        let consent = consent.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";");
        let boot_source = BootSource::try_from(device.map_or(0, |d| d.boot_source)).unwrap_or_default().short_name();
        Self { stored, consent, boot_source }
    }

    /// As the builder takes them.
    pub fn borrowed(&self) -> BatchLabels<'_> {
        let batch = self.stored.batch.as_ref();
        let device = batch.and_then(|b| b.device.as_ref());
        let text = |f: fn(&leakwatch_proto::v1::DeviceInfo) -> &String| device.map_or("", |d| f(d).as_str());
        BatchLabels {
            agent_id: &self.stored.agent_id,
            batch_id: batch.map_or("", |b| b.batch_id.as_str()),
            received_at_ms: self.stored.received_at_ms,
            device_pseudonym: text(|d| &d.device_pseudonym),
            boot_pseudonym: text(|d| &d.boot_pseudonym),
            boot_source: self.boot_source,
            vendor: text(|d| &d.vendor),
            model: text(|d| &d.model),
            os_version: text(|d| &d.os_version),
            consent: &self.consent,
        }
    }
}

/// A record's values as the builder takes them.
pub fn record_values(r: &FlowRecord) -> RecordValues<'_> {
    let tls = r.tls.as_ref();
    RecordValues {
        seconds_since_boot: r.seconds_since_boot,
        window_start_s: r.window_start_unix_s,
        transport: Transport::try_from(r.transport).unwrap_or_default().short_name(),
        dst_ip: &r.dst_ip,
        dst_port: i32::try_from(r.dst_port).unwrap_or(0),
        domain: &r.domain,
        domain_source: DomainSource::try_from(r.domain_source).unwrap_or_default().short_name(),
        bytes_out: i64::try_from(r.bytes_out).unwrap_or(i64::MAX),
        bytes_in: i64::try_from(r.bytes_in).unwrap_or(i64::MAX),
        packets_out: i64::try_from(r.packets_out).unwrap_or(i64::MAX),
        packets_in: i64::try_from(r.packets_in).unwrap_or(i64::MAX),
        app: &r.app,
        tls_sni: tls.map_or("", |t| t.sni.as_str()),
        tls_alpn: tls.map_or(&[], |t| t.alpn.as_slice()),
        tls_fingerprint: tls.map_or("", |t| t.client_fingerprint.as_str()),
        duration_s: r.duration_s,
        encrypted_dns: r.encrypted_dns,
        connections: i64::from(r.connections),
        interval_mean_s: r.interval_mean_s,
        interval_cv: r.interval_cv,
    }
}

/// Adds every record of `stored` to `builder`.
pub fn add_batch(builder: &mut FlowBatchBuilder, stored: &StoredBatch) {
    let Some(batch) = &stored.batch else { return };
    builder.start_batch(&Labels::of(stored).borrowed());
    for r in &batch.records {
        builder.push_record(&record_values(r));
    }
}

/// One record batch holding every record of `batches`.
pub fn to_record_batch(batches: &[StoredBatch]) -> arrow::array::RecordBatch {
    let mut builder = FlowBatchBuilder::new();
    for b in batches {
        add_batch(&mut builder, b);
    }
    builder.finish()
}
