//! The upstream request: what `upstream_request_filter` does to a request before it goes to
//! the backend. It strips what clients must not send upstream (the session cookie, identity
//! and forwarding headers they made up), adds the forwarding and identity headers, and
//! rewrites path and host.

use std::borrow::Cow;
use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::ErrorType;
use portcullis_auth::strip_cookies;

use crate::authorize::portcullis_token;
use crate::config::{PathMatcher, Route, TemplatePart};
use crate::ctx::Ctx;
use crate::state::{Runtime, State};
use crate::upstream::identity;

/// Header names used on every request, built once.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const IDENTITY_PREFIX: &str = "x-portcullis-";

/// Edits `upstream_request` for `route` (see the module docs).
pub async fn rewrite(
    upstream_request: &mut RequestHeader,
    state: &State,
    runtime: &Runtime,
    route: &Route,
    ctx: &Ctx,
) -> Result<()> {
    // Pingora keeps a request's header names twice: beside the values, and in a second map
    // for the case each name arrived in, and every edit through `RequestHeader` parses the
    // name and updates both maps. The request is taken apart once instead, its headers edited
    // as a plain `http::HeaderMap` with names built once, and put together without the case
    // map. Names then go upstream lowercase, standard ones title-cased by Pingora, as Envoy
    // (and so Pomerium) sends them; HTTP header names are case-insensitive.
    let send_end_stream = upstream_request.send_end_stream();
    let mut parts: http::request::Parts =
        std::mem::replace(upstream_request, empty_request_header()).into();
    let edited = edit(&mut parts, state, runtime, route, ctx).await;
    *upstream_request = RequestHeader::from(parts);
    if let Some(v) = send_end_stream {
        upstream_request.set_send_end_stream(v);
    }
    edited
}

