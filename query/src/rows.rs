//! Building `flows` record batches: a batch's labels once, then its
//! records, or whole rows; sorted as the flushed files are
//! ([`crate::files::SORT_KEYS`]).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    StringBuilder, TimestampMillisecondArray, TimestampSecondArray, UInt32Array,
};
use arrow::datatypes::UInt32Type;

use crate::schema::{flows_encoded_schema, flows_schema, to_microsecond};

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
    /// What the agent read the records from ("capture", "live", ...).
    pub source: String,
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

/// One batch's labels: the same on each of its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLabels<'a> {
    /// Agent that reported it.
    pub agent_id: &'a str,
    /// Batch it came in.
    pub batch_id: &'a str,
    /// When the collector stored it, Unix milliseconds.
    pub received_at_ms: i64,
    /// Device pseudonym.
    pub device_pseudonym: &'a str,
    /// Boot pseudonym.
    pub boot_pseudonym: &'a str,
    /// How the boot time was obtained.
    pub boot_source: &'a str,
    /// Vendor.
    pub vendor: &'a str,
    /// Model.
    pub model: &'a str,
    /// OS or firmware version.
    pub os_version: &'a str,
    /// Declared consent, "key=value" pairs sorted and joined by ";".
    pub consent: &'a str,
    /// What the agent read the records from ("capture", "live", ...).
    pub source: &'a str,
}

/// One record's own values (see [`FlowRow`]). Empty optional strings
/// become NULL. `A` is how the ALPN protocols are held: owned strings of
/// a decoded record, or `&str`s borrowed from its encoding.
#[derive(Debug, Clone, Copy)]
pub struct RecordValues<'a, A = String> {
    /// Seconds from boot to the flow's first packet; `None` when the
    /// source cannot know (see [`leakwatch_proto::v1::RecordSource`]).
    pub seconds_since_boot: Option<f64>,
    /// Minute of the first packet, Unix seconds.
    pub window_start_s: i64,
    /// "tcp" or "udp".
    pub transport: &'a str,
    /// Destination address.
    pub dst_ip: &'a str,
    /// Destination port; `None` when the source cannot know.
    pub dst_port: Option<i32>,
    /// Destination name.
    pub domain: &'a str,
    /// Where the name came from.
    pub domain_source: &'a str,
    /// Payload bytes out; `None` when the source cannot know.
    pub bytes_out: Option<i64>,
    /// Payload bytes in; `None` when the source cannot know.
    pub bytes_in: Option<i64>,
    /// Packets out.
    pub packets_out: i64,
    /// Packets in; `None` when the source cannot know.
    pub packets_in: Option<i64>,
    /// Application.
    pub app: &'a str,
    /// TLS SNI.
    pub tls_sni: &'a str,
    /// TLS ALPN protocols, stored comma-joined.
    pub tls_alpn: &'a [A],
    /// TLS client fingerprint.
    pub tls_fingerprint: &'a str,
    /// Seconds from first to last packet.
    pub duration_s: f64,
    /// Encrypted DNS.
    pub encrypted_dns: bool,
    /// Connections summed into the record; 0 when not stated.
    pub connections: i64,
    /// Mean seconds between connection starts.
    pub interval_mean_s: f64,
    /// Their coefficient of variation.
    pub interval_cv: f64,
    /// The DNS server blocked the lookup; `None` when the source cannot
    /// know.
    pub blocked: Option<bool>,
    /// Who started the contact ("app", "user"); `None` when the source
    /// cannot know.
    pub initiated_by: Option<&'static str>,
    /// A website shown in the app made the contact; `None` when the source
    /// cannot know.
    pub via_website: Option<bool>,
}

/// [`BatchLabels`], owned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct OwnedLabels {
    agent_id: String,
    batch_id: String,
    received_at_ms: i64,
    device_pseudonym: String,
    boot_pseudonym: String,
    boot_source: String,
    vendor: String,
    model: String,
    os_version: String,
    consent: String,
    source: String,
}

