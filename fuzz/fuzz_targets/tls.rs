//! TLS ClientHello parsing, with and without the record layer.
#![no_main]

use leakwatch_agent::parsers::tls;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tls::parse_client_hello(data);
    let _ = tls::parse_handshake(data);
});
