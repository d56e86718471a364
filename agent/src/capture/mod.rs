//! Capture sources: packets in, decoded [`Packet`]s out.
//!
//! [`read_capture_file`] reads classic pcap (either byte order, micro- or
//! nanosecond timestamps, the "modified" variant) and pcapng (several
//! interfaces with their own link types and timestamp resolutions) with the
//! `pcap-parser` crate; [`decode`] turns one frame into a [`Packet`] with
//! `etherparse`. Nothing here panics on bad input: a frame that cannot be
//! decoded is counted in [`CaptureStats::skipped`] under a reason, and a file
//! that breaks off stops the read with [`CaptureStats::stopped_by`] set.

mod decode;
mod file;

pub use decode::{Packet, Transport, decode};
pub use file::{CaptureStats, Frame, MAX_BLOCK_BYTES, TIME_BACK_US, read_capture_file};
