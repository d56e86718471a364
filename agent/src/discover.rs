//! Device discovery for routers (`leakwatch-agent devices`): which devices a
//! capture, or a live interface, sees on the LAN, what each says about
//! itself (DHCP, mDNS, SSDP, HTTP User-Agent), and what it probably is.
//!
//! All of it stays on the volunteer's machine: the evidence names people's
//! devices ("Lucas-iPhone") and their MACs, and none of it is ever sent.
//! A suggestion is only shown; a device's labels are what the volunteer
//! writes into the labels file (`leakwatch-agent label`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::capture::{Packet, Transport};
use crate::flow::Origin;
use crate::lan::{LanDevice, LanDeviceKey, format_mac};
use crate::parsers::{dhcp, http, mdns};

/// Devices tracked at most; more are counted in
/// [`Discovery::untracked_devices`].
pub const MAX_DEVICES: usize = 4096;
/// Items kept per kind of evidence and device (a device announcing a
/// thousand names shows the first eight).
const MAX_ITEMS: usize = 8;
/// Local addresses kept per device.
const MAX_ADDRESSES: usize = 4;

/// TXT keys of DNS-SD services that name a model (Google Cast `md`,
/// AirPlay `model` and `am`, printers `ty`, `product`, `usb_MDL`, ...) or
/// a maker (`usb_MFG`, `mfg`, `manufacturer`).
const TXT_MODEL_KEYS: [&str; 7] = ["md", "model", "mdl", "am", "ty", "product", "usb_MDL"];
const TXT_VENDOR_KEYS: [&str; 4] = ["usb_MFG", "mfg", "manufacturer", "vendor"];

/// Makers of Wi-Fi modules and chips that other brands build into their
/// products: their OUI names the module, not the product's brand.
const MODULE_MAKERS: [&str; 12] = [
    "Espressif",
    "Tuya",
    "Realtek",
    "MediaTek",
    "Murata",
    "AzureWave",
    "Hon Hai",
    "Universal Global Scientific",
    "Texas Instruments",
    "Silicon Laboratories",
    "Broadcom",
    "Qualcomm",
];

/// What one LAN device said about itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceEvidence {
    /// MAC address (or local address on a link without MACs); shown
    /// locally, never sent.
    pub device: String,
    /// Its local addresses.
    pub addresses: Vec<IpAddr>,
    /// Packets it sent.
    pub packets: u64,
    /// DHCP option 12.
    pub dhcp_host_names: Vec<String>,
    /// DHCP option 60.
    pub dhcp_vendor_classes: Vec<String>,
    /// DHCP option 55, comma-separated option codes.
    pub dhcp_parameter_lists: Vec<String>,
    /// mDNS host names (without `.local`).
    pub mdns_hosts: Vec<String>,
    /// DNS-SD service instances, "instance (_service._proto)".
    pub mdns_services: Vec<String>,
    /// DNS-SD TXT entries that name a model or maker, "key=value".
    pub mdns_txt: Vec<String>,
    /// SSDP `SERVER` headers.
    pub ssdp_servers: Vec<String>,
    /// SSDP `USN` headers.
    pub ssdp_usns: Vec<String>,
    /// HTTP `User-Agent` headers (of requests and SSDP searches).
    pub user_agents: Vec<String>,
}

/// Adds `item` to `list` unless it is there or the list is full.
fn note(list: &mut Vec<String>, item: impl Into<String>) {
    let item = item.into();
    if list.len() < MAX_ITEMS && !list.contains(&item) {
        list.push(item);
    }
}

/// The devices of a capture and their evidence.
#[derive(Debug, Default)]
pub struct Discovery {
    devices: BTreeMap<LanDeviceKey, DeviceEvidence>,
    /// Devices not tracked because [`MAX_DEVICES`] were.
    pub untracked_devices: u64,
}

