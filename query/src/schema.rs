//! The `flows` table: one row per flow record, with its batch's device
//! labels.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Float64Builder, Int32Builder, Int64Array, Int64Builder, RecordBatch,
    StringBuilder, TimestampMillisecondBuilder, TimestampSecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The Arrow schema of `flows` (also the schema of the Parquet files).
pub fn flows_schema() -> SchemaRef {
    let utc = Some(Arc::from("UTC"));
    let s = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let i = |name: &str| Field::new(name, DataType::Int64, false);
    Arc::new(Schema::new(vec![
        s("agent_id", false),
        s("batch_id", false),
        Field::new("received_at", DataType::Timestamp(TimeUnit::Millisecond, utc.clone()), false),
        s("device_pseudonym", false),
        s("boot_pseudonym", false),
        s("boot_source", false),
        s("vendor", false),
        s("model", false),
        s("os_version", false),
        s("consent", false),
        Field::new("seconds_since_boot", DataType::Float64, false),
        Field::new("window_start", DataType::Timestamp(TimeUnit::Second, utc), false),
        s("transport", false),
        s("dst_ip", false),
        Field::new("dst_port", DataType::Int32, false),
        s("domain", true),
        s("domain_source", false),
        i("bytes_out"),
        i("bytes_in"),
        i("packets_out"),
        i("packets_in"),
        s("app", true),
        s("tls_sni", true),
        s("tls_alpn", true),
        s("tls_fingerprint", true),
        Field::new("duration_s", DataType::Float64, false),
        // Added after the first release: nullable, so older files read as NULL.
        Field::new("encrypted_dns", DataType::Boolean, true),
        // Connection timing, added later still: NULL when the agent did not
        // state it.
        Field::new("connections", DataType::Int64, true),
        Field::new("interval_mean_s", DataType::Float64, true),
        Field::new("interval_cv", DataType::Float64, true),
    ]))
}

/// One row of `flows`. Empty optional strings become NULL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowRow {
    /// Agent that reported it.
    pub agent_id: String,
    /// Batch it came in.
    pub batch_id: String,
    /// When the collector stored it, Unix milliseconds.
    pub received_at_ms: i64,
    /// Device pseudonym.
    pub device_pseudonym: String,
    /// Boot pseudonym.
    pub boot_pseudonym: String,
    /// How the boot time was obtained.
    pub boot_source: String,
    /// Vendor.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// OS or firmware version.
    pub os_version: String,
    /// Declared consent, "key=value" pairs sorted and joined by ";".
    pub consent: String,
    /// Seconds from boot to the flow's first packet.
    pub seconds_since_boot: f64,
    /// Minute of the first packet, Unix seconds.
    pub window_start_s: i64,
    /// "tcp" or "udp".
    pub transport: String,
    /// Destination address.
    pub dst_ip: String,
    /// Destination port.
    pub dst_port: i32,
    /// Destination name.
    pub domain: String,
    /// Where the name came from.
    pub domain_source: String,
    /// Payload bytes out.
    pub bytes_out: i64,
    /// Payload bytes in.
    pub bytes_in: i64,
    /// Packets out.
    pub packets_out: i64,
    /// Packets in.
    pub packets_in: i64,
    /// Application.
    pub app: String,
    /// TLS SNI.
    pub tls_sni: String,
    /// TLS ALPN, comma-joined.
    pub tls_alpn: String,
    /// TLS client fingerprint.
    pub tls_fingerprint: String,
    /// Seconds from first to last packet.
    pub duration_s: f64,
    /// Encrypted DNS (DoT or a known DoH endpoint).
    pub encrypted_dns: bool,
    /// Connections summed into the record; 0 when not stated (stored as
    /// NULL, with the two interval columns).
    pub connections: i64,
    /// Mean seconds between connection starts.
    pub interval_mean_s: f64,
    /// Their coefficient of variation.
    pub interval_cv: f64,
}

/// Builds `flows` record batches from rows.
#[derive(Debug, Default)]
pub struct FlowBatchBuilder {
    rows: Vec<FlowRow>,
    /// The order [`Self::finish`] writes rows in, when sorted.
    order: Option<Vec<usize>>,
}

