//! `leakwatch-agent check`: which of this home's devices do what a
//! published finding says their model does, worked out on this machine.
//!
//! The findings come from a dashboard's JSON API (`/api/findings`, one GET
//! of public data, nothing of the volunteer's in it) or from a file of it
//! downloaded before; the devices' contacts from the same readers as
//! `import` (a capture, a router's LAN capture, a DNS log), whose batches
//! are held here instead of sent. Nothing is sent anywhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use leakwatch_proto::v1::ReportBatch;
use serde::Deserialize;

use crate::{Error, Result};

/// Largest findings document read, bytes.
pub const MAX_FINDINGS_BYTES: usize = 64 << 20;
/// Time allowed for fetching it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The dashboard's `/api/findings` answer, the fields `check` reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Published {
    /// Where the dashboard is and the data's licence.
    #[serde(default)]
    pub site: Site,
    /// The findings.
    pub findings: Vec<Finding>,
}

/// Where the findings come from.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Site {
    /// The dashboard's address.
    #[serde(default)]
    pub base: String,
    /// The data licence.
    #[serde(default)]
    pub licence: Licence,
}

/// The data licence.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Licence {
    /// Its name.
    #[serde(default)]
    pub name: String,
}

/// One published finding.
#[derive(Debug, Clone, Deserialize)]
pub struct Finding {
    /// Its id (its page is `/findings/{id}`).
    pub id: String,
    /// Rule.
    pub rule: String,
    /// Vendor.
    pub vendor: String,
    /// Model; empty for a finding about all of a vendor's models.
    #[serde(default)]
    pub model: String,
    /// For a vendor-wide finding: its models.
    #[serde(default)]
    pub models: Vec<String>,
    /// Host name or registrable domain.
    pub domain: String,
    /// The claim.
    pub claim: String,
    /// Devices behind it.
    pub devices: u64,
    /// Devices of the model (or vendor) seen at all.
    pub population_devices: u64,
}

impl Published {
    /// Parses a findings document; `source` names it in the error.
    pub fn parse(bytes: &[u8], source: &str) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::InvalidArgument {
            field: "--findings".into(),
            reason: format!("{source}: not a findings document of a leakwatch dashboard (/api/findings): {e}"),
        })
    }

    /// Reads `source`: an http(s) address of a dashboard's findings, or a
    /// file of them.
    pub async fn load(source: &str) -> Result<Self> {
        let bytes = if source.starts_with("http://") || source.starts_with("https://") {
            tokio::time::timeout(FETCH_TIMEOUT, fetch(source)).await.map_err(|_| Error::InvalidArgument {
                field: "--findings".into(),
                reason: format!("{source}: no answer within {} s", FETCH_TIMEOUT.as_secs()),
            })??
        } else {
            let path = Path::new(source);
            let meta = std::fs::metadata(path).map_err(|e| Error::Io { path: path.into(), source: e })?;
            if meta.len() > MAX_FINDINGS_BYTES as u64 {
                return Err(too_large(source));
            }
            std::fs::read(path).map_err(|e| Error::Io { path: path.into(), source: e })?
        };
        Self::parse(&bytes, source)
    }

    /// The page of a finding.
    fn page(&self, id: &str) -> String {
        format!("{}/findings/{id}", self.site.base.trim_end_matches('/'))
    }
}

fn too_large(source: &str) -> Error {
    Error::InvalidArgument {
        field: "--findings".into(),
        reason: format!("{source}: larger than {} MiB, more than a dashboard publishes", MAX_FINDINGS_BYTES >> 20),
    }
}

fn fetch_error(url: &str, what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument { field: "--findings".into(), reason: format!("{url}: {what}") }
}