/// What `upstream_request_filter` does to the request going upstream, on its parts: strips
/// what clients must not send upstream, adds the forwarding and identity headers, and
/// rewrites path and host.
async fn edit(
    parts: &mut http::request::Parts,
    state: &State,
    runtime: &Runtime,
    route: &Route,
    ctx: &Ctx,
) -> Result<()> {
    let config = &runtime.config;
    let headers = &mut parts.headers;

    // Behind trusted proxies (`xff_num_trusted_hops`, `trusted_proxies`), the chain they
    // built is kept: their `X-Forwarded-For` list, which this proxy extends, and a valid
    // `X-Forwarded-Proto` (trusted, as Envoy trusts it then). Their `X-Forwarded-Host` is
    // not: Envoy sets none.
    let trusted = if ctx.request.trusted_peer {
        Some(trusted_chain(headers, ctx.request.peer_ip))
    } else {
        None
    };

    // 1. Nothing a client sends may pose as Portcullis or as the forwarding chain. One scan
    // finds them (most requests carry none); X-Forwarded-Host, -Proto and -For (when the
    // address is known) are set below.
    let spoofed = |name: &HeaderName| {
        forged_by_client(name.as_str())
            || *name == config.jwt_assertion_header
            || config.jwt_claims_headers.iter().any(|(h, _)| h == name)
            || route
                .options()
                .remove_request_headers
                .iter()
                .any(|h| h == name)
    };
    if headers.keys().any(spoofed) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| spoofed(n)).cloned().collect();
        for name in names {
            headers.remove(&name);
        }
    }
    // Portcullis's own tokens never go upstream, on any route (public ones, where no session
    // was looked for, included); any other `Authorization` is the application's.
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(|v| portcullis_token(v).is_some())
    {
        headers.remove(header::AUTHORIZATION);
    }

    // Room for what is added below, so that the map grows (rehashes) once at most; made
    // first, so that the cookie's lookup (an entry, which reserves a slot) never grows it.
    let identity_headers = if ctx.found.session.is_some() && route.pass_identity_headers {
        1 + config.jwt_claims_headers.len()
    } else {
        0
    };
    headers.reserve(4 + identity_headers + route.options().set_request_headers.len());
    strip_session_cookie(headers, &config.cookie.name);

    // 2. Forwarding headers from the connection (or the trusted chain).
    let (forwarded_for, forwarded_proto) = match trusted {
        Some((xff, proto)) => (xff, proto),
        None => (ctx.request.client_ip.map(ip_header_value), None),
    };
    match forwarded_for {
        Some(v) => headers.insert(&X_FORWARDED_FOR, v),
        None => headers.remove(&X_FORWARDED_FOR),
    };
    headers.insert(
        &X_FORWARDED_PROTO,
        forwarded_proto
            .unwrap_or_else(|| HeaderValue::from_static(if state.tls { "https" } else { "http" })),
    );
    headers.insert(&X_FORWARDED_HOST, header_value(&ctx.request.authority)?);
    headers.insert(&X_REQUEST_ID, header_value(&ctx.request_id)?);

    // 3. Path and host.
    let upstream = ctx.upstream.and_then(|i| route.upstreams.get(i));
    let path_and_query = rewrite_path(route, upstream.map(|u| u.base_path.as_str()), &parts.uri);
    // An origin-form target that no rewrite changed is sent as it is (no re-parse).
    let origin_form = parts.uri.scheme().is_none() && parts.uri.authority().is_none();
    if matches!(path_and_query, Cow::Owned(_)) || !origin_form {
        parts.uri = http::Uri::try_from(path_and_query.as_ref())
            .explain_err(ErrorType::InternalError, |_| "rewritten path is invalid")?;
    }
    let host = if route.preserve_host_header {
        ctx.request.authority.as_str()
    } else if let Some(h) = &route.options().host_rewrite {
        h.as_str()
    } else {
        upstream
            .map(|u| u.authority.as_str())
            .unwrap_or(ctx.request.authority.as_str())
    };
    let headers = &mut parts.headers;
    headers.insert(header::HOST, header_value(host)?);

    // 4. Identity.
    let identity = ctx.found.session.as_deref();
    let mut jwt: Option<HeaderValue> = None;
    if let Some(s) = identity {
        if route.pass_identity_headers {
            jwt = identity::assertion(state, &ctx.request.host, s);
            if let Some(j) = &jwt {
                headers.insert(&config.jwt_assertion_header, j.clone());
            }
            for (name, claim) in &config.jwt_claims_headers {
                // A joined list becomes the value's buffer as it is (no second copy).
                let value = match identity::claim_value(s, claim) {
                    Some(Cow::Borrowed(v)) => HeaderValue::from_str(v).ok(),
                    Some(Cow::Owned(v)) => HeaderValue::from_maybe_shared(Bytes::from(v)).ok(),
                    None => None,
                };
                if let Some(v) = value {
                    headers.insert(name, v);
                }
            }
        }
    }
    // The cache holds no tokens: a template that needs one reads the session from the
    // store (once per request).
    let mut full: Option<Option<portcullis_auth::Session>> = None;
    for (name, template) in &route.options().set_request_headers {
        let mut value = String::new();
        for part in &template.0 {
            match part {
                TemplatePart::Literal(s) => value.push_str(s),
                TemplatePart::AccessToken | TemplatePart::IdToken => {
                    if full.is_none() {
                        full = Some(identity::full_session(state, identity).await);
                    }
                    let s = full.as_ref().and_then(Option::as_ref);
                    let token = match part {
                        TemplatePart::AccessToken => s.and_then(|s| s.access_token.as_deref()),
                        _ => s.and_then(|s| s.id_token.as_deref()),
                    };
                    value.push_str(token.unwrap_or(""));
                }
                TemplatePart::Jwt => {
                    if jwt.is_none() {
                        jwt =
                            identity.and_then(|s| identity::assertion(state, &ctx.request.host, s));
                    }
                    value.push_str(jwt.as_ref().and_then(|j| j.to_str().ok()).unwrap_or(""));
                }
            }
        }
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    Ok(())
}