impl Discovery {
    /// Adds what one packet says about the LAN device that sent it.
    pub fn add(&mut self, p: &Packet<'_>) {
        let dhcp = (p.transport == Transport::Udp && p.src_port == 68 && p.dst_port == 67)
            .then(|| dhcp::parse_client(p.payload))
            .flatten();
        // A DHCP client names itself by its chaddr (its address may still
        // be 0.0.0.0); everything else by its source.
        let key = match &dhcp {
            Some(m) => Some(LanDeviceKey::Mac(m.mac)),
            None => LanDeviceKey::of(Origin { mac: p.src_mac, ip: p.src_ip }),
        };
        let Some(key) = key.filter(|k| !matches!(k, LanDeviceKey::Mac(mac) if mac[0] & 1 == 1)) else { return };
        if !self.devices.contains_key(&key) && self.devices.len() >= MAX_DEVICES {
            self.untracked_devices += 1;
            return;
        }
        let d =
            self.devices.entry(key).or_insert_with(|| DeviceEvidence { device: key.describe(), ..Default::default() });
        d.packets += 1;
        if !p.src_ip.is_unspecified() && !d.addresses.contains(&p.src_ip) && d.addresses.len() < MAX_ADDRESSES {
            d.addresses.push(p.src_ip);
        }
        if let Some(m) = dhcp {
            if let Some(h) = m.host_name {
                note(&mut d.dhcp_host_names, h);
            }
            if let Some(v) = m.vendor_class {
                note(&mut d.dhcp_vendor_classes, v);
            }
            if !m.parameter_list.is_empty() {
                let list: Vec<String> = m.parameter_list.iter().map(u8::to_string).collect();
                note(&mut d.dhcp_parameter_lists, list.join(","));
            }
            return;
        }
        match p.transport {
            Transport::Udp if p.src_port == 5353 => {
                let Some(a) = mdns::parse(p.payload) else { return };
                for h in a.hosts {
                    note(&mut d.mdns_hosts, h);
                }
                for (instance, service) in a.services {
                    note(&mut d.mdns_services, format!("{instance} ({service})"));
                }
                for (k, v) in a.txt {
                    if TXT_MODEL_KEYS.contains(&k.as_str()) || TXT_VENDOR_KEYS.contains(&k.as_str()) {
                        note(&mut d.mdns_txt, format!("{k}={v}"));
                    }
                }
            }
            Transport::Udp if p.src_port == 1900 || p.dst_port == 1900 => {
                if p.payload.starts_with(b"M-SEARCH ") {
                    if let Some(ua) = http::header(p.payload, "user-agent") {
                        note(&mut d.user_agents, ua);
                    }
                } else if p.payload.starts_with(b"NOTIFY ") || p.payload.starts_with(b"HTTP/1.") {
                    if let Some(server) = http::header(p.payload, "server") {
                        note(&mut d.ssdp_servers, server);
                    }
                    if let Some(usn) = http::header(p.payload, "usn") {
                        note(&mut d.ssdp_usns, usn);
                    }
                }
            }
            Transport::Tcp if http::is_request(p.payload) => {
                if let Some(ua) = http::header(p.payload, "user-agent") {
                    note(&mut d.user_agents, ua);
                }
            }
            _ => {}
        }
    }

    /// The devices seen, by MAC (then local address).
    pub fn devices(&self) -> impl Iterator<Item = (&LanDeviceKey, &DeviceEvidence)> {
        self.devices.iter()
    }
}

/// Reads every packet of the capture at `path` into `discovery`; fails,
/// like `import`, when the file is not a capture.
pub fn read_file(path: &std::path::Path, discovery: &mut Discovery) -> crate::Result<crate::capture::CaptureStats> {
    let mut last_ts = 0i64;
    let stats = crate::capture::read_capture_file(path, |frame, stats| {
        last_ts = frame.ts_us.unwrap_or(last_ts);
        if let Some(packet) = crate::capture::decode(frame, last_ts, stats) {
            discovery.add(&packet);
        }
    })?;
    if stats.frames == 0
        && let Some(reason) = &stats.stopped_by
    {
        return Err(crate::Error::NotACapture { path: path.to_path_buf(), reason: reason.clone() });
    }
    Ok(stats)
}

