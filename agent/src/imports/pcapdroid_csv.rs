//! PCAPdroid's connection export (Connections → Export CSV): one row per
//! connection with its app, destination, the name PCAPdroid read (SNI,
//! HTTP Host or DNS query), bytes, packets and times. Times carry the
//! phone's UTC offset (`2025-06-22T15:16:04.380-05:00`) and are turned to
//! UTC here. PCAPdroid writes no quotes: a row is its fields split at
//! commas, and one with another number of fields than the header is bad.

use std::net::IpAddr;
use std::path::Path;

use crate::{Error, Result};

/// One connection of the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvConnection {
    /// TCP (6) or UDP (17), as the export numbers them.
    pub ip_proto: u8,
    /// The phone's address (local only: the anonymiser never sends it).
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// The app's name, e.g. `Google Play services`.
    pub app: String,
    /// Its package, e.g. `com.google.android.gms`.
    pub package: String,
    /// PCAPdroid's protocol (`DNS`, `TLS`, `HTTPS`, `HTTP`, `QUIC`, ...).
    pub proto: String,
    /// The name PCAPdroid read: the SNI, the HTTP Host, or the DNS query.
    pub info: String,
    /// Bytes and packets sent and received.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_rcvd: u64,
    /// Packets sent.
    pub pkts_sent: u64,
    /// Packets received.
    pub pkts_rcvd: u64,
    /// First packet, microseconds since the Unix epoch (UTC).
    pub first_us: i64,
    /// Last packet, microseconds since the Unix epoch (UTC).
    pub last_us: i64,
}

/// What reading an export found besides its good rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsvStats {
    /// Data rows read (the header not counted).
    pub rows: u64,
    /// Rows that do not parse.
    pub bad: super::BadLines,
}

/// The columns read, by their header names.
const COLUMNS: [&str; 15] = [
    "IPProto",
    "SrcIP",
    "DstIp",
    "DstPort",
    "App",
    "PackageName",
    "Proto",
    "Info",
    "BytesSent",
    "BytesRcvd",
    "PktsSent",
    "PktsRcvd",
    "FirstSeen",
    "LastSeen",
    "Status",
];
/// Longest line read.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// Imports the export at `path` as one boot of the phone `labels` name
/// (its boot: `--boot-time`, else the first connection): connections
/// become flow records per destination and app (the package name, e.g.
/// `com.google.android.gms`), named by what PCAPdroid read (SNI for TLS
/// and HTTPS, Host for HTTP, the QUIC SNI); DNS rows become lookup
/// records. Everything goes through the anonymiser, as a capture's flows
/// do; the batches say they come from `pcapdroid_csv`.
pub fn import(
    path: &Path,
    labels: &crate::import::DeviceLabels,
    state: &crate::state::AgentState,
    batch_records: usize,
) -> Result<(crate::import::ImportedCapture, CsvStats)> {
    use std::collections::BTreeMap;

    use crate::capture::Transport;
    use crate::flow::{DnsLookup, FlowSummary, NameSource, Origin, intervals};
    use leakwatch_proto::v1::RecordSource;

    /// A destination (address, port, IP protocol) of one app (its package).
    type Destination = (IpAddr, u16, u8, String);
    let (rows, stats) = read(path)?;
    // Each destination's flow and its connections' starts.
    let mut flows: BTreeMap<Destination, (FlowSummary, Vec<i64>)> = BTreeMap::new();
    let mut lookups = Vec::new();
    for r in &rows {
        let transport = match r.ip_proto {
            6 => Transport::Tcp,
            17 => Transport::Udp,
            _ => continue,
        };
        if r.proto == "DNS" && r.dst_port == 53 {
            lookups.push(DnsLookup {
                origin: Origin { mac: None, ip: r.src_ip },
                name: r.info.clone(),
                resolver: r.dst_ip,
                first_us: r.first_us,
                last_us: r.last_us,
                queries: r.pkts_sent.max(1),
                app: Some(r.package.clone()).filter(|p| !p.is_empty()),
                blocked: false,
                context: Default::default(),
            });
            continue;
        }
        let source = match r.proto.as_str() {
            "TLS" | "HTTPS" => NameSource::Sni,
            "QUIC" => NameSource::Quic,
            "HTTP" => NameSource::Http,
            _ => NameSource::None,
        };
        let name = (source != NameSource::None && !r.info.is_empty() && r.info.parse::<IpAddr>().is_err())
            .then(|| r.info.clone());
        let key = (r.dst_ip, r.dst_port, r.ip_proto, r.package.clone());
        let (f, starts) = flows.entry(key).or_insert_with(|| {
            let flow = FlowSummary {
                dst_ip: r.dst_ip,
                dst_port: r.dst_port,
                transport,
                first_us: r.first_us,
                last_us: r.last_us,
                bytes_out: 0,
                bytes_in: 0,
                packets_out: 0,
                packets_in: 0,
                domain: None,
                name_source: NameSource::None,
                sni: None,
                alpn: Vec::new(),
                encrypted_dns: crate::flow::is_encrypted_dns(r.dst_port, name.as_deref()),
                app: Some(r.package.clone()).filter(|p| !p.is_empty()),
                fingerprint: None,
                connections: 0,
                interval_mean_s: 0.0,
                interval_cv: 0.0,
            };
            (flow, Vec::new())
        });
        f.add_traffic(r.first_us, r.last_us, [r.bytes_sent, r.bytes_rcvd], [r.pkts_sent, r.pkts_rcvd]);
        f.connections += 1;
        starts.push(r.first_us);
        if name.is_some() && source > f.name_source {
            f.domain = name.clone();
            f.name_source = source;
            if matches!(source, NameSource::Sni | NameSource::Quic) {
                f.sni = name;
            }
        }
    }
    let flows: Vec<FlowSummary> = flows
        .into_values()
        .map(|(mut f, mut starts)| {
            (f.interval_mean_s, f.interval_cv) = intervals(&mut starts);
            f
        })
        .collect();
    let first_us = rows.iter().map(|r| r.first_us).min();
    let imported = super::one_boot(
        super::OneBoot { path, labels, state, batch_records, source: RecordSource::PcapdroidCsv, first_us },
        &flows,
        &lookups,
    )?;
    Ok((imported, stats))
}

