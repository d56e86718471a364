//! Anonymiser: flow summaries in, [`FlowRecord`]s that may leave the machine
//! out. Every privacy rule of the design is enforced here, each where it is
//! coded:
//!
//! 1. Only destination metadata is carried over: no payload, URL or path,
//!    source address or port, or MAC ([`FlowSummary`] has no source fields,
//!    and [`FlowRecord`] has none either).
//! 2. Destinations in private, loopback, link-local, multicast, ULA,
//!    unspecified, broadcast and carrier-grade NAT ranges are dropped
//!    ([`is_non_public`]).
//! 3. Hostname labels that look like embedded identifiers are replaced by
//!    `*` ([`scrub_domain`]).
//! 4. Wall-clock time is coarsened to the minute; `seconds_since_boot` stays
//!    exact ([`anonymise`]).
//!    DNS lookups of local names (single-label, `.local`, home-network
//!    suffixes, reverse lookups of private ranges) are dropped, and a LAN
//!    resolver's address is left out ([`anonymise_lookup`]).
//! 5. Device and boot pseudonyms are keyed hashes with a secret that never
//!    leaves the agent ([`crate::state::AgentState::pseudonym`]); nothing
//!    here sees a hardware id.

mod rules;

pub use rules::{
    AnonymiserStats, anonymise, anonymise_lookup, is_local_name, is_non_public, is_reverse_lookup,
    looks_like_identifier, scrub_domain,
};
