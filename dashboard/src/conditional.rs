//! What a cache and a slow link need of the public site: every answer is
//! the published aggregates of one refresh, so its validators are that
//! refresh's (`ETag`, `Last-Modified`, and `304 Not Modified` for a client
//! that has it already), and text goes gzipped to a client that takes it.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;

/// Answers smaller than this go as they are: gzip would save little.
pub const COMPRESS_FROM_BYTES: usize = 1024;

/// Most bytes of an answer read to gzip it; a larger one goes as it is.
/// (Answers are the published aggregates, held in memory already.)
pub const COMPRESS_UP_TO_BYTES: usize = 64 << 20;

/// The refresh a response was made from: its time and its number.
#[derive(Debug, Clone, Copy)]
pub struct Refresh {
    /// When its aggregates were computed (seconds since 1970).
    pub unix: i64,
    /// How many refreshes this process had published with it.
    pub generation: u64,
}

impl Refresh {
    fn etag(self) -> String {
        format!("W/\"{}-{}\"", self.unix, self.generation)
    }

    fn last_modified(self) -> Option<String> {
        let at = chrono::DateTime::from_timestamp(self.unix, 0)?;
        Some(at.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
    }

    /// Whether the client holds this refresh's answer already:
    /// `If-None-Match` names its tag (or `*`), or, without that header,
    /// `If-Modified-Since` is no earlier than the refresh.
    fn held_by(self, request: &HeaderMap) -> bool {
        let etag = self.etag();
        let bare = etag.trim_start_matches("W/");
        if let Some(tags) = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
            return tags.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == bare);
        }
        request
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
            .is_some_and(|since| since.timestamp() >= self.unix)
    }
}

/// `response` to a `method` request with `request` headers, made from
/// `refresh`: with its validators when it is a 200, a 304 instead when
/// the client holds it, and gzipped when the client takes gzip and it is
/// text of at least [`COMPRESS_FROM_BYTES`].
pub async fn finish(method: &Method, request: &HeaderMap, refresh: Refresh, response: Response) -> Response {
    if response.status() != StatusCode::OK || !(method == Method::GET || method == Method::HEAD) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    if let Ok(v) = HeaderValue::from_str(&refresh.etag()) {
        parts.headers.insert(header::ETAG, v);
    }
    if let Some(v) = refresh.last_modified().and_then(|v| HeaderValue::from_str(&v).ok()) {
        parts.headers.insert(header::LAST_MODIFIED, v);
    }
    if refresh.held_by(request) {
        parts.status = StatusCode::NOT_MODIFIED;
        for gone in [header::CONTENT_TYPE, header::CONTENT_LENGTH, header::CONTENT_DISPOSITION] {
            parts.headers.remove(gone);
        }
        return Response::from_parts(parts, Body::empty());
    }
    let textual = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| {
        t.starts_with("text/") || t.contains("json") || t.contains("xml") || t.starts_with("application/javascript")
    });
    if !textual || !accepts_gzip(request) || parts.headers.contains_key(header::CONTENT_ENCODING) {
        return Response::from_parts(parts, body);
    }
    parts.headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    let Ok(bytes) = axum::body::to_bytes(body, COMPRESS_UP_TO_BYTES).await else {
        // Over the bound (never, for published answers): no body is left
        // to send, so say so rather than send a truncated one.
        return Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from("the answer was too large to send\n"))
            .unwrap_or_default();
    };
    if bytes.len() < COMPRESS_FROM_BYTES {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::default());
    let zipped = std::io::Write::write_all(&mut gz, &bytes).and_then(|()| gz.finish());
    match zipped {
        Ok(zipped) => {
            parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(zipped))
        }
        Err(_) => Response::from_parts(parts, Body::from(bytes)),
    }
}

/// Whether `Accept-Encoding` takes gzip (not with `q=0`).
fn accepts_gzip(request: &HeaderMap) -> bool {
    request.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| p.replace(' ', "").trim_start_matches("q=").parse::<f32>() == Ok(0.0));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxies::tests::headers;

    #[test]
    fn a_client_holding_the_refresh_is_told_so() {
        let refresh = Refresh { unix: 1_790_000_000, generation: 3 };
        assert!(refresh.held_by(&headers(&[("if-none-match", "\"x\", W/\"1790000000-3\"")])));
        assert!(refresh.held_by(&headers(&[("if-none-match", "\"1790000000-3\"")])));
        assert!(!refresh.held_by(&headers(&[("if-none-match", "W/\"1790000000-2\"")])));
        let at = refresh.last_modified().expect("date");
        assert_eq!(at, "Mon, 21 Sep 2026 14:13:20 GMT");
        assert!(refresh.held_by(&headers(&[("if-modified-since", &at)])));
        assert!(!refresh.held_by(&headers(&[("if-modified-since", "Mon, 21 Sep 2026 14:13:19 GMT")])));
        // If-None-Match decides when both are sent.
        assert!(!refresh.held_by(&headers(&[("if-none-match", "\"old\""), ("if-modified-since", &at)])));
        assert!(!refresh.held_by(&headers(&[("if-modified-since", "garbage")])));
    }

    #[test]
    fn gzip_is_taken_unless_refused() {
        assert!(accepts_gzip(&headers(&[("accept-encoding", "br, gzip;q=0.8")])));
        assert!(accepts_gzip(&headers(&[("accept-encoding", "*")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "gzip;q=0")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "identity")])));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