/// Listens on `capture` until `until`, adding every frame to `discovery`.
pub fn listen(
    capture: &mut crate::live::Capture,
    until: std::time::Instant,
    discovery: &mut Discovery,
) -> crate::Result<crate::capture::CaptureStats> {
    let mut stats = crate::capture::CaptureStats::default();
    let mut decode_stats = crate::capture::CaptureStats::default();
    while std::time::Instant::now() < until {
        capture.next_batch(&mut stats, &mut |frame| {
            decode_stats.frames += 1;
            let f = crate::capture::Frame { ts_us: Some(frame.ts_us), linktype: frame.linktype, data: frame.data };
            if let Some(packet) = crate::capture::decode(f, frame.ts_us, &mut decode_stats) {
                discovery.add(&packet);
            }
        })?;
    }
    stats.frames += decode_stats.frames;
    Ok(stats)
}

/// What a device probably is, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    /// Suggested vendor.
    pub vendor: Option<String>,
    /// Suggested model.
    pub model: Option<String>,
    /// The evidence behind them, one phrase each.
    pub because: Vec<String>,
}

/// A registry name without its company form and place: "D-Link
/// International" is "D-Link", "Xiaomi Communications Co Ltd" "Xiaomi".
pub fn short_vendor(registered: &str) -> String {
    const FORMS: [&str; 28] = [
        "inc",
        "inc.",
        "ltd",
        "ltd.",
        "co",
        "co.",
        "co.,ltd",
        "co.,ltd.",
        "corp",
        "corp.",
        "corporation",
        "limited",
        "llc",
        "gmbh",
        "ag",
        "bv",
        "b.v.",
        "oy",
        "sa",
        "s.a.",
        "ab",
        "plc",
        "international",
        "communications",
        "technology",
        "technologies",
        "electronics",
        "lighting",
    ];
    let head = registered.split([',', '(']).next().unwrap_or(registered);
    let mut words: Vec<&str> = head.split_whitespace().collect();
    while words.len() > 1 && words.last().is_some_and(|w| FORMS.contains(&w.to_ascii_lowercase().as_str())) {
        words.pop();
    }
    words.join(" ")
}

/// True for a MAC the device made up (locally administered): phones use a
/// random one per network, so its OUI names no maker.
pub fn is_random_mac(mac: [u8; 6]) -> bool {
    mac[0] & 0x02 != 0
}

/// The model an Android User-Agent names: the part after `Android <ver>;`
/// up to ` Build/` or `)`; `None` for none, or for Chrome's reduced `K`.
fn android_model(ua: &str) -> Option<String> {
    let inside = ua.split_once('(')?.1.split(')').next()?;
    let mut parts = inside.split(';').map(str::trim);
    parts.find(|p| p.starts_with("Android"))?;
    let model = parts.find(|p| !p.is_empty() && *p != "wv" && !(p.len() == 5 && p.as_bytes()[2] == b'-'))?;
    let model = model.split(" Build/").next()?.trim();
    (!model.is_empty() && model != "K").then(|| model.to_string())
}

/// The value of `[KEY=value]` in a User-Agent (Amazon's apps write the
/// device's maker and model so).
fn bracketed<'a>(ua: &'a str, key: &str) -> Option<&'a str> {
    let at = ua.find(&format!("[{key}="))? + key.len() + 2;
    ua[at..].split(']').next().filter(|v| !v.is_empty())
}

/// Makers' short names in User-Agents that differ from their brand.
fn brand(maker: &str) -> String {
    match maker {
        "LGE" | "lge" => "LG".into(),
        "samsung" => "Samsung".into(),
        m => m.to_string(),
    }
}

/// A service instance name without its trailing serial (`_1C7185`,
/// ` - 2476FF`), when what is left looks like a product (no owner's name,
/// no MAC).
fn product_of_instance(instance: &str) -> Option<String> {
    if instance.contains("’s ") || instance.contains("'s ") || instance.contains(':') {
        return None;
    }
    let trimmed = instance.trim_end_matches(|c: char| c.is_ascii_hexdigit());
    let trimmed = trimmed.trim_end_matches([' ', '-', '_']);
    // Only when a serial was there: an instance named by its owner stays.
    (trimmed.len() < instance.len() && trimmed.len() >= 3).then(|| trimmed.to_string())
}

