//! Request validation, the first stage: what a request must be before any route or policy
//! sees it. One `Host` (matching the request target), no framing that servers could read
//! differently (request smuggling), and a normalized path ([`path`]).

pub mod head;
pub mod path;

use std::net::{IpAddr, Ipv6Addr};

use http::header;
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use crate::config::Forwarding;
use crate::respond::{Malformed, Refusal};

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// What validation learned of a request, for the later stages and the logs.
#[derive(Debug, Clone, Default)]
pub struct Validated {
    /// Lowercase host, no port, no trailing dot; an IPv6 literal in brackets, in its
    /// canonical form.
    pub host: String,
    /// Host header as sent (`host[:port]`).
    pub authority: String,
    /// The effective port: the `Host` header's, or the listener scheme's default.
    pub port: u16,
    /// The path as the client sent it, for the access log.
    pub path: String,
    /// The client's address: the connection's, or with trusted proxies in front
    /// (`xff_num_trusted_hops`, `trusted_proxies`) the one they put in `X-Forwarded-For`.
    /// Policies (`source_ip`), the access log and the upstream's `X-Forwarded-For` take it
    /// from here.
    pub client_ip: Option<IpAddr>,
    /// The address of the connection's other end (a trusted proxy's, when there is one), or
    /// the client a believed PROXY protocol header named.
    pub peer_ip: Option<IpAddr>,
    /// The peer is a proxy whose `X-Forwarded-For` is believed: the chain it built goes on
    /// upstream.
    pub trusted_peer: bool,
    /// Answer in JSON, not HTML: the client asked for JSON or sent a bearer token.
    pub json: bool,
}

/// Validates the request of `session` into `request`, and writes its normalized path back
/// into it; `forwarding` says which proxies in front are believed. What was learned before a
/// refusal stays in `request` (for the answer and logs).
pub fn validate(
    session: &mut Session,
    tls: bool,
    forwarding: &Forwarding,
    request: &mut Validated,
) -> Result<(), Refusal> {
    let req = session.req_header();
    request.peer_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    request.trusted_peer = forwarding.believes_forwarded_for(request.peer_ip);
    request.client_ip = request
        .trusted_peer
        .then(|| forwarded_client(req, forwarding))
        .flatten()
        .or(request.peer_ip);
    request.json = wants_json(req) || has_bearer(req);
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

    // Most targets are already normal and go on as they came; only a changed one is written
    // back (from the client's raw bytes, the query byte for byte), so that from here on the
    // request's own path is the normalized one that routes and policies judge.
    let parsed = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    if let Some(target) = path::normalize_target(req.raw_path(), parsed)
        .map_err(|e| Refusal::BadRequest(Malformed::Path(e)))?
    {
        session
            .req_header_mut()
            .set_raw_path(&target)
            .map_err(|_| Refusal::BadRequest(Malformed::InvalidTarget))?;
    }
    Ok(())
}

/// The client's address as the trusted proxies in front of Portcullis give it in
/// `X-Forwarded-For` (several fields read as one list), read from the right end as Envoy (so
/// Pomerium) reads it: with `xff_num_trusted_hops` = N > 0, the Nth address; with no hop count,
/// the first address not in `trusted_proxies` (the leftmost when all are, as nginx's
/// `real_ip_recursive` does). `None` with neither, when the list is too short, or when an entry
/// read is no IP address: then the connection's address is the client's.
fn forwarded_client(req: &RequestHeader, forwarding: &Forwarding) -> Option<IpAddr> {
    let fields = req.headers.get_all(X_FORWARDED_FOR);
    let mut entries = fields
        .iter()
        .rev()
        .flat_map(|v| v.as_bytes().rsplit(|&b| b == b','))
        .map(|entry| {
            std::str::from_utf8(entry)
                .ok()?
                .trim_matches([' ', '\t'])
                .parse::<IpAddr>()
                .ok()
        });
    if let Some(n) = forwarding.xff_num_trusted_hops.checked_sub(1) {
        return entries.nth(n)?;
    }
    if forwarding.trusted_proxies.is_empty() {
        return None;
    }
    let mut leftmost = None;
    for entry in entries {
        let ip = entry?;
        if !forwarding.lists(ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

/// Whether the request carries a bearer token of any kind: the client is a program, which gets
/// 401 rather than a redirect to a sign-in page, whether or not the token is Portcullis's.
fn has_bearer(req: &RequestHeader) -> bool {
    req.headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().get(..7))
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
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
    let port = port.unwrap_or(if tls { 443 } else { 80 });
    Ok((host, port, authority.to_string()))
}

/// Splits a `Host` value into its host (lowercase, no trailing dot; an IPv6 literal in
/// brackets, canonical) and its port, if it names one. `None` for anything else: an empty
/// host, a bracketed host that is not an IPv6 literal, two ports, a port that is empty, not
/// all digits or outside 1–65535, anything after the port.
fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (literal, after) = rest.split_once(']')?;
            let ip: Ipv6Addr = literal.parse().ok()?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            (format!("[{ip}]"), port)
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if host.contains(['[', ']']) {
                return None;
            }
            (host.trim_end_matches('.').to_ascii_lowercase(), port)
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(parse_port(p)?),
        None => None,
    };
    Some((host, port))
}