impl OwnedLabels {
    fn of(l: &BatchLabels<'_>) -> Self {
        Self {
            agent_id: l.agent_id.into(),
            batch_id: l.batch_id.into(),
            received_at_ms: l.received_at_ms,
            device_pseudonym: l.device_pseudonym.into(),
            boot_pseudonym: l.boot_pseudonym.into(),
            boot_source: l.boot_source.into(),
            vendor: l.vendor.into(),
            model: l.model.into(),
            os_version: l.os_version.into(),
            consent: l.consent.into(),
            source: l.source.into(),
        }
    }

    fn borrowed(&self) -> BatchLabels<'_> {
        BatchLabels {
            agent_id: &self.agent_id,
            batch_id: &self.batch_id,
            received_at_ms: self.received_at_ms,
            device_pseudonym: &self.device_pseudonym,
            boot_pseudonym: &self.boot_pseudonym,
            boot_source: &self.boot_source,
            vendor: &self.vendor,
            model: &self.model,
            os_version: &self.os_version,
            consent: &self.consent,
            source: &self.source,
        }
    }
}

/// The per-record columns, in the order rows came.
#[derive(Debug, Default)]
struct RecordColumns {
    seconds_since_boot: Vec<Option<f64>>,
    window_start: Vec<i64>,
    transport: StringBuilder,
    dst_ip: StringBuilder,
    dst_port: Vec<Option<i32>>,
    domain: StringBuilder,
    domain_source: StringBuilder,
    bytes_out: Vec<Option<i64>>,
    bytes_in: Vec<Option<i64>>,
    packets_out: Vec<i64>,
    packets_in: Vec<Option<i64>>,
    app: StringBuilder,
    tls_sni: StringBuilder,
    tls_alpn: StringBuilder,
    tls_fingerprint: StringBuilder,
    duration_s: Vec<f64>,
    encrypted_dns: Vec<bool>,
    connections: Vec<i64>,
    interval_mean_s: Vec<f64>,
    interval_cv: Vec<f64>,
    blocked: Vec<Option<bool>>,
    initiated_by: StringBuilder,
    via_website: Vec<Option<bool>>,
}

fn append_optional(b: &mut StringBuilder, v: &str) {
    if v.is_empty() { b.append_null() } else { b.append_value(v) }
}

/// Dense ranks of `n` keys: equal keys share a rank, and ranks order as
/// the keys do.
fn ranks<K: Ord>(n: usize, key: impl Fn(usize) -> K) -> Vec<u32> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by_key(|&i| key(i));
    let mut rank = vec![0u32; n];
    let mut next = 0u32;
    for (k, &i) in order.iter().enumerate() {
        if k > 0 && key(order[k - 1]) != key(i) {
            next += 1;
        }
        rank[i] = next;
    }
    rank
}

/// Rows `0..n` in the order of their `key`s, equal keys in row order.
/// When the keys' largest values and the row numbers fit in 128 bits (a
/// flush's do by far: the first three keys are ranks, counting distinct
/// values) and `pack` is set, each row is sorted as one u128 (its keys
/// and, in the low bits, its number), much cheaper to compare than a
/// tuple.
fn order_by(n: usize, key: impl Fn(usize) -> (u32, u32, u32, u64), pack: bool) -> Vec<u32> {
    let bits = |m: u32| u32::BITS - m.leading_zeros();
    let (mut a, mut b, mut c) = (0, 0, 0);
    for r in 0..n {
        let (x, y, z, _) = key(r);
        (a, b, c) = (a.max(x), b.max(y), c.max(z));
    }
    let (b, c) = (bits(b), bits(c));
    let row_bits = usize::BITS - n.leading_zeros();
    if pack && bits(a) + b + c + 64 + row_bits <= 128 {
        let mut keys: Vec<u128> = (0..n)
            .map(|r| {
                let (x, y, z, t) = key(r);
                let high = (u128::from(x) << b | u128::from(y)) << c | u128::from(z);
                ((high << 64 | u128::from(t)) << row_bits) | r as u128
            })
            .collect();
        keys.sort_unstable();
        let mask = (1u128 << row_bits) - 1;
        keys.into_iter().map(|k| (k & mask) as u32).collect()
    } else {
        let mut keys: Vec<((u32, u32, u32, u64), u32)> = (0..n).map(|r| (key(r), r as u32)).collect();
        keys.sort_unstable();
        keys.into_iter().map(|k| k.1).collect()
    }
}

