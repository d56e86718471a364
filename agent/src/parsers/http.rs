//! Plain HTTP requests: the Host header, and nothing else (never the path).
//!
//! A request's header block may span several TCP segments: a Host is
//! taken only from a complete line, so a value cut at a segment's end is
//! never taken for the name ([`parse_request`] asks for more instead).

/// Methods that start an HTTP/1.x request.
const METHODS: [&[u8]; 9] =
    [b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];

/// Most bytes of a request's header block looked at: a Host not found in
/// complete lines within them is not taken.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What the start of a client's stream says about an HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Not an HTTP/1.x request.
    NotHttp,
    /// A request whose Host line, or the end of whose header block, has
    /// not arrived yet.
    NeedMore,
    /// A request: its Host as sent (without port), if it sent one that
    /// names a host (an address is no name); `None` too when the header
    /// block ends, or passes [`MAX_HEAD_BYTES`], without one.
    Head(Option<String>),
}

/// Reads the Host of an HTTP/1.x request that starts at the beginning of
/// `stream` (the client's bytes in order), from complete lines only.
pub fn parse_request(stream: &[u8]) -> Request {
    if !is_request(stream) {
        // The first bytes of a method may arrive alone.
        let prefix = !stream.is_empty() && METHODS.iter().any(|m| m.starts_with(stream));
        return if prefix { Request::NeedMore } else { Request::NotHttp };
    }
    match find_header(stream, b"host") {
        Header::Value(value) => Request::Head(host_of(&String::from_utf8_lossy(value))),
        Header::EndOfHead => Request::Head(None),
        Header::NotYet if stream.len() >= MAX_HEAD_BYTES => Request::Head(None),
        Header::NotYet => Request::NeedMore,
    }
}

/// What the complete lines of a message head say of one header.
enum Header<'a> {
    /// Its value, as sent.
    Value(&'a [u8]),
    /// The head ended (a blank line) without it.
    EndOfHead,
    /// Not among the complete lines so far.
    NotYet,
}

/// Header `name` (matched ignoring case) in the complete lines of the
/// message head at the start of `message`, within [`MAX_HEAD_BYTES`]: a
/// line cut at the end is never read.
fn find_header<'a>(message: &'a [u8], name: &[u8]) -> Header<'a> {
    let head = &message[..message.len().min(MAX_HEAD_BYTES)];
    // Lines that end in a line feed; what follows the last one is cut.
    let complete = head.iter().rposition(|&b| b == b'\n').map_or(&head[..0], |end| &head[..end]);
    for line in complete.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // The blank line after the last header.
            return Header::EndOfHead;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        if line[..colon].trim_ascii().eq_ignore_ascii_case(name) {
            return Header::Value(&line[colon + 1..]);
        }
    }
    Header::NotYet
}

/// Longest header value [`header`] returns, bytes.
const MAX_VALUE_BYTES: usize = 512;

/// The value of header `name` in the head of an HTTP/1.x message at the
/// start of `payload` (a request, a response, an SSDP `NOTIFY` or
/// `M-SEARCH`), from complete lines within [`MAX_HEAD_BYTES`]: trimmed,
/// control characters left out, at most 512 bytes; `None` when the head
/// has no such complete line.
pub fn header(payload: &[u8], name: &str) -> Option<String> {
    let Header::Value(value) = find_header(payload, name.as_bytes()) else { return None };
    let value: String = String::from_utf8_lossy(&value[..value.len().min(MAX_VALUE_BYTES)])
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    Some(value.trim().to_string()).filter(|v| !v.is_empty())
}

/// Whether `payload` starts like an HTTP/1.x request.
pub fn is_request(payload: &[u8]) -> bool {
    METHODS.iter().any(|m| payload.starts_with(m))
}