/// Reads the export at `path`. A file whose first line is not a PCAPdroid
/// header is an error naming the missing columns.
pub fn read(path: &Path) -> Result<(Vec<CsvConnection>, CsvStats)> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    super::read_line(&mut reader, &mut line, MAX_LINE_BYTES).map_err(io)?;
    let header = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string();
    let names: Vec<&str> = header.split(',').collect();
    let missing: Vec<&str> = COLUMNS.iter().copied().filter(|c| !names.contains(c)).collect();
    if !missing.is_empty() {
        return Err(Error::InvalidArgument {
            field: format!("{} line 1", path.display()),
            reason: format!("not a PCAPdroid connections CSV: no column {}", missing.join(", ")),
        });
    }
    let at = |name: &str| names.iter().position(|n| *n == name).unwrap_or(0);
    let index: Vec<usize> = COLUMNS.iter().map(|c| at(c)).collect();
    let mut out = Vec::new();
    let mut stats = CsvStats::default();
    let mut line_no = 1u64;
    loop {
        let read = super::read_line(&mut reader, &mut line, MAX_LINE_BYTES).map_err(io)?;
        if read == super::Line::End {
            break;
        }
        line_no += 1;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            continue;
        }
        stats.rows += 1;
        let parsed = match read {
            super::Line::TooLong => Err(format!("longer than {MAX_LINE_BYTES} bytes")),
            _ => row(text, names.len(), &index),
        };
        match parsed {
            Ok(c) => out.push(c),
            Err(reason) => stats.bad.note(line_no, reason),
        }
    }
    Ok((out, stats))
}

