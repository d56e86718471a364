//! The leakwatch wire protocol, package `leakwatch.v1`.
//!
//! In: `leakwatch/v1/collector.proto`, compiled at build time with protox.
//! Out: prost message types, the tonic `Collector` client and server, and
//! [`FILE_DESCRIPTOR_SET`] for gRPC reflection.
//!
//! Messages are decoded with [`codec::StrictCodec`], which answers a message
//! that does not decode (truncated, wrong wire type, invalid UTF-8 in a
//! string field) with `InvalidArgument` naming the field, where plain prost
//! decoding would answer `Internal`.

pub mod codec;
pub mod labels;

/// A value that breaks one of the protocol's rules (see [`codec`] and
/// [`labels`]); the message names the field, the value and the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

impl From<Invalid> for String {
    fn from(e: Invalid) -> Self {
        e.0
    }
}

/// Generated code for `leakwatch.v1`.
#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("leakwatch.v1");
}

/// Encoded `FileDescriptorSet` of `leakwatch.v1`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/leakwatch_descriptor.bin"));

/// Name of the gRPC service, as health checks and reflection know it.
pub const COLLECTOR_SERVICE_NAME: &str = "leakwatch.v1.Collector";

/// Name of the operator service.
pub const ADMIN_SERVICE_NAME: &str = "leakwatch.v1.Admin";

impl v1::Transport {
    /// Short lower-case name used in JSON and SQL ("tcp", "udp").
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Dns => "dns",
        }
    }
}

impl v1::DomainSource {
    /// Short lower-case name used in JSON and SQL ("dns", "sni", ...).
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::None => "none",
            Self::Dns => "dns",
            Self::Sni => "sni",
            Self::Quic => "quic",
            Self::Http => "http",
            Self::Socks => "socks",
            Self::Cert => "cert",
        }
    }
}

impl v1::RecordSource {
    /// Short lower-case name used in JSON and SQL ("capture", "live", ...).
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Capture => "capture",
            Self::Live => "live",
            Self::Pihole => "pihole",
            Self::IosPrivacy => "ios_privacy",
            Self::PcapdroidCsv => "pcapdroid_csv",
            Self::Zeek => "zeek",
        }
    }

    /// Whether its records know the time since the device booted: not a
    /// DNS server's log (Pi-hole) nor the iOS report, which see no boot.
    pub fn knows_boot(self) -> bool {
        !matches!(self, Self::Pihole | Self::IosPrivacy)
    }

    /// Whether its records know the bytes (out and in) and the packets in:
    /// not a DNS server's log nor the iOS report, which count queries and
    /// contacts only.
    pub fn knows_bytes(self) -> bool {
        !matches!(self, Self::Pihole | Self::IosPrivacy)
    }

    /// Whether its records know connections and the gaps between them: not
    /// a DNS server's log nor the iOS report, which see no connection.
    pub fn knows_connections(self) -> bool {
        !matches!(self, Self::Pihole | Self::IosPrivacy)
    }

    /// Whether its records know whether the DNS server blocked a lookup:
    /// only a DNS server's own log (Pi-hole).
    pub fn knows_blocking(self) -> bool {
        matches!(self, Self::Pihole)
    }

    /// Whether its records say who started a contact and whether a website
    /// made it: only the iOS report.
    pub fn knows_initiator(self) -> bool {
        matches!(self, Self::IosPrivacy)
    }

    /// Whether its records know the destination port: not the iOS report,
    /// which names the domain only.
    pub fn knows_port(self) -> bool {
        !matches!(self, Self::IosPrivacy)
    }
}

impl v1::Initiator {
    /// Short lower-case name used in SQL ("app", "user"; "" unspecified).
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unspecified => "",
            Self::App => "app",
            Self::User => "user",
        }
    }
}

impl v1::BootSource {
    /// Short lower-case name used in JSON and SQL ("explicit", ...).
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Explicit => "explicit",
            Self::FirstPacket => "first_packet",
            Self::Dhcp => "dhcp",
        }
    }
}
