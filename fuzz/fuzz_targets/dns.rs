//! DNS message parsing.
#![no_main]

use leakwatch_agent::parsers::dns;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dns::parse_response(data);
    let _ = dns::parse_query(data);
});