/// A DHCP host name that is a model number (`DCS-930LB`): capitals, a
/// dash, digits.
fn model_like_host_name(name: &str) -> bool {
    let Some((letters, rest)) = name.split_once('-') else { return false };
    (2..=5).contains(&letters.len())
        && letters.bytes().all(|b| b.is_ascii_uppercase())
        && rest.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && rest.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Apple's device names in host names ("Lucas-iPhone").
const APPLE_DEVICES: [&str; 6] = ["iPhone", "iPad", "iMac", "MacBook", "AppleTV", "Apple-TV"];

/// What `d` probably is, from its evidence and its MAC's registered
/// maker (`oui`).
pub fn suggest(d: &DeviceEvidence, mac: Option<[u8; 6]>, oui: Option<&str>) -> Suggestion {
    let mut s = Suggestion::default();
    let because = |s: &mut Suggestion, why: String| {
        if !s.because.contains(&why) {
            s.because.push(why);
        }
    };
    let vendor = |s: &mut Suggestion, v: String, why: String| {
        if s.vendor.is_none() {
            s.vendor = Some(v);
            because(s, why);
        }
    };
    let model = |s: &mut Suggestion, m: String, why: String| {
        if s.model.is_none() {
            s.model = Some(m);
            because(s, why);
        }
    };
    for ua in &d.user_agents {
        if let Some(m) = bracketed(ua, "MANUFACTURER") {
            vendor(&mut s, brand(m), format!("User-Agent MANUFACTURER={m}"));
        }
        if let Some(m) = bracketed(ua, "MODEL") {
            model(&mut s, m.to_string(), format!("User-Agent MODEL={m}"));
        }
        if let Some(m) = android_model(ua) {
            model(&mut s, m.clone(), format!("Android User-Agent names {m}"));
        }
    }
    for entry in &d.mdns_txt {
        let Some((k, v)) = entry.split_once('=') else { continue };
        if TXT_VENDOR_KEYS.contains(&k) && !v.is_empty() {
            vendor(&mut s, v.to_string(), format!("mDNS TXT {entry}"));
        } else if TXT_MODEL_KEYS.contains(&k) && !v.is_empty() {
            model(&mut s, v.to_string(), format!("mDNS TXT {entry}"));
        }
    }
    for usn in &d.ssdp_usns {
        // uuid:...::urn:<maker domain>:device:<type>:<version>
        let Some(urn) = usn.split("::").nth(1) else { continue };
        let parts: Vec<&str> = urn.split(':').collect();
        if let ["urn", maker, "device", kind, ..] = parts[..]
            && !maker.starts_with("schemas-upnp-org")
        {
            let maker = maker.split(['.', '-']).next().unwrap_or(maker);
            vendor(&mut s, maker.to_string(), format!("SSDP USN {urn}"));
            model(&mut s, kind.to_string(), format!("SSDP USN {urn}"));
        }
    }
    for name in &d.dhcp_host_names {
        if let Some(apple) = APPLE_DEVICES.iter().find(|a| name.contains(*a)) {
            vendor(&mut s, "Apple".into(), format!("DHCP host name {name}"));
            model(&mut s, apple.replace('-', ""), format!("DHCP host name {name}"));
        } else if model_like_host_name(name) {
            model(&mut s, name.clone(), format!("DHCP host name {name}"));
        }
    }
    let oui_vendor = oui.map(short_vendor);
    for service in &d.mdns_services {
        let instance = service.rsplit_once(" (").map_or(service.as_str(), |(i, _)| i);
        if let Some(product) = product_of_instance(instance) {
            // "Philips hue" under Philips' OUI: vendor Philips, model "hue".
            let rest = oui_vendor.as_deref().and_then(|v| {
                product.strip_prefix(v).or_else(|| {
                    product.to_ascii_lowercase().starts_with(&v.to_ascii_lowercase()).then(|| &product[v.len()..])
                })
            });
            let m = rest.map(|r| r.trim_matches([' ', '-', '_'])).filter(|r| !r.is_empty()).unwrap_or(&product);
            model(&mut s, m.to_string(), format!("mDNS service {instance}"));
        }
    }
    match (mac, oui, &oui_vendor) {
        (Some(mac), _, _) if is_random_mac(mac) => {
            s.because.push("a randomised (private) MAC: no maker registered".into());
        }
        (_, Some(registered), Some(short)) => {
            let module = MODULE_MAKERS.iter().any(|m| registered.starts_with(m));
            let why = if module {
                format!("OUI {registered}: a maker of Wi-Fi modules, the product's brand may differ")
            } else {
                format!("OUI {registered}")
            };
            vendor(&mut s, short.clone(), why);
        }
        _ => {}
    }
    s
}

/// A device's line for `devices`: what it said, its labels-file entry and
/// the suggestion.
#[derive(Debug, Serialize)]
pub struct DeviceReport<'a> {
    /// The evidence.
    #[serde(flatten)]
    pub evidence: &'a DeviceEvidence,
    /// The maker its MAC's OUI registers.
    pub oui_vendor: Option<String>,
    /// Its entry in the labels file.
    pub labels: Option<&'a LanDevice>,
    /// What it probably is.
    pub suggestion: Suggestion,
}