/// GETs `url` (HTTP/1.1 over TCP, TLS with the system's roots for https);
/// the body of a 200 answer, at most [`MAX_FINDINGS_BYTES`].
async fn fetch(url: &str) -> Result<Vec<u8>> {
    use http_body_util::BodyExt as _;
    let uri: hyper::Uri = url.parse().map_err(|e| fetch_error(url, e))?;
    let host = uri.host().ok_or_else(|| fetch_error(url, "no host"))?.to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp =
        tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await.map_err(|e| fetch_error(url, e))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, uri.authority().map_or(host.clone(), |a| a.to_string()))
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::USER_AGENT, concat!("leakwatch-agent/", env!("CARGO_PKG_VERSION"), " check"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| fetch_error(url, e))?;
    let response = if https {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let config =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| fetch_error(url, e))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|e| fetch_error(url, e))?;
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| fetch_error(url, e))?;
        send(url, hyper_util::rt::TokioIo::new(tls), request).await?
    } else {
        send(url, hyper_util::rt::TokioIo::new(tcp), request).await?
    };
    if response.status() != hyper::StatusCode::OK {
        return Err(fetch_error(url, format!("the dashboard answered {}", response.status())));
    }
    let limited = http_body_util::Limited::new(response.into_body(), MAX_FINDINGS_BYTES);
    match limited.collect().await {
        Ok(body) => Ok(body.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(url)),
        Err(e) => Err(fetch_error(url, e)),
    }
}

async fn send<T>(
    url: &str,
    io: T,
    request: hyper::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| fetch_error(url, e))?;
    tokio::spawn(connection);
    sender.send_request(request).await.map_err(|e| fetch_error(url, e))
}

/// One device's contacts: each name with the earliest seconds after boot
/// it was contacted (NaN when the source knows no boot).
#[derive(Debug, Default)]
struct Device {
    vendor: String,
    model: String,
    /// How the volunteer knows it on their network (its MAC), for a
    /// router's capture; shown on their terminal only.
    local: Option<String>,
    contacts: BTreeMap<String, f64>,
}

/// The devices of what was read, by pseudonym.
#[derive(Debug, Default)]
pub struct Checker {
    devices: BTreeMap<String, Device>,
    records: u64,
}

/// A device's contact that a published finding names.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// The device as the volunteer labelled it ("Xiaomi Redmi 1S").
    pub device: String,
    /// What it contacted.
    pub contacted: String,
    /// Seconds after boot, when known.
    pub seconds_after_boot: Option<f64>,
    /// The finding's id.
    pub finding: String,
    /// The sentence for the volunteer.
    pub line: String,
}

/// Whether `name` is `domain` or under it.
fn under(name: &str, domain: &str) -> bool {
    name.eq_ignore_ascii_case(domain)
        || (name.len() > domain.len()
            && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
            && name[name.len() - domain.len()..].eq_ignore_ascii_case(domain))
}

impl Checker {
    /// Takes in the batches of one boot (or file) as `import` would send them.
    pub fn add(&mut self, batches: &[ReportBatch]) {
        for batch in batches {
            let Some(d) = &batch.device else { continue };
            let device = self.devices.entry(d.device_pseudonym.clone()).or_insert_with(|| Device {
                vendor: d.vendor.clone(),
                model: d.model.clone(),
                local: None,
                contacts: BTreeMap::new(),
            });
            for r in &batch.records {
                self.records += 1;
                let transport = leakwatch_proto::v1::Transport::try_from(r.transport).unwrap_or_default();
                // A contact no name was seen for, under the key the
                // dashboard names such a destination by.
                let name = match (r.domain.is_empty(), r.dst_ip.parse::<std::net::IpAddr>(), u16::try_from(r.dst_port))
                {
                    (false, _, _) => r.domain.to_ascii_lowercase(),
                    (true, Ok(ip), Ok(port)) if port > 0 && transport != leakwatch_proto::v1::Transport::Dns => {
                        leakwatch_core::address::unnamed_destination(transport.short_name(), ip, port)
                    }
                    _ => continue,
                };
                let s = if r.seconds_since_boot.is_finite() && r.seconds_since_boot >= 0.0 {
                    r.seconds_since_boot
                } else {
                    f64::NAN
                };
                let first = device.contacts.entry(name).or_insert(s);
                if s < *first || first.is_nan() {
                    *first = s;
                }
            }
        }
    }