/// Whether a client's header `name` (lowercase) is one only Portcullis may send upstream:
/// Portcullis's own (`x-portcullis-*`); the forwarding chain's (`Forwarded`, `X-Real-IP`,
/// every `X-Forwarded-*`) and the other names servers take a client's address or original
/// URL from; and any name with `_`, which CGI, PHP, Rack and some WSGI servers read as `-`
/// (so `X_Email` would pass for `X-Email`), dropped as nginx does. No allocation: one look at
/// the name's bytes.
fn forged_by_client(name: &str) -> bool {
    if name.as_bytes().contains(&b'_') {
        return true;
    }
    match name.as_bytes().first() {
        Some(b'x') => {
            name.starts_with(IDENTITY_PREFIX)
                || name.starts_with("x-forwarded-")
                || matches!(
                    name,
                    "x-real-ip" | "x-client-ip" | "x-original-url" | "x-rewrite-url"
                )
        }
        Some(b'f') => name == "forwarded",
        Some(b't') => name == "true-client-ip",
        Some(b'c') => name == "cf-connecting-ip",
        _ => false,
    }
}

/// What trusted proxies in front send on: the `X-Forwarded-For` list received (its fields
/// joined) with `peer`, the proxy this request came from, appended as a proxy chain does; and
/// their `X-Forwarded-Proto` when it is one `http` or `https`.
fn trusted_chain(
    headers: &http::HeaderMap,
    peer: Option<IpAddr>,
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    let mut list: Vec<u8> = Vec::new();
    for field in headers.get_all(&X_FORWARDED_FOR) {
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(field.as_bytes());
    }
    if let Some(ip) = peer {
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(ip_header_value(ip).as_bytes());
    }
    let forwarded_for = if list.is_empty() {
        None
    } else {
        HeaderValue::from_maybe_shared(Bytes::from(list)).ok()
    };
    let mut protos = headers.get_all(&X_FORWARDED_PROTO).iter();
    let forwarded_proto = match (protos.next(), protos.next()) {
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"https") => {
            Some(HeaderValue::from_static("https"))
        }
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"http") => {
            Some(HeaderValue::from_static("http"))
        }
        _ => None,
    };
    (forwarded_for, forwarded_proto)
}

/// An address as a header value, formatted on the stack.
pub fn ip_header_value(ip: IpAddr) -> HeaderValue {
    // The longest address (an IPv4-mapped IPv6 one) has 45 characters.
    let mut buf = [0u8; 64];
    let len = match ip {
        // Four numbers with itoa, a tenth of what `fmt` costs for the same text.
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let mut n = itoa::Buffer::new();
                let digits = n.format(octet).as_bytes();
                buf[len..len + digits.len()].copy_from_slice(digits);
                len += digits.len();
            }
            len
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}");
            usize::try_from(cursor.position()).unwrap_or(0)
        }
    };
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Removes the session cookie from every `Cookie` header, keeping the others.
fn strip_session_cookie(headers: &mut http::HeaderMap, name: &str) {
    // One lookup (hash and probe) serves the read and the edit. Most often one `Cookie` header:
    // left as it is, dropped (the session cookie was alone, no allocation), or replaced by what
    // is left of it; several are joined into one.
    let header::Entry::Occupied(mut cookies) = headers.entry(header::COOKIE) else {
        return;
    };
    let edit = match strip_cookies(cookies.iter(), name) {
        Some(Cow::Borrowed(_)) => return,
        edit => edit.map(Cow::into_owned),
    };
    match edit.and_then(|v| HeaderValue::from_maybe_shared(Bytes::from(v)).ok()) {
        // Either way, every value the name had goes.
        Some(v) => {
            let _ = cookies.insert(v);
        }
        None => {
            let _ = cookies.remove();
        }
    }
}

/// A header value from text the proxy already validated (a host, a request id).
fn header_value(text: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(text).explain_err(ErrorType::InternalError, |_| "invalid header value")
}

/// A placeholder while the upstream request is edited as parts (no allocation).
fn empty_request_header() -> RequestHeader {
    RequestHeader::from(http::Request::new(()).into_parts().0)
}

