//! A model's Manufacturer Usage Description (RFC 8520) as the fleet
//! observed it: one from-device access control entry per published host
//! name, protocol and port (`ietf-acldns:dst-dnsname`), and per unnamed
//! network (`destination-ipv4-network`), with the vendor and model as
//! `mfg-name` and `model-name`. A MUD manager can load it as the policy
//! the devices actually need; a reader can set it beside the vendor's own.
//!
//! Only groups of devices that pass the thresholds are in it: the host
//! names, protocols and ports come from the model's published aggregates.

use serde_json::{Value, json};

use crate::aggregate::{ModelPage, Snapshot};
use crate::lists::is_listable;
use crate::pages::model_href;

/// Hours a MUD manager may cache the file (the dashboard refreshes far
/// more often; a day keeps managers from fetching it at every boot).
const CACHE_HOURS: u8 = 24;

/// The IP protocol number of a flow's transport, for those a MUD file
/// can match on.
fn protocol(transport: &str) -> Option<(u8, &'static str)> {
    match transport {
        "tcp" => Some((6, "tcp")),
        "udp" | "quic" => Some((17, "udp")),
        _ => None,
    }
}

/// The address of a model's MUD file.
pub fn mud_href(vendor: &str, model: &str) -> String {
    format!("/mud/{}/{}.json", crate::pages::enc(vendor), crate::pages::enc(model))
}

/// The MUD file of `page`'s model.
pub fn render(s: &Snapshot, page: &ModelPage) -> Value {
    let m = &page.summary;
    let name = |family: &str| format!("leakwatch-{family}-from-device");
    let mut aces = [Vec::new(), Vec::new()];
    for p in &page.ports {
        let Some((number, transport)) = protocol(&p.transport) else { continue };
        let mut ports = json!({ "destination-port": { "operator": "eq", "port": p.port } });
        if transport == "tcp" {
            ports["ietf-mud:direction-initiated"] = json!("from-device");
        }
        let mut add = |family: usize, ip: Value| {
            let n = aces[family].len();
            aces[family].push(json!({
                "name": format!("{}-{n}", if family == 0 { "v4" } else { "v6" }),
                "matches": { if family == 0 { "ipv4" } else { "ipv6" }: ip, transport: ports.clone() },
                "actions": { "forwarding": "accept" },
            }));
        };
        if let Some(net) = p.domain.strip_suffix(" (unnamed)") {
            // A network no name was seen for; a port alone names nothing.
            if let Some((addr, _)) = net.split_once('/') {
                if addr.parse::<std::net::Ipv4Addr>().is_ok() {
                    add(0, json!({ "protocol": number, "destination-ipv4-network": net }));
                } else if addr.parse::<std::net::Ipv6Addr>().is_ok() {
                    add(1, json!({ "protocol": number, "destination-ipv6-network": net }));
                }
            }
        } else if is_listable(&p.domain) {
            for family in 0..2 {
                add(family, json!({ "protocol": number, "ietf-acldns:dst-dnsname": p.domain.to_ascii_lowercase() }));
            }
        }
    }
    let families = [("ipv4", "ipv4-acl-type"), ("ipv6", "ipv6-acl-type")];
    let acls: Vec<Value> = families
        .iter()
        .zip(aces)
        .filter(|(_, aces)| !aces.is_empty())
        .map(|((family, kind), aces)| json!({ "name": name(family), "type": kind, "aces": { "ace": aces } }))
        .collect();
    let policy: Vec<Value> = acls.iter().map(|a| json!({ "name": a["name"] })).collect();
    let mut mud = json!({
        "mud-version": 1,
        "mud-url": format!("{}{}", s.site.base, mud_href(&m.vendor, &m.model)),
        "last-update": s.refreshed_rfc3339(),
        "cache-validity": CACHE_HOURS,
        "is-supported": true,
        "systeminfo": format!(
            "What {} devices of {} volunteers were seen to contact; leakwatch, data licence {}",
            m.devices, m.volunteers, s.site.licence.name
        ),
        "mfg-name": m.vendor,
        "model-name": m.model,
        "documentation": format!("{}{}", s.site.base, model_href(&m.vendor, &m.model)),
    });
    if !policy.is_empty() {
        mud["from-device-policy"] = json!({ "access-lists": { "access-list": policy } });
    }
    let mut file = json!({ "ietf-mud:mud": mud });
    if !acls.is_empty() {
        file["ietf-access-control-list:acls"] = json!({ "acl": acls });
    }
    file
}