/// A port as `Host` must write it: one to five digits (no sign, no space), 1–65535.
fn parse_port(raw: &str) -> Option<u16> {
    if raw.is_empty() || raw.len() > 5 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(authority: &str) -> Option<(&'static str, Option<u16>)> {
        split_host_port(authority).map(|(h, p)| (&*h.leak(), p))
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(split("a.test:8080"), Some(("a.test", Some(8080))));
        assert_eq!(split("a.test"), Some(("a.test", None)));
        assert_eq!(split("A.Test.:1"), Some(("a.test", Some(1))));
        assert_eq!(split("a.test:65535"), Some(("a.test", Some(65535))));
        assert_eq!(split("a.test:00080"), Some(("a.test", Some(80))));
        assert_eq!(split("[::1]:443"), Some(("[::1]", Some(443))));
        assert_eq!(split("[::1]"), Some(("[::1]", None)));
        assert_eq!(split("[0:0::0001]"), Some(("[::1]", None)));
        assert_eq!(split("[FE80::A]:80"), Some(("[fe80::a]", Some(80))));
    }

    #[test]
    fn malformed_hosts_are_refused() {
        for bad in [
            "a.test:x",
            "a.test:",
            "a.test:0",
            "a.test:65536",
            "a.test:99999",
            "a.test:000080",
            "a.test:+80",
            "a.test:-1",
            "a.test: 80",
            "a.test:80x",
            "a.test:1:2",
            ":80",
            "",
            ".",
            "[a.test]",
            "[a.test]:80",
            "[127.0.0.1]",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[::1]:1:2",
            "[::1]]",
            "[]",
            "[fe80::1%eth0]",
            "a.test]",
            "a[.test",
            "::1",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad:?}");
        }
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

    fn forwarding(hops: usize, trusted: &[&str]) -> Forwarding {
        Forwarding {
            use_proxy_protocol: false,
            xff_num_trusted_hops: hops,
            trusted_proxies: trusted
                .iter()
                .map(|c| portcullis_policy::Cidr::parse(c).unwrap())
                .collect(),
        }
    }

    fn client_of(fields: &[&str], forwarding: &Forwarding) -> Option<String> {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for f in fields {
            req.append_header("x-forwarded-for", *f).unwrap();
        }
        forwarded_client(&req, forwarding).map(|ip| ip.to_string())
    }

    /// Envoy's rule with `use_remote_address`: the Nth address from the right of the list as
    /// received, none when the list is shorter or that entry is no address.
    #[test]
    fn forwarded_client_is_the_nth_address_from_the_right() {
        let get = |fields: &[&str], hops: usize| client_of(fields, &forwarding(hops, &[]));
        let ip = |s: &str| Some(s.to_owned());
        let list = ["192.0.2.1, 198.51.100.2,203.0.113.3"];
        assert_eq!(get(&list, 0), None);
        assert_eq!(get(&list, 1), ip("203.0.113.3"));
        assert_eq!(get(&list, 2), ip("198.51.100.2"));
        assert_eq!(get(&list, 3), ip("192.0.2.1"));
        assert_eq!(get(&list, 4), None);
        assert_eq!(get(&["192.0.2.1", "2001:db8::1"], 1), ip("2001:db8::1"));
        assert_eq!(get(&["192.0.2.1", "2001:db8::1"], 2), ip("192.0.2.1"));
        assert_eq!(get(&["192.0.2.1, unknown"], 1), None);
        assert_eq!(get(&["192.0.2.1,"], 1), None);
        assert_eq!(get(&[], 1), None);
    }

    /// With no hop count, the list is read from the right past the trusted proxies.
    #[test]
    fn forwarded_client_is_the_first_address_not_trusted_from_the_right() {
        let trusted = forwarding(0, &["10.0.0.0/8", "2001:db8::/32"]);
        let get = |fields: &[&str]| client_of(fields, &trusted);
        let ip = |s: &str| Some(s.to_owned());
        assert_eq!(get(&["192.0.2.1, 203.0.113.3"]), ip("203.0.113.3"));
        assert_eq!(
            get(&["192.0.2.1, 203.0.113.3, 10.0.0.2"]),
            ip("203.0.113.3")
        );
        assert_eq!(
            get(&["192.0.2.1", "10.1.1.1, 2001:db8::1"]),
            ip("192.0.2.1")
        );
        assert_eq!(get(&["10.0.0.1, 10.0.0.2"]), ip("10.0.0.1"));
        assert_eq!(get(&["unknown, 10.0.0.2"]), None);
        assert_eq!(get(&[]), None);
        // A hop count, when there is one, decides.
        let counted = forwarding(1, &["10.0.0.0/8"]);
        assert_eq!(
            client_of(&["192.0.2.1, 10.0.0.2"], &counted),
            ip("10.0.0.2")
        );
    }
}
