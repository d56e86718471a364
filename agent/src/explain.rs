//! `--dry-run` output: exactly what would be sent, one record per line.
//!
//! `jsonl` prints one JSON object per record with the proto's field names
//! (enum values by their proto names) plus the batch id and the device
//! block that travel with it. Tools may rely on this format; fields are
//! only ever added.

use std::io::Write;

use leakwatch_proto::v1::{BootSource, DeviceInfo, DomainSource, FlowRecord, ReportBatch, Transport};
use serde::Serialize;
use serde_json::{Value, json};

use crate::flow::Connection;

/// Output format of `--dry-run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DryRunFormat {
    /// One JSON object per record.
    Jsonl,
    /// An aligned table for reading.
    Table,
}

/// The device block of a record line, with the proto's field names.
#[derive(Debug, Serialize)]
pub struct DeviceView<'a> {
    device_pseudonym: &'a str,
    vendor: &'a str,
    model: &'a str,
    os_version: &'a str,
    consent: std::collections::BTreeMap<&'a str, &'a str>,
    boot_pseudonym: &'a str,
    boot_source: &'static str,
    source: &'static str,
}

impl<'a> DeviceView<'a> {
    /// The view of `d`.
    pub fn of(d: &'a DeviceInfo) -> Self {
        Self {
            device_pseudonym: &d.device_pseudonym,
            vendor: &d.vendor,
            model: &d.model,
            os_version: &d.os_version,
            consent: d.consent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            boot_pseudonym: &d.boot_pseudonym,
            boot_source: BootSource::try_from(d.boot_source).unwrap_or_default().as_str_name(),
            source: leakwatch_proto::v1::RecordSource::try_from(d.source).unwrap_or_default().as_str_name(),
        }
    }
}

#[derive(Debug, Serialize)]
struct TlsView<'a> {
    sni: &'a str,
    alpn: &'a [String],
    client_fingerprint: &'a str,
}

/// What starts every record line of a batch: the batch id and the device
/// block that travel with the records.
#[derive(Debug, Serialize)]
struct BatchHead<'a> {
    batch_id: &'a str,
    sent_at_unix_ms: i64,
    device: Option<&'a DeviceView<'a>>,
}

/// The rest of a record line of `--dry-run --format jsonl`: the record's
/// fields with the proto's names (enums by their proto names).
#[derive(Debug, Serialize)]
struct RecordFields<'a> {
    seconds_since_boot: f64,
    window_start_unix_s: i64,
    transport: &'static str,
    dst_ip: &'a str,
    dst_port: u32,
    domain: &'a str,
    domain_source: &'static str,
    bytes_out: u64,
    bytes_in: u64,
    packets_out: u64,
    packets_in: u64,
    app: &'a str,
    tls: Option<TlsView<'a>>,
    duration_s: f64,
    encrypted_dns: bool,
    connections: u32,
    interval_mean_s: f64,
    interval_cv: f64,
    blocked: bool,
    initiator: &'static str,
    via_website: bool,
}

impl<'a> RecordFields<'a> {
    fn of(r: &'a FlowRecord) -> Self {
        Self {
            seconds_since_boot: r.seconds_since_boot,
            window_start_unix_s: r.window_start_unix_s,
            transport: Transport::try_from(r.transport).unwrap_or_default().as_str_name(),
            dst_ip: &r.dst_ip,
            dst_port: r.dst_port,
            domain: &r.domain,
            domain_source: DomainSource::try_from(r.domain_source).unwrap_or_default().as_str_name(),
            bytes_out: r.bytes_out,
            bytes_in: r.bytes_in,
            packets_out: r.packets_out,
            packets_in: r.packets_in,
            app: &r.app,
            tls: r.tls.as_ref().map(|t| TlsView {
                sni: &t.sni,
                alpn: &t.alpn,
                client_fingerprint: &t.client_fingerprint,
            }),
            duration_s: r.duration_s,
            encrypted_dns: r.encrypted_dns,
            connections: r.connections,
            interval_mean_s: r.interval_mean_s,
            interval_cv: r.interval_cv,
            blocked: r.blocked,
            initiator: leakwatch_proto::v1::Initiator::try_from(r.initiator).unwrap_or_default().as_str_name(),
            via_website: r.via_website,
        }
    }
}