impl FlowBatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a row.
    pub fn push(&mut self, row: FlowRow) {
        self.rows.push(row);
        self.order = None;
    }

    /// Rows added so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Sorts rows the way the rules read them: by vendor, model, domain,
    /// device, then time since boot (until the next [`Self::push`]).
    pub fn sort_for_rules(&mut self) {
        // Sorted by index, and written in that order by `finish`: a row is
        // hundreds of bytes, which a sort would move many times over, and
        // a second list of millions of rows costs as much again in memory.
        let rows = &self.rows;
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by(|&i, &j| {
            let (a, b) = (&rows[i], &rows[j]);
            (&a.vendor, &a.model, &a.domain, &a.device_pseudonym)
                .cmp(&(&b.vendor, &b.model, &b.domain, &b.device_pseudonym))
                .then(a.seconds_since_boot.total_cmp(&b.seconds_since_boot))
        });
        self.order = Some(order);
    }

    /// Builds one record batch of all rows (in the sorted order, if
    /// sorted).
    pub fn finish(self) -> RecordBatch {
        let rows: Vec<&FlowRow> = match &self.order {
            Some(order) => order.iter().map(|&i| &self.rows[i]).collect(),
            None => self.rows.iter().collect(),
        };
        let n = rows.len();
        let strings = |f: &dyn Fn(&FlowRow) -> &str, nullable: bool| -> ArrayRef {
            let mut b = StringBuilder::with_capacity(n, n * 16);
            for &r in &rows {
                let v = f(r);
                if nullable && v.is_empty() {
                    b.append_null();
                } else {
                    b.append_value(v);
                }
            }
            Arc::new(b.finish())
        };
        let ints = |f: &dyn Fn(&FlowRow) -> i64| -> ArrayRef {
            let mut b = Int64Builder::with_capacity(n);
            for &r in &rows {
                b.append_value(f(r));
            }
            Arc::new(b.finish())
        };
        let floats = |f: &dyn Fn(&FlowRow) -> f64| -> ArrayRef {
            let mut b = Float64Builder::with_capacity(n);
            for &r in &rows {
                b.append_value(f(r));
            }
            Arc::new(b.finish())
        };
        let mut received = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut window = TimestampSecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut port = Int32Builder::with_capacity(n);
        for r in &rows {
            received.append_value(r.received_at_ms);
            window.append_value(r.window_start_s);
            port.append_value(r.dst_port);
        }
        let columns: Vec<ArrayRef> = vec![
            strings(&|r| &r.agent_id, false),
            strings(&|r| &r.batch_id, false),
            Arc::new(received.finish()),
            strings(&|r| &r.device_pseudonym, false),
            strings(&|r| &r.boot_pseudonym, false),
            strings(&|r| &r.boot_source, false),
            strings(&|r| &r.vendor, false),
            strings(&|r| &r.model, false),
            strings(&|r| &r.os_version, false),
            strings(&|r| &r.consent, false),
            floats(&|r| r.seconds_since_boot),
            Arc::new(window.finish()),
            strings(&|r| &r.transport, false),
            strings(&|r| &r.dst_ip, false),
            Arc::new(port.finish()),
            strings(&|r| &r.domain, true),
            strings(&|r| &r.domain_source, false),
            ints(&|r| r.bytes_out),
            ints(&|r| r.bytes_in),
            ints(&|r| r.packets_out),
            ints(&|r| r.packets_in),
            strings(&|r| &r.app, true),
            strings(&|r| &r.tls_sni, true),
            strings(&|r| &r.tls_alpn, true),
            strings(&|r| &r.tls_fingerprint, true),
            floats(&|r| r.duration_s),
            Arc::new(rows.iter().map(|r| Some(r.encrypted_dns)).collect::<BooleanArray>()),
            Arc::new(rows.iter().map(|r| (r.connections > 0).then_some(r.connections)).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| (r.connections > 0).then_some(r.interval_mean_s)).collect::<Float64Array>()),
            Arc::new(rows.iter().map(|r| (r.connections > 0).then_some(r.interval_cv)).collect::<Float64Array>()),
        ];
        match RecordBatch::try_new(flows_schema(), columns) {
            Ok(batch) => batch,
            Err(e) => unreachable!("columns are built to match flows_schema: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sort_by_vendor_model_domain_device_then_time() {
        let row = |vendor: &str, domain: &str, device: &str, t: f64| FlowRow {
            vendor: vendor.into(),
            model: "m".into(),
            domain: domain.into(),
            device_pseudonym: device.into(),
            seconds_since_boot: t,
            ..Default::default()
        };
        let rows = vec![
            row("b", "x", "d1", 2.0),
            row("a", "y", "d1", 1.0),
            row("a", "x", "d2", 0.5),
            row("a", "x", "d1", 3.0),
            row("a", "x", "d1", -1.0),
            row("b", "x", "d1", 2.0),
        ];
        let mut builder = FlowBatchBuilder::new();
        for r in rows.clone() {
            builder.push(r);
        }
        builder.sort_for_rules();
        let mut want = rows;
        want.sort_by(|a, b| {
            (&a.vendor, &a.domain, &a.device_pseudonym)
                .cmp(&(&b.vendor, &b.domain, &b.device_pseudonym))
                .then(a.seconds_since_boot.total_cmp(&b.seconds_since_boot))
        });
        let mut in_order = FlowBatchBuilder::new();
        for r in want {
            in_order.push(r);
        }
        let sorted = builder.finish();
        assert_eq!(sorted.num_rows(), 6);
        assert_eq!(sorted, in_order.finish());
    }
}