/// `x`'s place in [`f64::total_cmp`]'s order, as an unsigned integer.
fn total_order_key(x: f64) -> u64 {
    let bits = x.to_bits() as i64;
    (bits ^ ((((bits >> 63) as u64) >> 1) as i64)) as u64 ^ (1 << 63)
}

/// `array`'s values at `indices` (built in bounds).
fn gather(array: &dyn Array, indices: &UInt32Array) -> ArrayRef {
    match arrow::compute::take(array, indices, None) {
        Ok(a) => a,
        Err(e) => unreachable!("row indices are built in bounds: {e}"),
    }
}

/// Builds `flows` record batches column by column: a batch's labels once
/// ([`Self::start_batch`]), then its records ([`Self::push_record`]), or
/// whole rows ([`Self::push`]).
#[derive(Debug, Default)]
pub struct FlowBatchBuilder {
    batches: Vec<OwnedLabels>,
    /// Each row's index in `batches`.
    batch_of_row: Vec<u32>,
    records: RecordColumns,
    /// Each distinct domain's id (in the order first seen), for sorting.
    domain_ids: datafusion::common::HashMap<String, u32>,
    /// Each row's domain id.
    domain_of_row: Vec<u32>,
    /// The order [`Self::finish`] writes rows in, when sorted.
    order: Option<Vec<u32>>,
}

