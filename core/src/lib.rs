//! What the agent, the collector and the query layer must agree on, in a
//! crate that pulls none of them in: the privacy rule for destination
//! addresses ([`address`]) and the path conventions ([`paths`]).

pub mod address;
pub mod paths;
