//! What an upstream response is, as far as the proxy's watches care: complete with its
//! header, a sized body, or a stream that may outlive the request's authorization; and the
//! response headers the proxy sets on it.

use http::header::{
    self, HeaderName, HeaderValue, STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

/// Pomerium's default security headers, set on every proxied response (HSTS over TLS only).
static DEFAULT_HEADERS: [(HeaderName, HeaderValue); 3] = [
    (
        STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains; preload"),
    ),
    (X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN")),
    (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
];

/// Sets the response headers of a proxied response: the defaults ([`DEFAULT_HEADERS`]), then
/// the route's `set_response_headers`, which win over them. Either replaces what the upstream
/// sent under the same name, as Pomerium (Envoy's `response_headers_to_add`, not appended)
/// does. A route header set to the empty value removes that header from the response.
pub fn set_headers(
    resp: &mut ResponseHeader,
    route_headers: &[(HeaderName, HeaderValue)],
    tls: bool,
) -> Result<()> {
    let defaults = if tls {
        &DEFAULT_HEADERS[..]
    } else {
        &DEFAULT_HEADERS[1..]
    };
    for (name, value) in defaults {
        if !route_headers.iter().any(|(n, _)| n == name) {
            resp.insert_header(name.clone(), value.clone())?;
        }
    }
    for (name, value) in route_headers {
        if value.is_empty() {
            resp.remove_header(name);
        } else {
            resp.insert_header(name.clone(), value.clone())?;
        }
    }
    Ok(())
}

/// What an upstream response's header says of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// None: the response is complete with its header.
    Empty,
    /// A `Content-Length` body.
    Sized,
    /// A protocol switch (websocket) or a body of unknown length (server-sent events, chunked
    /// streams): it may outlive the request's authorization and its `timeout`.
    Stream,
}

/// The body of `resp`, the answer to `req`; `None` for an interim (1xx) response.
pub fn body_kind(req: &RequestHeader, resp: &ResponseHeader) -> Option<BodyKind> {
    Some(match resp.status.as_u16() {
        101 => BodyKind::Stream,
        100..=199 => return None,
        204 | 304 => BodyKind::Empty,
        _ if req.method == http::Method::HEAD => BodyKind::Empty,
        _ => match resp.headers.get(header::CONTENT_LENGTH) {
            Some(v) if v.as_bytes() == b"0" => BodyKind::Empty,
            Some(_) => BodyKind::Sized,
            None => BodyKind::Stream,
        },
    })
}
