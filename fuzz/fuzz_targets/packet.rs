//! Link-layer decoding and the flow table on arbitrary frames: the first
//! byte picks the link type.
#![no_main]

use leakwatch_agent::capture::{CaptureStats, Frame, decode};
use leakwatch_agent::flow::FlowTable;
use libfuzzer_sys::fuzz_target;

const LINKTYPES: [i32; 8] = [0, 1, 101, 108, 113, 228, 229, 276];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let mut stats = CaptureStats::default();
    let mut table = FlowTable::new();
    // Feed the same bytes as several packets so the flow table's
    // reassembly paths see repeats.
    for (i, chunk) in rest.chunks(512).enumerate() {
        let frame = Frame { ts_us: Some(i as i64), linktype: LINKTYPES[usize::from(pick) % LINKTYPES.len()], data: chunk };
        if let Some(p) = decode(frame, 0, &mut stats) {
            table.add(&p);
        }
    }
    let _ = table.summaries();
    let _ = table.connections();
});