impl DeviceReport<'_> {
    /// The best name to show for it: its DHCP host name, else its mDNS
    /// host name.
    pub fn name(&self) -> Option<&str> {
        self.evidence.dhcp_host_names.first().or(self.evidence.mdns_hosts.first()).map(String::as_str)
    }

    /// Text lines for a terminal.
    pub fn text(&self, key: &LanDeviceKey) -> String {
        let e = self.evidence;
        let mut out = format!(
            "{}  {}  {}  {}\n",
            e.device,
            e.addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            self.name().map_or_else(|| "(no name)".to_string(), |n| format!("{n:?}")),
            match self.labels {
                Some(l) => format!("labelled: {} {}", l.vendor, l.model),
                None => "not labelled".to_string(),
            }
        );
        let mut line = |what: &str, items: Vec<String>| {
            if !items.is_empty() {
                out.push_str(&format!("  {what:<11} {}\n", items.join("; ")));
            }
        };
        line("OUI:", self.oui_vendor.iter().cloned().collect());
        let mut dhcp = Vec::new();
        dhcp.extend(e.dhcp_host_names.iter().map(|h| format!("host name {h}")));
        dhcp.extend(e.dhcp_vendor_classes.iter().map(|v| format!("vendor class {v}")));
        dhcp.extend(e.dhcp_parameter_lists.iter().map(|p| format!("asks for {p}")));
        line("DHCP:", dhcp);
        let mut mdns = Vec::new();
        mdns.extend(e.mdns_hosts.iter().map(|h| format!("host {h}")));
        mdns.extend(e.mdns_services.iter().map(|s| format!("service {s}")));
        mdns.extend(e.mdns_txt.iter().map(|t| format!("TXT {t}")));
        line("mDNS:", mdns);
        let mut ssdp = Vec::new();
        ssdp.extend(e.ssdp_servers.iter().map(|s| format!("SERVER {s}")));
        ssdp.extend(e.ssdp_usns.iter().map(|u| format!("USN {u}")));
        line("SSDP:", ssdp);
        line("User-Agent:", e.user_agents.clone());
        let s = &self.suggestion;
        if s.vendor.is_some() || s.model.is_some() {
            line(
                "suggested:",
                vec![format!(
                    "vendor {}, model {} ({})",
                    s.vendor.as_deref().unwrap_or("?"),
                    s.model.as_deref().unwrap_or("?"),
                    s.because.join("; ")
                )],
            );
        } else if !s.because.is_empty() {
            line("suggested:", vec![format!("nothing ({})", s.because.join("; "))]);
        }
        if self.labels.is_none()
            && let LanDeviceKey::Mac(mac) = key
        {
            let q = |v: &Option<String>| shell_word(v.as_deref().unwrap_or("..."));
            line(
                "label it:",
                vec![format!(
                    "leakwatch-agent label {} --vendor {} --model {}",
                    format_mac(*mac),
                    q(&s.vendor),
                    q(&s.model)
                )],
            );
        }
        out
    }
}

