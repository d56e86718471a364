//! A classic pcap writer (little-endian, microsecond timestamps).

use std::io::{self, Write};

/// Writes frames into a classic pcap stream.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header for `linktype` (1 = Ethernet).
    pub fn new(mut out: W, linktype: u32) -> io::Result<Self> {
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&0i32.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        out.write_all(&262_144u32.to_le_bytes())?;
        out.write_all(&linktype.to_le_bytes())?;
        Ok(Self { out })
    }

    /// Writes one frame captured at `ts_us` (microseconds since the epoch).
    pub fn write_frame(&mut self, ts_us: i64, frame: &[u8]) -> io::Result<()> {
        let secs =
            u32::try_from(ts_us.div_euclid(1_000_000)).map_err(|_| io::Error::other("timestamp out of pcap range"))?;
        let micros = ts_us.rem_euclid(1_000_000) as u32;
        let len = u32::try_from(frame.len()).map_err(|_| io::Error::other("frame too large"))?;
        self.out.write_all(&secs.to_le_bytes())?;
        self.out.write_all(&micros.to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(frame)
    }

    /// Flushes and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}
