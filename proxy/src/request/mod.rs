//! Request validation, the first stage: what a request must be before any route or policy
//! sees it. One `Host` (matching the request target), no framing that servers could read
//! differently (request smuggling), and a normalized path ([`path`]).

pub mod path;

use std::borrow::Cow;
use std::net::IpAddr;

use http::header;
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use crate::respond::{Malformed, Refusal};

/// What validation learned of a request, for the later stages and the logs.
#[derive(Debug, Clone, Default)]
pub struct Validated {
    /// Lowercase host, no port.
    pub host: String,
    /// Host header as sent (`host[:port]`).
    pub authority: String,
    pub port: u16,
    /// The path as the client sent it, for the access log.
    pub path: String,
    pub client_ip: Option<IpAddr>,
    /// Answer in JSON, not HTML.
    pub json: bool,
}

/// Validates the request of `session` into `request`, and writes its normalized path back
/// into it. What was learned before a refusal stays in `request` (for the answer and logs).
pub fn validate(session: &mut Session, tls: bool, request: &mut Validated) -> Result<(), Refusal> {
    let req = session.req_header();
    request.client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    request.json = wants_json(req);
    request.path = req.uri.path().to_string();
    reject_smuggling(req)?;
    if req.headers.contains_key(header::TRANSFER_ENCODING)
        && session
            .as_http1()
            .is_some_and(|h1| raw_has_content_length(&h1.get_headers_raw_bytes()))
    {
        return Err(Refusal::BadRequest(
            Malformed::ContentLengthAndTransferEncoding,
        ));
    }
    let (host, port, authority) = request_host(req, tls)?;
    request.host = host;
    request.port = port;
    request.authority = authority;

    // Most paths are already normal (borrowed, no allocation); only a changed one is
    // written back, so that from here on the request's own path is the normalized one.
    if let Cow::Owned(normalized) =
        path::normalize(req.uri.path()).map_err(|e| Refusal::BadRequest(Malformed::Path(e)))?
    {
        let pq = match req.uri.query() {
            Some(q) => format!("{normalized}?{q}"),
            None => normalized,
        };
        let uri =
            http::Uri::try_from(pq).map_err(|_| Refusal::BadRequest(Malformed::InvalidTarget))?;
        session.req_header_mut().set_uri(uri);
    }
    Ok(())
}

pub fn wants_json(req: &RequestHeader) -> bool {
    req.headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

/// The request asks to switch protocols (a websocket).
pub fn is_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key(header::UPGRADE)
}

/// Refuses requests that different servers could read differently.
fn reject_smuggling(req: &RequestHeader) -> Result<(), Refusal> {
    let te = req
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .count();
    let cl = req.headers.get_all(header::CONTENT_LENGTH).iter().count();
    if te > 0 && cl > 0 {
        return Err(Refusal::BadRequest(
            Malformed::ContentLengthAndTransferEncoding,
        ));
    }
    if cl > 1 {
        return Err(Refusal::BadRequest(Malformed::SeveralContentLengths));
    }
    if te > 0 {
        let chunked_only = req
            .headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .all(|v| {
                v.to_str()
                    .is_ok_and(|s| s.trim().eq_ignore_ascii_case("chunked"))
            });
        if !chunked_only || te > 1 {
            return Err(Refusal::BadRequest(Malformed::UnsupportedTransferEncoding));
        }
    }
    Ok(())
}

/// Whether raw HTTP/1 request headers have a `Content-Length` line. Pingora drops
/// `Content-Length` when `Transfer-Encoding` is also sent (RFC 9112 §6.3), so only the raw
/// header shows that a client sent both; such a request is refused, not repaired.
fn raw_has_content_length(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length:";
    raw.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME))
}

/// The request's host (lowercase, no port, no trailing dot), port and authority.
fn request_host(req: &RequestHeader, tls: bool) -> Result<(String, u16, String), Refusal> {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::BadRequest(Malformed::SeveralHosts));
    }
    let host_header = host_header
        .map(|v| {
            v.to_str()
                .map_err(|_| Refusal::BadRequest(Malformed::InvalidHost))
        })
        .transpose()?;
    let authority = match (req.uri.authority().map(|a| a.as_str()), host_header) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
            return Err(Refusal::BadRequest(Malformed::HostMismatch))
        }
        (Some(a), _) => a,
        (None, Some(h)) => h,
        (None, None) => return Err(Refusal::BadRequest(Malformed::MissingHost)),
    };
    if authority.is_empty()
        || !authority.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
        })
    {
        return Err(Refusal::BadRequest(Malformed::InvalidHost));
    }
    let (host, port) =
        split_host_port(authority).ok_or(Refusal::BadRequest(Malformed::InvalidHost))?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let port = port.unwrap_or(if tls { 443 } else { 80 });
    Ok((host, port, authority.to_string()))
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((v6, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parsing() {
        assert_eq!(split_host_port("a.test:8080"), Some(("a.test", Some(8080))));
        assert_eq!(split_host_port("a.test"), Some(("a.test", None)));
        assert_eq!(split_host_port("[::1]:443"), Some(("::1", Some(443))));
        assert_eq!(split_host_port("[::1]"), Some(("::1", None)));
        assert_eq!(split_host_port("a.test:x"), None);
        assert_eq!(split_host_port("[::1]x"), None);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header("content-length", "5").unwrap();
        req.append_header("transfer-encoding", "chunked").unwrap();
        assert!(reject_smuggling(&req).is_err());
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header("transfer-encoding", "gzip, chunked")
            .unwrap();
        assert!(reject_smuggling(&req).is_err());
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header("transfer-encoding", "chunked").unwrap();
        assert!(reject_smuggling(&req).is_ok());
        assert!(raw_has_content_length(
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 5\r\n\r\n"
        ));
        assert!(!raw_has_content_length(
            b"POST / HTTP/1.1\r\nHost: a\r\nX-Content-Length: 5\r\n\r\n"
        ));
    }
}