    /// Names the device of `batches` as the volunteer's network knows it
    /// (a LAN device's MAC).
    pub fn describe(&mut self, batches: &[ReportBatch], local: String) {
        if let Some(d) = batches.iter().find_map(|b| b.device.as_ref()) {
            self.devices.entry(d.device_pseudonym.clone()).or_default().local = Some(local);
        }
    }

    /// Devices read.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Every contact of a device that a finding about its model (or its
    /// vendor's models) names; for a device without labels, findings about
    /// any model, said as such.
    pub fn matches(&self, published: &Published) -> Vec<Match> {
        let mut out = Vec::new();
        for device in self.devices.values() {
            let labelled = !device.vendor.is_empty();
            let mut name =
                if labelled { format!("{} {}", device.vendor, device.model) } else { "unlabelled device".into() };
            if let Some(local) = &device.local {
                name.push_str(&format!(" ({local})"));
            }
            for f in &published.findings {
                let about_it = !labelled
                    || (f.vendor.eq_ignore_ascii_case(&device.vendor)
                        && (f.model.is_empty() && (f.models.is_empty() || f.models.contains(&device.model))
                            || f.model == device.model));
                if !about_it {
                    continue;
                }
                // The device's earliest contact the finding names (an
                // unnamed destination by its key alone).
                let unnamed = f.domain.ends_with(" (unnamed)");
                let hit = device
                    .contacts
                    .iter()
                    .filter(
                        |(contacted, _)| if unnamed { **contacted == f.domain } else { under(contacted, &f.domain) },
                    )
                    .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0)));
                let Some((contacted, &s)) = hit else { continue };
                let when = if s.is_finite() { format!(" {s:.0} s after boot") } else { String::new() };
                let whose = if f.model.is_empty() {
                    format!("{} devices", f.vendor)
                } else {
                    format!("{} {} devices", f.vendor, f.model)
                };
                let mut line = format!("your {name} contacted {contacted}{when}; ");
                if labelled {
                    let _ = write!(line, "so do {} of {} {whose}", f.devices, f.population_devices);
                } else {
                    let _ =
                        write!(line, "a finding about {whose} ({} of {}) names it", f.devices, f.population_devices);
                }
                let _ = write!(line, ": {} See {}", f.claim, published.page(&f.id));
                out.push(Match {
                    device: name.clone(),
                    contacted: contacted.clone(),
                    seconds_after_boot: s.is_finite().then_some(s),
                    finding: f.id.clone(),
                    line,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakwatch_proto::v1::{DeviceInfo, FlowRecord};

    const FINDINGS: &str = r#"{"site": {"base": "https://leaks.example.org", "licence": {"name": "CC BY 4.0"}},
      "findings": [
        {"id": "a1", "rule": "consent_off_traffic", "vendor": "Xiaomi", "model": "Redmi 1S", "domain": "api.account.xiaomi.com",
         "claim": "Xiaomi Redmi 1S devices whose owners turned cloud_account off still contact api.account.xiaomi.com.",
         "devices": 40, "population_devices": 40, "extra": 1},
        {"id": "b2", "rule": "model_exclusive", "vendor": "Xiaomi", "model": "", "models": ["Mi 4"], "domain": "tracking.miui.com",
         "claim": "Only Xiaomi devices contact tracking.miui.com.", "devices": 19, "population_devices": 65},
        {"id": "c3", "rule": "boot_phone_home", "vendor": "Amazon", "model": "Echo Dot", "domain": "amazon.com",
         "claim": "Echo Dots contact amazon.com at boot.", "devices": 25, "population_devices": 25},
        {"id": "d4", "rule": "boot_phone_home", "vendor": "Gosund", "model": "SP111", "domain": "tcp/8886 (unnamed)",
         "claim": "Gosund SP111 devices contact tcp/8886 (unnamed) at boot.", "devices": 20, "population_devices": 20}
      ]}"#;

    fn batch(vendor: &str, model: &str, contacts: &[(&str, f64)]) -> ReportBatch {
        ReportBatch {
            device: Some(DeviceInfo {
                device_pseudonym: format!("{vendor}{model}"),
                vendor: vendor.into(),
                model: model.into(),
                ..Default::default()
            }),
            records: contacts
                .iter()
                .map(|(d, s)| FlowRecord { domain: (*d).into(), seconds_since_boot: *s, ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_device_matches_its_own_models_findings_by_name_or_subdomain() {
        let published = Published::parse(FINDINGS.as_bytes(), "test").expect("parse");
        let mut checker = Checker::default();
        checker.add(&[batch(
            "Xiaomi",
            "Redmi 1S",
            &[
                ("API.account.xiaomi.com", 9.0),
                ("api.account.xiaomi.com", 4.2),
                ("amazon.com", 1.0),
                ("tracking.miui.com", 2.0),
            ],
        )]);
        let m = checker.matches(&published);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(
            m[0].line,
            "your Xiaomi Redmi 1S contacted api.account.xiaomi.com 4 s after boot; so do 40 of 40 Xiaomi Redmi 1S devices: \
             Xiaomi Redmi 1S devices whose owners turned cloud_account off still contact api.account.xiaomi.com. \
             See https://leaks.example.org/findings/a1"
        );
        // A vendor-wide finding about its model; an unlabelled device is
        // told which model's finding names its contact.
        let mut checker = Checker::default();
        checker.add(&[
            batch("Xiaomi", "Mi 4", &[("a.tracking.miui.com", f64::NAN)]),
            batch("", "", &[("www.amazon.com", 3.0)]),
        ]);
        let lines: Vec<String> = checker.matches(&published).into_iter().map(|m| m.line).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("your unlabelled device contacted www.amazon.com 3 s after boot; a finding about Amazon Echo Dot devices (25 of 25) names it"), "{lines:?}");
        assert!(
            lines[1].starts_with("your Xiaomi Mi 4 contacted a.tracking.miui.com; so do 19 of 65 Xiaomi devices"),
            "{lines:?}"
        );
    }

    /// A contact no name was seen for matches a finding under the key the
    /// dashboard names it by; one on a common port is keyed by network.
    #[test]
    fn a_contact_without_a_name_matches_by_its_unnamed_key() {
        let published = Published::parse(FINDINGS.as_bytes(), "test").expect("parse");
        let record = |ip: &str, port: u32, s: f64| FlowRecord {
            dst_ip: ip.into(),
            dst_port: port,
            transport: leakwatch_proto::v1::Transport::Tcp as i32,
            seconds_since_boot: s,
            ..Default::default()
        };
        let mut plug = batch("Gosund", "SP111", &[]);
        plug.records = vec![record("52.58.1.2", 8886, 2.0), record("52.58.1.3", 443, 1.0)];
        let mut checker = Checker::default();
        checker.add(&[plug]);
        let m = checker.matches(&published);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].line.starts_with("your Gosund SP111 contacted tcp/8886 (unnamed) 2 s after boot; so do 20 of 20"),
            "{}",
            m[0].line
        );
    }

    #[test]
    fn a_findings_file_that_does_not_parse_is_refused_with_its_name() {
        for bad in ["", "{", "[]", "{\"findings\": [{\"id\": 1}]}", "<html>"] {
            let e = Published::parse(bad.as_bytes(), "saved.json").expect_err(bad);
            let text = e.to_string();
            assert!(text.contains("--findings") && text.contains("saved.json: not a findings document"), "{text}");
        }
        assert!(
            !under("evilxiaomi.com", "xiaomi.com")
                && under("a.xiaomi.com", "xiaomi.com")
                && under("Xiaomi.com", "xiaomi.com")
        );
    }
}