/// One data row, its fields at `index` (in the order of [`COLUMNS`]).
fn row(text: &str, fields: usize, index: &[usize]) -> std::result::Result<CsvConnection, String> {
    let values: Vec<&str> = text.split(',').collect();
    if values.len() != fields {
        return Err(format!("{} fields, the header has {fields}", values.len()));
    }
    let get = |i: usize| values[index[i]].trim();
    let num = |i: usize| get(i).parse::<u64>().map_err(|_| format!("{}: {:?} is not a number", COLUMNS[i], get(i)));
    let ip = |i: usize| get(i).parse::<IpAddr>().map_err(|_| format!("{}: {:?} is not an address", COLUMNS[i], get(i)));
    let time = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(get(i))
            .map(|t| t.timestamp_micros())
            .map_err(|e| format!("{}: {:?}: {e}", COLUMNS[i], get(i)))
    };
    let ip_proto = get(0).parse::<u8>().map_err(|_| format!("IPProto: {:?} is not a protocol number", get(0)))?;
    Ok(CsvConnection {
        ip_proto,
        src_ip: ip(1)?,
        dst_ip: ip(2)?,
        dst_port: get(3).parse::<u16>().map_err(|_| format!("DstPort: {:?} is not a port", get(3)))?,
        app: get(4).to_string(),
        package: get(5).to_string(),
        proto: get(6).to_string(),
        info: get(7).to_string(),
        bytes_sent: num(8)?,
        bytes_rcvd: num(9)?,
        pkts_sent: num(10)?,
        pkts_rcvd: num(11)?,
        first_us: time(12)?,
        last_us: time(13)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "IPProto,SrcIP,SrcPort,DstIp,DstPort,UID,App,PackageName,Proto,Status,Info,BytesSent,BytesRcvd,PktsSent,PktsRcvd,FirstSeen,LastSeen,Malicious";
    const ROW: &str = "6,10.215.173.1,38334,23.55.236.66,443,10376,CCleaner,com.piriform.ccleaner,HTTPS,Closed,sdk-api-v1.singular.net,1458,4629,10,10,2025-06-22T15:16:04.416-05:00,2025-06-22T15:16:04.660-05:00,";

    fn file(lines: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("export.csv");
        std::fs::write(&path, lines.join("\n")).expect("write");
        (dir, path)
    }

    #[test]
    fn rows_with_their_offsets_turned_to_utc() {
        let (_dir, path) = file(&[HEADER, ROW, ""]);
        let (rows, stats) = read(&path).expect("read");
        assert_eq!((rows.len(), stats.rows, stats.bad.count), (1, 1, 0));
        let c = &rows[0];
        assert_eq!(
            (c.app.as_str(), c.package.as_str(), c.info.as_str()),
            ("CCleaner", "com.piriform.ccleaner", "sdk-api-v1.singular.net")
        );
        assert_eq!((c.ip_proto, c.dst_port, c.bytes_sent, c.bytes_rcvd), (6, 443, 1458, 4629));
        let utc = chrono::DateTime::parse_from_rfc3339("2025-06-22T20:16:04.416Z").expect("t").timestamp_micros();
        assert_eq!((c.first_us, c.last_us - c.first_us), (utc, 244_000));
    }

    #[test]
    fn bad_rows_are_counted_by_line_and_other_files_refused() {
        let short = "6,10.215.173.1,38334";
        let bad_time = ROW.replace("2025-06-22T15:16:04.416-05:00", "yesterday");
        let (_dir, path) = file(&[HEADER, ROW, short, &bad_time, ROW]);
        let (rows, stats) = read(&path).expect("a partly bad file imports what is valid");
        assert_eq!((rows.len(), stats.rows, stats.bad.count), (2, 4, 2));
        assert_eq!(stats.bad.first[0], (3, "3 fields, the header has 18".to_string()));
        assert!(stats.bad.first[1].0 == 4 && stats.bad.first[1].1.contains("FirstSeen"), "{:?}", stats.bad.first);
        let long = "x".repeat(MAX_LINE_BYTES * 3);
        let (_dir, path) = file(&[HEADER, &long, ROW]);
        let (rows, stats) = read(&path).expect("read");
        assert_eq!((rows.len(), stats.bad.count), (1, 1), "a giant line is skipped, not held");
        assert!(stats.bad.first[0].1.contains("longer than"), "{:?}", stats.bad.first);
        let (_dir, other) = file(&["ts,uid,id.orig_h", "1,2,3"]);
        let err = read(&other).expect_err("not PCAPdroid's").to_string();
        assert!(err.contains("export.csv line 1") && err.contains("no column IPProto"), "{err}");
    }
}
