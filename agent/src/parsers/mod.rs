//! Protocol parsers: bytes of one message in, the destination names they
//! reveal out. Each parser takes untrusted bytes and returns `None` rather
//! than panicking when they do not parse.

pub mod cert;
pub mod dhcp;
pub mod dns;
pub mod http;
pub mod mdns;
pub mod quic;
pub mod socks;
pub mod tls;