/// The path (with query) to send upstream.
fn rewrite_path<'a>(route: &Route, base_path: Option<&str>, uri: &'a http::Uri) -> Cow<'a, str> {
    let path = uri.path();
    let rewritten: Option<String> = if let Some((re, substitution)) = &route.options().regex_rewrite
    {
        match re.replace_all(path, substitution.as_str()) {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) if p.starts_with('/') => Some(p),
            Cow::Owned(p) => Some(format!("/{p}")),
        }
    } else if let Some(rewrite) = &route.options().prefix_rewrite {
        let prefix = match &route.path {
            PathMatcher::Prefix(p) => p.as_str(),
            _ => "/",
        };
        let rest = path.strip_prefix(prefix).unwrap_or(path);
        let mut p = String::with_capacity(rewrite.len() + rest.len());
        p.push_str(rewrite);
        if p.ends_with('/') && rest.starts_with('/') {
            p.push_str(&rest[1..]);
        } else if !p.ends_with('/') && !rest.is_empty() && !rest.starts_with('/') {
            p.push('/');
            p.push_str(rest);
        } else {
            p.push_str(rest);
        }
        Some(p)
    } else {
        match base_path {
            Some(base) if !base.is_empty() => Some(format!("{base}{path}")),
            _ => None,
        }
    };
    match (rewritten, uri.query()) {
        (None, _) => Cow::Borrowed(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")),
        (Some(p), None) => Cow::Owned(p),
        (Some(p), Some(q)) => Cow::Owned(format!("{p}?{q}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_names_are_the_forwarding_chains_portcullis_and_any_with_underscore() {
        for name in [
            "x-portcullis-jwt-assertion",
            "x_email",
            "transfer_encoding",
            "_",
            "forwarded",
            "x-real-ip",
            "x-forwarded-for",
            "x-forwarded-prefix",
            "x-forwarded-port",
            "x-forwarded-server",
            "x-forwarded-uri",
            "x-original-url",
            "x-rewrite-url",
            "true-client-ip",
            "x-client-ip",
            "cf-connecting-ip",
        ] {
            assert!(forged_by_client(name), "{name}");
        }
        for name in [
            "accept",
            "authorization",
            "cookie",
            "x-email",
            "x-forwarded",
            "x-request-id",
            "client-ip",
            "forwarded-for",
            "transfer-encoding",
        ] {
            assert!(!forged_by_client(name), "{name}");
        }
    }

    #[test]
    fn forwarded_for_values_are_the_address_as_text() {
        for ip in [
            "127.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "10.20.3.45",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.168.100.200",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(addr), addr.to_string().as_str());
        }
    }

    #[test]
    fn the_session_cookie_is_stripped_and_only_it() {
        let strip = |values: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for v in values {
                headers.append(header::COOKIE, HeaderValue::from_str(v).unwrap());
            }
            strip_session_cookie(&mut headers, "_portcullis");
            headers
                .get_all(header::COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        // Alone (the fast path), with spaces around the name.
        assert!(strip(&["_portcullis=abc"]).is_empty());
        assert!(strip(&[" _portcullis =abc"]).is_empty());
        // Among others, in one header or several.
        assert_eq!(strip(&["a=1; _portcullis=abc; b=2"]), ["a=1; b=2"]);
        assert_eq!(strip(&["a=1", "_portcullis=abc"]), ["a=1"]);
        assert!(strip(&["_portcullis=abc", "_portcullis=def"]).is_empty());
        // A cookie whose name only starts or ends like it stays.
        assert_eq!(strip(&["_portcullis_x=1"]), ["_portcullis_x=1"]);
        assert_eq!(strip(&["x_portcullis=1"]), ["x_portcullis=1"]);
        assert_eq!(strip(&["other=_portcullis=1"]), ["other=_portcullis=1"]);
        // Several headers go upstream as one (as an HTTP/2 client's must reach HTTP/1).
        assert_eq!(strip(&["a=1", "b=2"]), ["a=1; b=2"]);
        // Another cookie's bytes need not be text.
        let mut headers = http::HeaderMap::new();
        let value = HeaderValue::from_bytes(b"theme=\xff; _portcullis=abc").unwrap();
        headers.insert(header::COOKIE, value);
        strip_session_cookie(&mut headers, "_portcullis");
        assert_eq!(headers[header::COOKIE].as_bytes(), b"theme=\xff");
    }
}
