//! What an upstream response is, as far as the proxy's watches care: complete with its
//! header, a sized body, or a stream that may outlive the request's authorization.

use http::header;
use pingora::http::{RequestHeader, ResponseHeader};

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