impl FlowBatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a batch: the records pushed next carry `labels`.
    pub fn start_batch(&mut self, labels: &BatchLabels<'_>) {
        self.batches.push(OwnedLabels::of(labels));
    }

    /// Adds a record of the batch last started (of an empty batch when
    /// none was).
    pub fn push_record<A: AsRef<str>>(&mut self, r: &RecordValues<'_, A>) {
        if self.batches.is_empty() {
            self.batches.push(OwnedLabels::default());
        }
        self.batch_of_row.push((self.batches.len() - 1) as u32);
        let id = match self.domain_ids.get(r.domain) {
            Some(&id) => id,
            None => {
                let id = self.domain_ids.len() as u32;
                self.domain_ids.insert(r.domain.to_string(), id);
                id
            }
        };
        self.domain_of_row.push(id);
        let c = &mut self.records;
        c.seconds_since_boot.push(r.seconds_since_boot.map(to_microsecond));
        c.window_start.push(r.window_start_s);
        c.transport.append_value(r.transport);
        c.dst_ip.append_value(r.dst_ip);
        c.dst_port.push(r.dst_port);
        append_optional(&mut c.domain, r.domain);
        c.domain_source.append_value(r.domain_source);
        c.bytes_out.push(r.bytes_out);
        c.bytes_in.push(r.bytes_in);
        c.packets_out.push(r.packets_out);
        c.packets_in.push(r.packets_in);
        append_optional(&mut c.app, r.app);
        append_optional(&mut c.tls_sni, r.tls_sni);
        // NULL when the joined list would be empty.
        match r.tls_alpn {
            [] => c.tls_alpn.append_null(),
            [one] if one.as_ref().is_empty() => c.tls_alpn.append_null(),
            [one] => c.tls_alpn.append_value(one.as_ref()),
            [first, rest @ ..] => {
                // Joined in the builder's buffer: no string per record.
                use std::fmt::Write as _;
                let _ = c.tls_alpn.write_str(first.as_ref());
                for p in rest {
                    let _ = c.tls_alpn.write_str(",");
                    let _ = c.tls_alpn.write_str(p.as_ref());
                }
                c.tls_alpn.append_value("");
            }
        }
        append_optional(&mut c.tls_fingerprint, r.tls_fingerprint);
        c.duration_s.push(to_microsecond(r.duration_s));
        c.encrypted_dns.push(r.encrypted_dns);
        c.connections.push(r.connections);
        c.interval_mean_s.push(r.interval_mean_s);
        c.interval_cv.push(r.interval_cv);
        c.blocked.push(r.blocked);
        c.initiated_by.append_option(r.initiated_by);
        c.via_website.push(r.via_website);
        self.order = None;
    }

    /// Adds a row (starting a batch when its labels differ from the last
    /// row's).
    pub fn push(&mut self, row: FlowRow) {
        let labels = BatchLabels {
            agent_id: &row.agent_id,
            batch_id: &row.batch_id,
            received_at_ms: row.received_at_ms,
            device_pseudonym: &row.device_pseudonym,
            boot_pseudonym: &row.boot_pseudonym,
            boot_source: &row.boot_source,
            vendor: &row.vendor,
            model: &row.model,
            os_version: &row.os_version,
            consent: &row.consent,
            source: &row.source,
        };
        if self.batches.last().is_none_or(|last| last.borrowed() != labels) {
            self.start_batch(&labels);
        }
        self.push_record(&RecordValues {
            seconds_since_boot: Some(row.seconds_since_boot),
            window_start_s: row.window_start_s,
            transport: &row.transport,
            dst_ip: &row.dst_ip,
            dst_port: Some(row.dst_port),
            domain: &row.domain,
            domain_source: &row.domain_source,
            bytes_out: Some(row.bytes_out),
            bytes_in: Some(row.bytes_in),
            packets_out: row.packets_out,
            packets_in: Some(row.packets_in),
            app: &row.app,
            tls_sni: &row.tls_sni,
            tls_alpn: std::slice::from_ref(&row.tls_alpn),
            tls_fingerprint: &row.tls_fingerprint,
            duration_s: row.duration_s,
            encrypted_dns: row.encrypted_dns,
            connections: row.connections,
            interval_mean_s: row.interval_mean_s,
            interval_cv: row.interval_cv,
            blocked: None,
            initiated_by: None,
            via_website: None,
        });
    }

    /// Rows added so far.
    pub fn len(&self) -> usize {
        self.batch_of_row.len()
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.batch_of_row.is_empty()
    }

    /// Sorts rows the way the rules read them: by vendor, model, domain,
    /// device, then time since boot; rows equal in all five keep the order
    /// they came in (until the next push).
    pub fn sort_for_rules(&mut self) {
        // Strings are compared once per distinct value, to rank them; the
        // rows are then sorted by those ranks, as integers.
        let b = &self.batches;
        let model = ranks(b.len(), |i| (&b[i].vendor, &b[i].model));
        let device = ranks(b.len(), |i| &b[i].device_pseudonym);
        let mut names = vec![""; self.domain_ids.len()];
        for (name, &id) in &self.domain_ids {
            names[id as usize] = name;
        }
        let domain = ranks(names.len(), |i| names[i]);
        let key = |r: usize| {
            let batch = self.batch_of_row[r] as usize;
            (
                model[batch],
                domain[self.domain_of_row[r] as usize],
                device[batch],
                // NULL first, as `rules_order` sorts it (no stored time has key 0).
                self.records.seconds_since_boot[r].map_or(0, total_order_key),
            )
        };
        self.order = Some(order_by(self.len(), key, true));
    }

    /// The `(agent_id, batch_id)` of each batch with a row here.
    pub fn batch_pairs(&self) -> std::collections::HashSet<(String, String)> {
        let mut has_rows = vec![false; self.batches.len()];
        for &b in &self.batch_of_row {
            has_rows[b as usize] = true;
        }
        self.batches
            .iter()
            .zip(has_rows)
            .filter(|(_, has)| *has)
            .map(|(b, _)| (b.agent_id.clone(), b.batch_id.clone()))
            .collect()
    }

    /// Builds one record batch of all rows (in the sorted order, if
    /// sorted).
    pub fn finish(self) -> RecordBatch {
        self.finish_with(false)
    }

    /// Builds the rows as [`Self::finish`] does, in
    /// [`flows_encoded_schema`]: each label column a dictionary of one
    /// value per batch, keyed by each row's batch, so that no label is
    /// copied once per row (the flusher writes these to Parquet).
    pub fn finish_encoded(self) -> RecordBatch {
        self.finish_with(true)
    }

    fn finish_with(self, encoded: bool) -> RecordBatch {
        let Self { batches, batch_of_row, records: mut c, order, .. } = self;
        let batch_of_row = UInt32Array::from(match &order {
            Some(order) => order.iter().map(|&r| batch_of_row[r as usize]).collect(),
            None => batch_of_row,
        });
        let order = order.map(UInt32Array::from);
        // A record column in the order rows are written.
        let rows = |a: ArrayRef| -> ArrayRef {
            match &order {
                Some(order) => gather(&a, order),
                None => a,
            }
        };
        // A label column: one value per batch, spread to its rows.
        let labels = |f: &dyn Fn(&OwnedLabels) -> &str| -> ArrayRef {
            let per_batch: StringArray = batches.iter().map(|b| Some(f(b))).collect();
            if !encoded {
                return gather(&per_batch, &batch_of_row);
            }
            match DictionaryArray::<UInt32Type>::try_new(batch_of_row.clone(), Arc::new(per_batch)) {
                Ok(a) => Arc::new(a),
                Err(e) => unreachable!("row indices are built in bounds: {e}"),
            }
        };
        let received = TimestampMillisecondArray::from(batches.iter().map(|b| b.received_at_ms).collect::<Vec<_>>())
            .with_timezone("UTC");
        let stated = |v: &[f64]| -> ArrayRef {
            Arc::new(v.iter().zip(&c.connections).map(|(&x, &n)| (n > 0).then_some(x)).collect::<Float64Array>())
        };
        let columns: Vec<ArrayRef> = vec![
            labels(&|b| &b.agent_id),
            labels(&|b| &b.batch_id),
            gather(&received, &batch_of_row),
            labels(&|b| &b.device_pseudonym),
            labels(&|b| &b.boot_pseudonym),
            labels(&|b| &b.boot_source),
            labels(&|b| &b.vendor),
            labels(&|b| &b.model),
            labels(&|b| &b.os_version),
            labels(&|b| &b.consent),
            rows(Arc::new(Float64Array::from(std::mem::take(&mut c.seconds_since_boot)))),
            rows(Arc::new(TimestampSecondArray::from(std::mem::take(&mut c.window_start)).with_timezone("UTC"))),
            rows(Arc::new(c.transport.finish())),
            rows(Arc::new(c.dst_ip.finish())),
            rows(Arc::new(Int32Array::from(std::mem::take(&mut c.dst_port)))),
            rows(Arc::new(c.domain.finish())),
            rows(Arc::new(c.domain_source.finish())),
            rows(Arc::new(Int64Array::from(std::mem::take(&mut c.bytes_out)))),
            rows(Arc::new(Int64Array::from(std::mem::take(&mut c.bytes_in)))),
            rows(Arc::new(Int64Array::from(std::mem::take(&mut c.packets_out)))),
            rows(Arc::new(Int64Array::from(std::mem::take(&mut c.packets_in)))),
            rows(Arc::new(c.app.finish())),
            rows(Arc::new(c.tls_sni.finish())),
            rows(Arc::new(c.tls_alpn.finish())),
            rows(Arc::new(c.tls_fingerprint.finish())),
            rows(Arc::new(Float64Array::from(std::mem::take(&mut c.duration_s)))),
            rows(Arc::new(c.encrypted_dns.iter().map(|&x| Some(x)).collect::<BooleanArray>())),
            rows(Arc::new(c.connections.iter().map(|&n| (n > 0).then_some(n)).collect::<Int64Array>())),
            rows(stated(&c.interval_mean_s)),
            rows(stated(&c.interval_cv)),
            labels(&|b| &b.source),
            rows(Arc::new(std::mem::take(&mut c.blocked).into_iter().collect::<BooleanArray>())),
            rows(Arc::new(c.initiated_by.finish())),
            rows(Arc::new(std::mem::take(&mut c.via_website).into_iter().collect::<BooleanArray>())),
        ];
        let schema = if encoded { flows_encoded_schema() } else { flows_schema() };
        match RecordBatch::try_new(schema, columns) {
            Ok(batch) => batch,
            Err(e) => unreachable!("columns are built to match flows_schema: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{rules_order, sorted_for_rules, sorted_slice};

    /// `rows` as a batch, each column built the plain way.
    fn reference(rows: &[FlowRow]) -> RecordBatch {
        let text = |f: fn(&FlowRow) -> &str| -> ArrayRef {
            Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
        };
        let optional = |f: fn(&FlowRow) -> &str| -> ArrayRef {
            Arc::new(rows.iter().map(|r| Some(f(r)).filter(|v| !v.is_empty())).collect::<StringArray>())
        };
        let int = |f: fn(&FlowRow) -> i64| -> ArrayRef { Arc::new(Int64Array::from_iter_values(rows.iter().map(f))) };
        let float =
            |f: fn(&FlowRow) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(rows.iter().map(f))) };
        let stated = |f: fn(&FlowRow) -> f64| -> ArrayRef {
            Arc::new(rows.iter().map(|r| (r.connections > 0).then_some(f(r))).collect::<Float64Array>())
        };
        let columns: Vec<ArrayRef> = vec![
            text(|r| &r.agent_id),
            text(|r| &r.batch_id),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.received_at_ms)).with_timezone("UTC"),
            ),
            text(|r| &r.device_pseudonym),
            text(|r| &r.boot_pseudonym),
            text(|r| &r.boot_source),
            text(|r| &r.vendor),
            text(|r| &r.model),
            text(|r| &r.os_version),
            text(|r| &r.consent),
            // Times held to the microsecond.
            float(|r| to_microsecond(r.seconds_since_boot)),
            Arc::new(
                TimestampSecondArray::from_iter_values(rows.iter().map(|r| r.window_start_s)).with_timezone("UTC"),
            ),
            text(|r| &r.transport),
            text(|r| &r.dst_ip),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.dst_port))),
            optional(|r| &r.domain),
            text(|r| &r.domain_source),
            int(|r| r.bytes_out),
            int(|r| r.bytes_in),
            int(|r| r.packets_out),
            int(|r| r.packets_in),
            optional(|r| &r.app),
            optional(|r| &r.tls_sni),
            optional(|r| &r.tls_alpn),
            optional(|r| &r.tls_fingerprint),
            float(|r| to_microsecond(r.duration_s)),
            Arc::new(rows.iter().map(|r| Some(r.encrypted_dns)).collect::<BooleanArray>()),
            Arc::new(rows.iter().map(|r| (r.connections > 0).then_some(r.connections)).collect::<Int64Array>()),
            stated(|r| r.interval_mean_s),
            stated(|r| r.interval_cv),
            text(|r| &r.source),
            // Rows pushed as `FlowRow`s say nothing of blocking, or of who
            // started a contact.
            arrow::array::new_null_array(&arrow::datatypes::DataType::Boolean, rows.len()),
            arrow::array::new_null_array(&arrow::datatypes::DataType::Utf8, rows.len()),
            arrow::array::new_null_array(&arrow::datatypes::DataType::Boolean, rows.len()),
        ];
        RecordBatch::try_new(flows_schema(), columns).expect("reference batch")
    }

    /// Rows of several batches, interleaved, with every column varying
    /// (empty optional strings, connections stated and not).
    fn mixed_rows() -> Vec<FlowRow> {
        (0..40)
            .map(|i: i64| {
                let b = i % 3;
                FlowRow {
                    agent_id: format!("agent{b}"),
                    batch_id: format!("batch{}", i % 5),
                    received_at_ms: 1_000 + b,
                    device_pseudonym: format!("dev{}", (7 - i) % 4),
                    boot_pseudonym: format!("boot{b}"),
                    boot_source: ["uptime", "first_packet"][b as usize % 2].into(),
                    vendor: ["Xiaomi", "Amazon"][(i % 2) as usize].into(),
                    model: format!("m{}", i % 3),
                    os_version: format!("v{}", i % 2),
                    consent: if b == 0 { String::new() } else { "cloud=off".into() },
                    source: ["capture", "live"][b as usize % 2].into(),
                    // 1e-9: finer than a microsecond, held as 0.
                    seconds_since_boot: [3.5, -0.0, 0.0, 1e-9, 120.25][(i % 5) as usize],
                    window_start_s: 86_400 * 20_000 + 60 * i,
                    transport: ["tcp", "udp"][(i % 2) as usize].into(),
                    dst_ip: format!("10.0.0.{i}"),
                    dst_port: 443 + i as i32,
                    domain: ["", "a.example", "b.example", "a.example"][(i % 4) as usize].into(),
                    domain_source: "dns".into(),
                    bytes_out: i * 10,
                    bytes_in: i * 100,
                    packets_out: i,
                    packets_in: 2 * i,
                    app: if i % 3 == 0 { String::new() } else { format!("app{i}") },
                    tls_sni: if i % 2 == 0 { String::new() } else { "a.example".into() },
                    tls_alpn: ["", "h2", "h2,http/1.1"][(i % 3) as usize].into(),
                    tls_fingerprint: if i % 5 == 0 { "fp".into() } else { String::new() },
                    duration_s: i as f64 / 4.0,
                    encrypted_dns: i % 7 == 0,
                    connections: i % 3,
                    interval_mean_s: i as f64,
                    interval_cv: 0.5,
                }
            })
            .collect()
    }

    #[test]
    fn columns_hold_each_rows_values_in_the_order_pushed() {
        let rows = mixed_rows();
        let mut builder = FlowBatchBuilder::new();
        for r in rows.clone() {
            builder.push(r);
        }
        assert_eq!(builder.len(), rows.len());
        assert_eq!(builder.finish(), reference(&rows));
    }

    #[test]
    fn labels_apply_to_the_records_of_their_batch() {
        let mut builder = FlowBatchBuilder::new();
        let labels = |vendor| BatchLabels {
            agent_id: "a",
            batch_id: "b",
            received_at_ms: 5,
            device_pseudonym: "d",
            boot_pseudonym: "boot",
            boot_source: "uptime",
            vendor,
            model: "m",
            os_version: "1",
            consent: "",
            source: "capture",
        };
        let alpn = ["h2".to_string(), "http/1.1".to_string()];
        let record = |domain| RecordValues {
            seconds_since_boot: Some(1.0),
            window_start_s: 60,
            transport: "tcp",
            dst_ip: "10.0.0.1",
            dst_port: Some(443),
            domain,
            domain_source: "dns",
            bytes_out: Some(1),
            bytes_in: Some(2),
            packets_out: 3,
            packets_in: Some(4),
            app: "",
            tls_sni: "",
            tls_alpn: &alpn,
            tls_fingerprint: "",
            duration_s: 0.5,
            encrypted_dns: false,
            connections: 0,
            interval_mean_s: 0.0,
            interval_cv: 0.0,
            blocked: None,
            initiated_by: None,
            via_website: None,
        };
        builder.start_batch(&labels("V1"));
        builder.push_record(&record("x"));
        builder.push_record(&record("y"));
        builder.start_batch(&labels("V2"));
        builder.push_record(&record("x"));
        let batch = builder.finish();
        let column = |name| {
            let c = batch.column_by_name(name).expect(name);
            c.as_any()
                .downcast_ref::<StringArray>()
                .expect("strings")
                .iter()
                .map(|v| v.map(str::to_string))
                .collect::<Vec<_>>()
        };
        assert_eq!(column("vendor"), [Some("V1".into()), Some("V1".into()), Some("V2".into())]);
        assert_eq!(column("domain"), [Some("x".into()), Some("y".into()), Some("x".into())]);
        assert_eq!(column("tls_alpn"), vec![Some("h2,http/1.1".to_string()); 3]);
    }

    #[test]
    fn rows_sort_by_vendor_model_domain_device_then_time() {
        let mut rows = mixed_rows();
        let again: Vec<FlowRow> =
            rows[..5].iter().map(|r| FlowRow { dst_ip: "192.0.2.1".into(), ..r.clone() }).collect();
        rows.extend(again);
        let mut builder = FlowBatchBuilder::new();
        for r in rows.clone() {
            builder.push(r);
        }
        builder.sort_for_rules();
        // A stable sort: rows equal in all five keys keep their order.
        let mut want = rows;
        want.sort_by(|a, b| {
            (&a.vendor, &a.model, &a.domain, &a.device_pseudonym)
                .cmp(&(&b.vendor, &b.model, &b.domain, &b.device_pseudonym))
                .then(to_microsecond(a.seconds_since_boot).total_cmp(&to_microsecond(b.seconds_since_boot)))
        });
        assert!(
            want.windows(2).any(|w| (&w[0].vendor, &w[0].model, &w[0].domain, &w[0].device_pseudonym)
                == (&w[1].vendor, &w[1].model, &w[1].domain, &w[1].device_pseudonym)
                && to_microsecond(w[0].seconds_since_boot).total_cmp(&to_microsecond(w[1].seconds_since_boot)).is_eq()),
            "the rows include ties"
        );
        assert_eq!(builder.finish(), reference(&want));
    }

    #[test]
    fn rows_sort_the_same_packed_into_one_integer_or_as_tuples() {
        // A small generator is enough: ties, extremes of each key, and
        // keys too wide to pack (which then sort as tuples either way).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (n, wide) in [(0, false), (1, false), (1000, false), (1000, true)] {
            let keys: Vec<(u32, u32, u32, u64)> = (0..n)
                .map(|_| {
                    let r = next();
                    let small = |v: u64| (v % 5) as u32;
                    let time = [0, u64::MAX, r >> 60, 1 << 63][(r % 4) as usize];
                    let (domain, device) = if wide {
                        (u32::MAX - small(r >> 12), u32::MAX - small(r >> 20))
                    } else {
                        (small(r >> 12) * 1000, small(r >> 20))
                    };
                    (small(r >> 8), domain, device, time)
                })
                .collect();
            let packed = order_by(keys.len(), |r| keys[r], true);
            assert_eq!(packed, order_by(keys.len(), |r| keys[r], false), "{n} rows, wide: {wide}");
            let mut want: Vec<u32> = (0..n as u32).collect();
            want.sort_by_key(|&r| keys[r as usize]);
            assert_eq!(packed, want, "a stable sort by the keys");
        }
    }

    #[test]
    fn merged_batches_sort_as_the_builder_sorts_their_rows() {
        // Ties in all five keys, NULL domains, -0.0 and 0.0 among the times.
        let mut rows = mixed_rows();
        rows.extend(rows[..5].iter().map(|r| FlowRow { dst_ip: "192.0.2.1".into(), ..r.clone() }).collect::<Vec<_>>());
        let built = |rows: &[FlowRow], sort: bool| {
            let mut builder = FlowBatchBuilder::new();
            for r in rows {
                builder.push(r.clone());
            }
            if sort {
                builder.sort_for_rules();
            }
            builder.finish()
        };
        let want = built(&rows, true);
        // Unsorted parts, and parts each sorted as flushed files are.
        let (a, b) = rows.split_at(17);
        let parts = [built(a, false), built(b, false)];
        assert_eq!(sorted_for_rules(&parts).expect("sort"), want);
        // Gathered a few rows at a time, as compaction writes them.
        let order = rules_order(&parts).expect("order");
        let pieces: Vec<RecordBatch> = order.chunks(4).map(|c| sorted_slice(&parts, c).expect("slice")).collect();
        assert_eq!(arrow::compute::concat_batches(&flows_schema(), &pieces).expect("concat"), want);
        assert_eq!(sorted_for_rules(&[built(a, true), built(b, true)]).expect("sort"), want);
        assert_eq!(sorted_for_rules(std::slice::from_ref(&want)).expect("sort"), want, "sorted rows stay as they are");
        assert_eq!(sorted_for_rules(&[]).expect("no batches").num_rows(), 0);
    }

    #[test]
    fn the_time_key_orders_as_total_cmp() {
        let values = [f64::NEG_INFINITY, -2.5, -0.0, 0.0, 1e-300, 1.0, 2.5, f64::INFINITY, f64::NAN, -f64::NAN];
        for a in values {
            for b in values {
                assert_eq!(total_order_key(a).cmp(&total_order_key(b)), a.total_cmp(&b), "{a} vs {b}");
            }
        }
    }
}
