//! Stored batches → `flows` rows.

use leakwatch_proto::v1::{BootSource, DomainSource, Transport};
use leakwatch_query::{FlowBatchBuilder, FlowRow};

use crate::log::StoredBatch;

/// Adds every record of `stored` to `builder` (or to the builder `pick`
/// chooses for the row, e.g. per day).
///
/// Takes the batch: each record's own strings move into its row.
pub fn add_rows(stored: StoredBatch, mut sink: impl FnMut(FlowRow)) {
    let Some(batch) = stored.batch else { return };
    let device = batch.device.unwrap_or_default();
    let mut consent: Vec<(&String, &String)> = device.consent.iter().collect();
    consent.sort();
    let consent = consent.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";");
    let boot_source = BootSource::try_from(device.boot_source).unwrap_or_default().short_name();
    for r in batch.records {
        let tls = r.tls.unwrap_or_default();
        sink(FlowRow {
            agent_id: stored.agent_id.clone(),
            batch_id: batch.batch_id.clone(),
            received_at_ms: stored.received_at_ms,
            device_pseudonym: device.device_pseudonym.clone(),
            boot_pseudonym: device.boot_pseudonym.clone(),
            boot_source: boot_source.to_string(),
            vendor: device.vendor.clone(),
            model: device.model.clone(),
            os_version: device.os_version.clone(),
            consent: consent.clone(),
            seconds_since_boot: r.seconds_since_boot,
            window_start_s: r.window_start_unix_s,
            transport: Transport::try_from(r.transport).unwrap_or_default().short_name().to_string(),
            dst_ip: r.dst_ip,
            dst_port: i32::try_from(r.dst_port).unwrap_or(0),
            domain: r.domain,
            domain_source: DomainSource::try_from(r.domain_source).unwrap_or_default().short_name().to_string(),
            bytes_out: i64::try_from(r.bytes_out).unwrap_or(i64::MAX),
            bytes_in: i64::try_from(r.bytes_in).unwrap_or(i64::MAX),
            packets_out: i64::try_from(r.packets_out).unwrap_or(i64::MAX),
            packets_in: i64::try_from(r.packets_in).unwrap_or(i64::MAX),
            app: r.app,
            tls_sni: tls.sni,
            tls_alpn: tls.alpn.join(","),
            tls_fingerprint: tls.client_fingerprint,
            duration_s: r.duration_s,
            encrypted_dns: r.encrypted_dns,
            connections: i64::from(r.connections),
            interval_mean_s: r.interval_mean_s,
            interval_cv: r.interval_cv,
        });
    }
}

/// One record batch holding every record of `batches`.
pub fn to_record_batch(batches: Vec<StoredBatch>) -> arrow::array::RecordBatch {
    let mut builder = FlowBatchBuilder::new();
    for b in batches {
        add_rows(b, |row| builder.push(row));
    }
    builder.finish()
}