/// Writes the JSON lines of `batch`: `{"batch_id":…,"sent_at_unix_ms":…,
/// "device":{…},` then the record's fields. The head is serialised once
/// per batch, each line built in `line` and written at once.
fn write_batch_lines(out: &mut dyn Write, batch: &ReportBatch, line: &mut Vec<u8>) -> std::io::Result<()> {
    let device = batch.device.as_ref().map(DeviceView::of);
    let head = BatchHead { batch_id: &batch.batch_id, sent_at_unix_ms: batch.sent_at_unix_ms, device: device.as_ref() };
    let mut head_json = serde_json::to_vec(&head)?;
    head_json.pop(); // the closing brace: the record's fields follow
    head_json.push(b',');
    for r in &batch.records {
        line.clear();
        line.extend_from_slice(&head_json);
        serde_json::to_writer(&mut *line, &RecordFields::of(r))?;
        // The fields' own opening brace goes: they continue the head's object.
        line.remove(head_json.len());
        line.push(b'\n');
        out.write_all(line)?;
    }
    Ok(())
}

/// The JSON object of one connection in the local `flows` view.
pub fn connection_json(c: &Connection) -> Value {
    let time = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_default()
    };
    json!({
        "src_ip": c.src_ip.to_string(),
        "src_port": c.src_port,
        "dst_ip": c.dst_ip.to_string(),
        "dst_port": c.dst_port,
        "transport": c.transport.name(),
        "community_id": c.community_id,
        "packets_out": c.packets_out,
        "packets_in": c.packets_in,
        "ip_bytes_out": c.ip_bytes_out,
        "ip_bytes_in": c.ip_bytes_in,
        "payload_bytes_out": c.payload_bytes_out,
        "payload_bytes_in": c.payload_bytes_in,
        "first_seen": time(c.first_us),
        "last_seen": time(c.last_us),
        "domain": c.domain,
        "domain_source": c.name_source.name(),
        "alpn": c.alpn,
    })
}

/// Writes the local `flows` view of `connections` in `format` to `out`.
pub fn write_connections(out: &mut dyn Write, connections: &[Connection], format: DryRunFormat) -> std::io::Result<()> {
    match format {
        DryRunFormat::Jsonl => {
            for c in connections {
                serde_json::to_writer(&mut *out, &connection_json(c))?;
                out.write_all(b"\n")?;
            }
        }
        DryRunFormat::Table => {
            writeln!(
                out,
                "{:<46} {:<46} {:<4} {:>6} {:>6} {:>10} {:>10}  domain",
                "source", "destination", "prot", "p_out", "p_in", "bytes_out", "bytes_in"
            )?;
            for c in connections {
                writeln!(
                    out,
                    "{:<46} {:<46} {:<4} {:>6} {:>6} {:>10} {:>10}  {}",
                    format!("{}:{}", c.src_ip, c.src_port),
                    format!("{}:{}", c.dst_ip, c.dst_port),
                    c.transport.name(),
                    c.packets_out,
                    c.packets_in,
                    c.payload_bytes_out,
                    c.payload_bytes_in,
                    c.domain.as_deref().unwrap_or("")
                )?;
            }
        }
    }
    Ok(())
}

/// Writes `batches` in `format` to `out`.
pub fn write_dry_run(out: &mut dyn Write, batches: &[ReportBatch], format: DryRunFormat) -> std::io::Result<()> {
    match format {
        DryRunFormat::Jsonl => {
            let mut line = Vec::with_capacity(1024);
            for batch in batches {
                write_batch_lines(out, batch, &mut line)?;
            }
        }
        DryRunFormat::Table => {
            writeln!(
                out,
                "{:>10}  {:<5} {:<40} {:>5}  {:<45} {:<6} {:>9} {:>9}",
                "since_boot", "proto", "dst_ip", "port", "domain", "source", "bytes_out", "bytes_in"
            )?;
            for batch in batches {
                for r in &batch.records {
                    let transport = Transport::try_from(r.transport).unwrap_or_default();
                    let source = DomainSource::try_from(r.domain_source).unwrap_or_default();
                    writeln!(
                        out,
                        "{:>10.3}  {:<5} {:<40} {:>5}  {:<45} {:<6} {:>9} {:>9}",
                        r.seconds_since_boot,
                        transport.short_name(),
                        r.dst_ip,
                        r.dst_port,
                        r.domain,
                        source.short_name(),
                        r.bytes_out,
                        r.bytes_in
                    )?;
                }
            }
        }
    }
    Ok(())
}
