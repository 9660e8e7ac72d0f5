//! Parsers of single values (addresses, URLs, secrets, durations, header names, a route's
//! `from` and `to`), each reporting a bad value under the key path it is given.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use http::header::HeaderName;
use portcullis_auth::Secret;
use url::Url;

use super::errors::Errors;
use super::runtime::{FromMatcher, HostPattern, ServiceUrl, Upstream};
use super::schema::Field;

/// Turns a `regex_rewrite_substitution` (`\1` as in Pomerium and Envoy, or `$1`) into the
/// `regex` crate's syntax (`${1}`), checking that every group exists.
pub(super) fn regex_substitution(raw: &str, groups: usize) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len() + 8);
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' | '$' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    let mut n = 0usize;
                    while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                        n = n.saturating_mul(10).saturating_add(d as usize);
                        chars.next();
                    }
                    if n >= groups {
                        return Err(format!(
                            "refers to group {n}, but the pattern has {} group(s)",
                            groups.saturating_sub(1)
                        ));
                    }
                    out.push_str("${");
                    out.push_str(&n.to_string());
                    out.push('}');
                }
                Some(next) if next == c => {
                    chars.next();
                    out.push_str(if c == '$' { "$$" } else { "\\" });
                }
                _ if c == '$' => out.push_str("$$"),
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

pub(super) fn socket_addr(errors: &mut Errors, path: &str, raw: &str) -> Option<SocketAddr> {
    match raw.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => match raw.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => Some(a),
            _ => {
                errors.push(path, format!("{raw:?} is not a host:port address"));
                None
            }
        },
    }
}

pub(super) fn service_url(errors: &mut Errors, path: &str, raw: &str) -> Option<ServiceUrl> {
    let url = match Url::parse(raw) {
        Ok(u) => u,
        Err(e) => {
            errors.push(path, format!("invalid URL {raw:?}: {e}"));
            return None;
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        errors.push(path, "must be an http:// or https:// URL");
        return None;
    }
    let Some(host) = url.host_str().map(|h| h.to_ascii_lowercase()) else {
        errors.push(path, "must have a host");
        return None;
    };
    if url.path() != "/" || url.query().is_some() {
        errors.push(path, "must not have a path or query");
    }
    Some(ServiceUrl {
        port: url.port(),
        host,
        url,
    })
}

pub(super) fn secret(errors: &mut Errors, path: &str, field: Field<String>) -> Option<Secret> {
    let raw = errors.required(path, field)?;
    match Secret::from_base64(raw.trim()) {
        Ok(s) => Some(s),
        Err(_) => {
            errors.push(
                path,
                "must be base64 of 32 random bytes (e.g. `head -c32 /dev/urandom | base64`)",
            );
            None
        }
    }
}

pub(super) fn duration(
    errors: &mut Errors,
    path: &str,
    field: Field<String>,
    default: &str,
) -> Duration {
    let raw = errors.or(path, field, default.to_string());
    match humantime::parse_duration(&raw) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            errors.push(path, "must be longer than zero");
            humantime::parse_duration(default).unwrap_or(Duration::from_secs(30))
        }
        Err(e) => {
            errors.push(
                path,
                format!("invalid duration {raw:?}: {e} (e.g. \"30s\", \"14h\")"),
            );
            humantime::parse_duration(default).unwrap_or(Duration::from_secs(30))
        }
    }
}

pub(super) fn header_name(errors: &mut Errors, path: &str, raw: &str) -> Option<HeaderName> {
    match HeaderName::from_bytes(raw.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            errors.push(path, format!("{raw:?} is not a valid header name"));
            None
        }
    }
}

pub(super) fn from_matcher(errors: &mut Errors, path: &str, raw: &str) -> Option<FromMatcher> {
    // Url cannot parse `*.` hosts, so split the wildcard off first.
    let (scheme, rest) = match raw.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => {
            errors.push(path, format!("{raw:?} must be http://host or https://host"));
            return None;
        }
    };
    let tls = match scheme.as_str() {
        "http" => false,
        "https" => true,
        _ => {
            errors.push(
                path,
                format!("unsupported scheme {scheme:?} (http or https)"),
            );
            return None;
        }
    };
    let (wildcard, rest) = match rest.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let url = match Url::parse(&format!("{scheme}://{rest}")) {
        Ok(u) => u,
        Err(e) => {
            errors.push(path, format!("invalid URL {raw:?}: {e}"));
            return None;
        }
    };
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        errors.push(
            path,
            "must not have a path, query or fragment (use prefix, path or regex)",
        );
    }
    if !url.username().is_empty() || url.password().is_some() {
        errors.push(path, "must not have user information");
    }
    let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.contains('*') {
        errors.push(path, "invalid host");
        return None;
    }
    Some(FromMatcher {
        tls,
        host: if wildcard {
            HostPattern::Wildcard(format!(".{host}"))
        } else {
            HostPattern::Exact(host)
        },
        port: url.port(),
    })
}

pub(super) fn upstream(errors: &mut Errors, path: &str, raw: &str) -> Option<Upstream> {
    let (url_part, weight) = match raw.rsplit_once(',') {
        Some((u, w)) => match w.trim().parse::<u32>() {
            Ok(w) if w > 0 => (u.trim(), w),
            _ => {
                errors.push(
                    path,
                    format!("invalid weight {w:?} (a whole number above 0)"),
                );
                return None;
            }
        },
        None => (raw.trim(), 1),
    };
    let url = match Url::parse(url_part) {
        Ok(u) => u,
        Err(e) => {
            errors.push(path, format!("invalid URL {url_part:?}: {e}"));
            return None;
        }
    };
    let (tls, h2c) = match url.scheme() {
        "http" => (false, false),
        "https" => (true, false),
        "h2c" => (false, true),
        other => {
            errors.push(
                path,
                format!("unsupported upstream scheme {other:?} (http, https or h2c)"),
            );
            return None;
        }
    };
    let Some(host) = url.host_str().map(str::to_string) else {
        errors.push(path, "upstream URL must have a host");
        return None;
    };
    let port = url.port().unwrap_or(if tls { 443 } else { 80 });
    // Resolve once, at load: the request path must never block on a lookup.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addr = match (bare, port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        _ => {
            errors.push(path, format!("cannot resolve upstream host {host:?}"));
            return None;
        }
    };
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let base_path = url.path().trim_end_matches('/').to_string();
    Some(Upstream {
        addr,
        tls,
        h2c,
        tls_settings: None,
        authority,
        sni: bare.to_string(),
        weight,
        base_path,
    })
}
