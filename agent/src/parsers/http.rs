//! Plain HTTP requests: the Host header, and nothing else (never the path).

/// Returns the host as sent (without port) of an HTTP/1.x request that
/// starts at the beginning of `payload`.
pub fn request_host(payload: &[u8]) -> Option<String> {
    const METHODS: [&[u8]; 9] =
        [b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];
    if !METHODS.iter().any(|m| payload.starts_with(m)) {
        return None;
    }
    let head = &payload[..payload.len().min(8192)];
    let text = String::from_utf8_lossy(head);
    for line in text.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else { continue };
        if name.trim().eq_ignore_ascii_case("host") {
            let value = value.trim();
            let host = if let Some(rest) = value.strip_prefix('[') {
                rest.split(']').next().unwrap_or_default()
            } else {
                value
                    .rsplit_once(':')
                    .map_or(value, |(h, port)| if port.chars().all(|c| c.is_ascii_digit()) { h } else { value })
            };
            let host = host.trim_end_matches('.').to_string();
            // An address is not a name; a DNS answer may still name it.
            let is_address = host.parse::<std::net::IpAddr>().is_ok();
            return (!host.is_empty() && !is_address).then_some(host);
        }
    }
    None
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
    }
}
