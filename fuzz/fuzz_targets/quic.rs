//! QUIC Initial decryption and CRYPTO frame reassembly.
#![no_main]

use leakwatch_agent::parsers::quic::InitialState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Long header, version 1, an 8-byte DCID, then fuzz bytes: most inputs
    // then reach header protection and AEAD rather than stopping early.
    let mut datagram = vec![0xC0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    datagram.extend_from_slice(data);
    if let Some(mut state) = InitialState::new(&datagram) {
        let _ = state.feed(&datagram);
        let _ = state.feed(data);
    }
});
