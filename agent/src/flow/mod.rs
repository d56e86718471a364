//! Flow table: decoded packets in, one [`FlowSummary`] per destination out.
//! [`table`] builds connections, [`naming`] names their destinations,
//! [`sums`] sums them per destination.
//!
//! Packets are first grouped into connections (5-tuples, direction taken
//! from the TCP handshake or the first packet, flipped when only the sender
//! uses a well-known port). Each connection's initiator is the observed
//! device; its responder is the destination. Connections to the same
//! destination (address, port, transport) are then summed.
//!
//! Names come from, in order of preference: the TLS ClientHello's SNI
//! (reassembled across out-of-order TCP segments), the SNI of a QUIC
//! Initial's ClientHello (decrypted, CRYPTO frames reassembled across
//! packets), the HTTP Host header, and DNS answers seen earlier in the
//! capture (address → question name).

mod chunked;
mod community_id;
mod logged;
mod naming;
mod sums;
mod table;

pub use community_id::{community_id, community_id_seeded};
pub use logged::{LoggedConnection, LoggedTls};
pub use naming::{NameSource, is_encrypted_dns};
pub(crate) use sums::intervals;
pub use sums::{FlowSummary, FlowSums, MAX_DESTINATIONS};
pub use table::{
    Connection, DeviceHint, DhcpHandshake, DnsLookup, FlowTable, InitiatorCounts, LookupContext, MAX_CONNECTIONS,
    Origin,
};
