//! The open-redirect defence: every URL the proxy or the authenticate service redirects a
//! browser to after sign-in or sign-out passes through [`validate_redirect`].
//!
//! Browsers parse URLs leniently (they drop tabs and newlines, read `\` as `/`, accept
//! `https:/host`, map full-width and other Unicode to ASCII in host names). The defence is
//! two-sided: the raw string must already be in a strict, unambiguous form, and then the host
//! *as parsed and normalized by a WHATWG parser* (the `url` crate, which does what browsers
//! do) is what the allow-list sees.

use url::{Host, Url};

use crate::AuthError;

/// Longest redirect target accepted.
const MAX_REDIRECT_LEN: usize = 8 * 1024;

/// Validates `raw` as a redirect target and returns it parsed.
///
/// Accepts only absolute `http://` / `https://` URLs, without userinfo, whose host `allowed`
/// accepts. `allowed` receives the normalized host (lowercase ASCII, IDNs as punycode, IPv6 in
/// brackets, no port) and the explicit port (`None` when the URL uses the scheme's default).
///
/// Rejected: relative and scheme-relative URLs (`/x`, `//evil`, `/\evil`), other schemes
/// (`javascript:`, `data:`), `https:/\evil` and other slash variants, userinfo
/// (`https://app@evil`), empty hosts, any control character, whitespace or backslash before the
/// query, and hosts `allowed` refuses.
pub fn validate_redirect(
    raw: &str,
    allowed: &dyn Fn(&str, Option<u16>) -> bool,
) -> Result<Url, AuthError> {
    if raw.is_empty() {
        return Err(AuthError::InvalidRedirect("empty"));
    }
    if raw.len() > MAX_REDIRECT_LEN {
        return Err(AuthError::InvalidRedirect("too long"));
    }
    // Browsers silently strip tabs and newlines anywhere, and leading/trailing C0 and spaces:
    // refuse them all instead of guessing what a browser would make of them.
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(AuthError::InvalidRedirect(
            "control or whitespace character",
        ));
    }
    let rest = strip_prefix_ignore_case(raw, "https://")
        .or_else(|| strip_prefix_ignore_case(raw, "http://"))
        .ok_or(AuthError::InvalidRedirect("not an absolute http(s) URL"))?;
    // Before the query, `\` is a path separator to browsers (and `/\` starts an authority).
    let before_query = rest.split(['?', '#']).next().unwrap_or(rest);
    if before_query.contains('\\') {
        return Err(AuthError::InvalidRedirect("backslash"));
    }
    let authority = before_query.split('/').next().unwrap_or(before_query);
    if authority.is_empty() {
        return Err(AuthError::InvalidRedirect("empty host"));
    }
    if authority.contains('@') {
        return Err(AuthError::InvalidRedirect("userinfo"));
    }

    let url = Url::parse(raw).map_err(|_| AuthError::InvalidRedirect("unparsable"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(AuthError::InvalidRedirect("scheme"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(AuthError::InvalidRedirect("userinfo"));
    }
    let host = match url.host() {
        Some(Host::Domain("")) | None => return Err(AuthError::InvalidRedirect("empty host")),
        Some(_) => url.host_str().unwrap_or_default(),
    };
    if host.is_empty() {
        return Err(AuthError::InvalidRedirect("empty host"));
    }
    if !allowed(host, url.port()) {
        return Err(AuthError::InvalidRedirect("host not allowed"));
    }
    Ok(url)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests;
