//! Fleet simulator: a TOML profile in, realistic per-boot pcap captures and
//! a manifest of device labels out.
//!
//! Each capture is one boot of one device on a home LAN: a DHCP handshake
//! at boot, DNS queries and answers through the router, TLS ClientHellos
//! with SNI (sometimes split across TCP segments), plain HTTP, NTP, payload
//! of plausible sizes each way, and LAN noise (SSDP, mDNS) that the
//! anonymiser must drop. [`DEFAULT_PROFILE`] plants the seed case and
//! decoys; see its comments.

mod fleet;
mod pcap;
mod profile;

pub use fleet::{FleetManifest, ManifestEntry, simulate_fleet, write_lan_capture};
pub use pcap::PcapWriter;
pub use profile::{Contact, Destination, DestinationKind, FleetProfile, ModelProfile};

/// The built-in fleet profile (TOML).
pub const DEFAULT_PROFILE: &str = include_str!("default_profile.toml");