/// `word` quoted for a POSIX shell when it needs to be.
fn shell_word(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence() -> DeviceEvidence {
        DeviceEvidence::default()
    }

    #[test]
    fn registered_names_lose_their_company_form() {
        assert_eq!(short_vendor("D-Link International"), "D-Link");
        assert_eq!(short_vendor("Xiaomi Communications Co Ltd"), "Xiaomi");
        assert_eq!(short_vendor("Edimax Technology Co. Ltd."), "Edimax");
        assert_eq!(short_vendor("Apple, Inc."), "Apple");
        assert_eq!(short_vendor("Philips Lighting BV"), "Philips");
        assert_eq!(short_vendor("Belkin International Inc."), "Belkin");
        assert_eq!(short_vendor("LG Electronics (Mobile Communications)"), "LG");
    }

    #[test]
    fn phones_by_user_agent_and_host_name() {
        let mut lg = evidence();
        lg.user_agents.push(
            "Mozilla/5.0 (Linux; Android 5.1.1; LGLS751 Build/LMY47V; wv) PitanguiBridge/1.16.4.5-\
             [MANUFACTURER=LGE][RELEASE=5.1.1][BRAND=lge][SDK=22][MODEL=LGLS751]"
                .into(),
        );
        let s = suggest(&lg, Some([0x78, 0xf8, 0x82, 1, 2, 3]), Some("LG Electronics (Mobile Communications)"));
        assert_eq!((s.vendor.as_deref(), s.model.as_deref()), (Some("LG"), Some("LGLS751")));
        let mut nokia = evidence();
        nokia.user_agents.push("Mozilla/5.0 (Linux; Android 9; Nokia 2.2) AppleWebKit/537.36".into());
        let s = suggest(&nokia, Some([0x4c, 0x6a, 0xf6, 1, 2, 3]), Some("HMD Global Oy"));
        assert_eq!((s.vendor.as_deref(), s.model.as_deref()), (Some("HMD Global"), Some("Nokia 2.2")));
        let mut iphone = evidence();
        iphone.dhcp_host_names.push("Lucas-iPhone".into());
        let s = suggest(&iphone, Some([0xc4, 0x61, 0x8b, 1, 2, 3]), Some("Apple, Inc."));
        assert_eq!((s.vendor.as_deref(), s.model.as_deref()), (Some("Apple"), Some("iPhone")));
        let s = suggest(&evidence(), Some([0xc6, 0x2c, 3, 1, 2, 3]), None);
        assert!(s.vendor.is_none() && s.because[0].contains("randomised"), "{s:?}");
    }

    #[test]
    fn iot_devices_by_their_announcements() {
        let mut cam = evidence();
        cam.dhcp_host_names.push("DCS-930LB".into());
        cam.mdns_services.push("DCS-930LB_1C7185 (_http._tcp)".into());
        let s = suggest(&cam, Some([0xb0, 0xc5, 0x54, 1, 2, 3]), Some("D-Link International"));
        assert_eq!((s.vendor.as_deref(), s.model.as_deref()), (Some("D-Link"), Some("DCS-930LB")));
        let mut hue = evidence();
        hue.mdns_services.push("Philips hue - 2476FF (_hap._tcp)".into());
        let s = suggest(&hue, Some([0x00, 0x17, 0x88, 1, 2, 3]), Some("Philips Lighting BV"));
        assert_eq!((s.vendor.as_deref(), s.model.as_deref()), (Some("Philips"), Some("hue")));
        let mut wemo = evidence();
        wemo.ssdp_usns.push("uuid:Insight-1_0-231450K1200B7F::urn:Belkin:device:insight:1".into());
        let s = suggest(&wemo, Some([0x94, 0x10, 0x3e, 1, 2, 3]), Some("Belkin International Inc."));
        assert_eq!((s.vendor.as_deref(), s.model.as_deref()), (Some("Belkin"), Some("insight")));
        let esp = suggest(&evidence(), Some([0x5c, 0xcf, 0x7f, 1, 2, 3]), Some("Espressif Inc."));
        assert_eq!(esp.vendor.as_deref(), Some("Espressif"));
        assert!(esp.because[0].contains("Wi-Fi modules"), "{esp:?}");
        // An owner's name for the device is no product.
        assert_eq!(product_of_instance("Luca’s iMac"), None);
        assert_eq!(product_of_instance("localcam"), None);
    }
}