/// The host of a Host header's value: without port or brackets, not an
/// address (a DNS answer may still name that).
fn host_of(value: &str) -> Option<String> {
    let value = value.trim();
    let host = if let Some(rest) = value.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        value
            .rsplit_once(':')
            .map_or(value, |(h, port)| if port.chars().all(|c| c.is_ascii_digit()) { h } else { value })
    };
    let host = host.trim_end_matches('.').to_string();
    let is_address = host.parse::<std::net::IpAddr>().is_ok();
    (!host.is_empty() && !is_address).then_some(host)
}

/// The Host of an HTTP/1.x request whose header block is in `payload`
/// (see [`parse_request`]).
pub fn request_host(payload: &[u8]) -> Option<String> {
    match parse_request(payload) {
        Request::Head(host) => host,
        Request::NotHttp | Request::NeedMore => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_without_port_or_path() {
        let req = b"GET /secret/path?id=42 HTTP/1.1\r\nUser-Agent: x\r\nHost: WWW.Example.net:8080\r\n\r\n";
        assert_eq!(request_host(req).as_deref(), Some("WWW.Example.net"));
        assert_eq!(request_host(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(request_host(b"GET / HTTP/1.1\r\nHost: 149.202.95.241\r\n\r\n"), None);
        assert_eq!(request_host(b"GET / HTTP/1.1\nHost: [2001:db8::1]:80\n\n"), None);
        assert_eq!(request_host(b"GET / HTTP/1.0\nhost:bare.example\n\n").as_deref(), Some("bare.example"));
    }

    /// A Host line cut at a segment's end is not a name: the rest is
    /// asked for (the demo fleet's `connectivitycheck.gsta`).
    #[test]
    fn a_host_cut_at_a_segment_end_is_not_taken() {
        let whole = b"GET /generate_204 HTTP/1.1\r\nUser-Agent: Dalvik\r\nHost: connectivitycheck.gstatic.com\r\nConnection: Keep-Alive\r\n\r\n";
        let cut = whole.windows(4).position(|w| w == b"gsta").expect("gsta") + 4;
        for end in 0..whole.len() {
            let got = parse_request(&whole[..end]);
            let host_line_ends = whole[..end].windows(13).any(|w| w == b"gstatic.com\r\n");
            if host_line_ends {
                assert_eq!(got, Request::Head(Some("connectivitycheck.gstatic.com".into())), "{end}");
            } else if end > 0 {
                assert_eq!(got, Request::NeedMore, "{end}: {:?}", String::from_utf8_lossy(&whole[..end]));
            }
        }
        assert_eq!(request_host(&whole[..cut]), None);
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n"), Request::Head(None));
        assert_eq!(parse_request(b"\x16\x03\x01"), Request::NotHttp);
        assert_eq!(parse_request(b"GE"), Request::NeedMore);
    }

    #[test]
    fn a_header_block_past_the_bound_without_a_host_gives_up() {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        while req.len() < MAX_HEAD_BYTES + 100 {
            req.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(parse_request(&req), Request::Head(None));
    }
}

#[cfg(test)]
mod header_tests {
    use super::header;

    #[test]
    fn header_values_from_complete_lines_only() {
        let ssdp = b"NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nSERVER: Linux/2.6 UPnP/1.0 Belkin-WeMo/2.0\r\n\
                     USN: uuid:Insight-1_0::urn:Belkin:device:insight:1\r\n\r\n";
        assert_eq!(header(ssdp, "server").as_deref(), Some("Linux/2.6 UPnP/1.0 Belkin-WeMo/2.0"));
        assert_eq!(header(ssdp, "USN").as_deref(), Some("uuid:Insight-1_0::urn:Belkin:device:insight:1"));
        assert_eq!(header(ssdp, "User-Agent"), None);
        let cut = b"GET / HTTP/1.1\r\nUser-Agent: Dalvik/2.1.0 (Linux; U; Andr";
        assert_eq!(header(cut, "user-agent"), None, "a value cut at the segment's end");
        let body = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nUser-Agent: in the body\r\n";
        assert_eq!(header(body, "user-agent"), None, "not past the head");
        assert_eq!(header(b"GET / HTTP/1.1\r\nUser-Agent: a\x1bb\r\n", "user-agent").as_deref(), Some("ab"));
    }
}
