//! The session cookie: its sealed payload, its `Set-Cookie` rendering, and the `Cookie:`
//! header parsing the proxy uses to find it and to strip it before going upstream.
//!
//! The cookie holds only a session id, the scope it was issued for and its validity window;
//! the session itself lives in the databroker. The payload is sealed with purpose
//! [`SESSION_PURPOSE`], so no other sealed token of this crate can be presented as a session
//! cookie.
//!
//! **Scope.** A cookie (or the same value as a `Bearer Portcullis-…` token) names the scope it
//! was issued for: the route host's authority (`host:port`), or the configured cookie domain
//! when one is shared by several hosts. The scope is inside the sealed payload, so it cannot be
//! edited, and [`SessionCookie::open`] takes the scope of the request it is presented to: a
//! value issued for another host is no session here. The caller normalizes scopes (the crate
//! compares them byte for byte); an empty scope never opens.
//!
//! **Format.** The purpose names the payload's version. Cookies of the first form, which had
//! no scope, were sealed with `portcullis-session` and do not open with [`SESSION_PURPOSE`]:
//! their holder is simply not signed in on this host and goes through the authenticate host
//! again.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use crate::{BrowserBinding, Cipher, Session};

/// AEAD purpose (associated data) of the session cookie, version 2 (with a scope).
pub const SESSION_PURPOSE: &[u8] = b"portcullis-session/2";
/// AEAD purpose of the login-state cookie that binds an OIDC flow to the browser.
pub const LOGIN_STATE_PURPOSE: &[u8] = b"portcullis-login-state";

/// Appended to the session cookie's name to name the browser-binding cookie
/// (`_portcullis_csrf`, as Pomerium's `_pomerium_csrf`).
pub const BINDING_COOKIE_SUFFIX: &str = "_csrf";
/// Path of the browser-binding cookie: only the route host's callback reads it, and nothing
/// under this path is proxied, so the cookie never reaches an upstream.
pub const BINDING_COOKIE_PATH: &str = "/.portcullis/";

/// What the session cookie carries.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionCookie {
    /// The databroker session id.
    pub session_id: String,
    /// Where the cookie is a session: the authority (`host:port`) of the host it was issued
    /// on, or the shared cookie domain (see the module documentation).
    pub scope: String,
    /// Unix seconds when the cookie was issued.
    pub issued_at: i64,
    /// Unix seconds after which the cookie is refused.
    pub expires_at: i64,
}

/// The `SameSite` cookie attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SameSite {
    /// `SameSite=Lax` (the default).
    #[default]
    Lax,
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=None`; browsers require `Secure` with it, so it is always added.
    None,
}

/// Attributes of a cookie this crate renders.
#[derive(Clone, Debug)]
pub struct CookieOptions {
    /// Cookie name, e.g. `_portcullis`.
    pub name: String,
    /// `Domain` attribute; `None` makes a host-only cookie.
    pub domain: Option<String>,
    /// `Secure` attribute.
    pub secure: bool,
    /// `HttpOnly` attribute.
    pub http_only: bool,
    /// `SameSite` attribute.
    pub same_site: SameSite,
    /// `Max-Age` attribute.
    pub max_age: Duration,
}

// === impl SessionCookie ===

impl SessionCookie {
    /// The cookie for `session` on `scope`: its id, valid over the session's own window.
    pub fn for_session(session: &Session, scope: impl Into<String>) -> Self {
        Self {
            session_id: session.id.clone(),
            scope: scope.into(),
            issued_at: session.issued_at,
            expires_at: session.expires_at,
        }
    }

    /// Seals the cookie payload.
    pub fn seal(&self, cipher: &Cipher) -> String {
        // A struct of strings and integers always serializes.
        cipher.seal_json(SESSION_PURPOSE, self).unwrap_or_default()
    }

    /// Opens a session cookie value presented where the scope is `scope`; `None` if it does
    /// not open, was issued for another scope, or has expired at `now_unix`. Scopes are
    /// compared in constant time; an empty `scope` opens nothing.
    pub fn open(cipher: &Cipher, value: &str, now_unix: i64, scope: &str) -> Option<SessionCookie> {
        let c: SessionCookie = cipher.open_json(SESSION_PURPOSE, value)?;
        let valid = now_unix < c.expires_at && !c.session_id.is_empty() && c.is_for(scope);
        valid.then_some(c)
    }

    /// Whether the cookie was issued for `scope` (constant time; never for an empty scope).
    fn is_for(&self, scope: &str) -> bool {
        !scope.is_empty() && bool::from(self.scope.as_bytes().ct_eq(scope.as_bytes()))
    }
}

// === impl SameSite ===

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

impl std::str::FromStr for SameSite {
    type Err = ();

    /// Parses `lax`, `strict` or `none`, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "lax" => Ok(SameSite::Lax),
            "strict" => Ok(SameSite::Strict),
            "none" => Ok(SameSite::None),
            _ => Err(()),
        }
    }
}

// === impl CookieOptions ===

impl CookieOptions {
    /// A `Set-Cookie` value that sets this cookie to `value` (which must be a valid cookie
    /// value; every token of this crate is base64url and is).
    pub fn set_cookie(&self, value: &str) -> String {
        self.render(value, self.max_age.as_secs(), false)
    }

    /// A `Set-Cookie` value that deletes this cookie (`Max-Age=0` and an `Expires` in 1970).
    pub fn clear_cookie(&self) -> String {
        self.render("", 0, true)
    }

    /// The name of the browser-binding cookie that goes with this session cookie.
    pub fn binding_cookie_name(&self) -> String {
        format!("{}{BINDING_COOKIE_SUFFIX}", self.name)
    }

    /// A `Set-Cookie` value that sets the browser-binding cookie to `binding` for `ttl` (the
    /// sign-in's lifetime). Whatever the session cookie's attributes, it is host-only (no
    /// `Domain`: a sibling host can neither read it nor be sent it), `HttpOnly`, limited to
    /// [`BINDING_COOKIE_PATH`], and `SameSite=Lax`, which still sends it on the top-level
    /// redirect back from the authenticate host (`Strict` would not). `Secure` follows the
    /// session cookie's.
    pub fn set_binding_cookie(&self, binding: &BrowserBinding, ttl: Duration) -> String {
        self.binding_options(ttl).render_at(
            BINDING_COOKIE_PATH,
            binding.cookie_value(),
            ttl.as_secs(),
            false,
        )
    }

    /// A `Set-Cookie` value that deletes the browser-binding cookie (once its handoff is used).
    pub fn clear_binding_cookie(&self) -> String {
        self.binding_options(Duration::ZERO)
            .render_at(BINDING_COOKIE_PATH, "", 0, true)
    }

    fn binding_options(&self, ttl: Duration) -> CookieOptions {
        CookieOptions {
            name: self.binding_cookie_name(),
            domain: None,
            secure: self.secure,
            http_only: true,
            same_site: SameSite::Lax,
            max_age: ttl,
        }
    }

    fn render(&self, value: &str, max_age: u64, expired: bool) -> String {
        self.render_at("/", value, max_age, expired)
    }

    fn render_at(&self, path: &str, value: &str, max_age: u64, expired: bool) -> String {
        let mut s = format!(
            "{}={}; Path={}; Max-Age={}",
            self.name, value, path, max_age
        );
        if expired {
            s.push_str("; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        }
        if let Some(domain) = &self.domain {
            s.push_str("; Domain=");
            s.push_str(domain);
        }
        if self.secure || self.same_site == SameSite::None {
            s.push_str("; Secure");
        }
        if self.http_only {
            s.push_str("; HttpOnly");
        }
        s.push_str("; SameSite=");
        s.push_str(self.same_site.as_str());
        s
    }
}

// === Cookie header parsing ===

/// The cookies of one `Cookie:` header value, as `(name, value, whole pair)`, with optional
/// whitespace trimmed and empty segments dropped. Values keep their quotes.
///
/// It works on bytes: the request path looks for the session cookie in every request, and a
/// header value is only split at `;` (found with SIMD by `memchr`), never decoded as a whole.
/// Other cookies' bytes need not be UTF-8 for the session cookie to be found.
fn pairs(header_value: &[u8]) -> Pairs<'_> {
    Pairs {
        rest: Some(header_value),
    }
}

struct Pairs<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let rest = self.rest?;
            let part = match memchr::memchr(b';', rest) {
                Some(i) => {
                    self.rest = Some(&rest[i + 1..]);
                    &rest[..i]
                }
                None => {
                    self.rest = None;
                    rest
                }
            };
            let part = trim_ows(part);
            if part.is_empty() {
                continue;
            }
            let (name, value) = match memchr::memchr(b'=', part) {
                Some(i) => (trim_ows(&part[..i]), trim_ows(&part[i + 1..])),
                None => (part, &b""[..]),
            };
            return Some((name, value, part));
        }
    }
}

/// Without the optional whitespace (space, tab) around it.
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// What follows `name=` when a header value starts with it (its first pair is that cookie's,
/// and nothing needs trimming before the value); the shortcut for the most common header.
fn after_leading_name<'a>(header_value: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    if name.is_empty() {
        return None;
    }
    header_value.strip_prefix(name)?.strip_prefix(b"=")
}

/// Removes one pair of surrounding double quotes (RFC 6265 `cookie-value`).
fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    }
}

/// Finds the value of cookie `name` across all `Cookie:` header values; the first occurrence
/// wins (browsers send the most specific cookie first). Names match exactly, so `_portcullis`
/// never matches `_portcullis_csrf`. Surrounding quotes are removed. A value that is not UTF-8
/// is no value (`None`).
pub fn find_cookie<'a, V>(
    header_values: impl IntoIterator<Item = &'a V>,
    name: &str,
) -> Option<&'a str>
where
    V: AsRef<[u8]> + ?Sized + 'a,
{
    std::str::from_utf8(find_cookie_bytes(header_values, name)?).ok()
}

/// [`find_cookie`] without decoding: the value's bytes as sent, for a caller that compares
/// them before it needs text.
pub fn find_cookie_bytes<'a, V>(
    header_values: impl IntoIterator<Item = &'a V>,
    name: &str,
) -> Option<&'a [u8]>
where
    V: AsRef<[u8]> + ?Sized + 'a,
{
    let name = name.as_bytes();
    let mut values = header_values.into_iter();
    let first = values.next()?.as_ref();
    // The most common header: the cookie first (often alone). It is the first pair, so the
    // first occurrence, and its value runs to the first `;`, as `pairs` would split it.
    if let Some(rest) = after_leading_name(first, name) {
        let value = memchr::memchr(b';', rest).map_or(rest, |i| &rest[..i]);
        return Some(unquote(trim_ows(value)));
    }
    let (_, value, _) = std::iter::once(first)
        .chain(values.map(AsRef::as_ref))
        .flat_map(pairs)
        .find(|(n, _, _)| *n == name)?;
    Some(unquote(value))
}

/// `header_value` without any cookie named `name`: unchanged (borrowed) when it has none,
/// else the other cookies re-joined with `"; "`, or `None` when no cookie is left (the proxy
/// then drops the header).
pub fn strip_cookie<'a>(header_value: &'a [u8], name: &str) -> Option<Cow<'a, [u8]>> {
    let name = name.as_bytes();
    // The most common header: `name=value` alone (no `;`, so no other pair), dropped whole.
    if after_leading_name(header_value, name).is_some_and(|v| memchr::memchr(b';', v).is_none()) {
        return None;
    }
    // One pass. `out` starts at the first cookie named `name` (most often the only one, and
    // then nothing is allocated); the cookies kept before it are copied in then.
    let mut out: Option<Vec<u8>> = None;
    let mut kept_before = 0;
    for (n, _, part) in pairs(header_value) {
        match (&mut out, n == name) {
            (None, false) => kept_before += 1,
            (None, true) => {
                let mut started = Vec::new();
                for (_, _, kept) in pairs(header_value).take(kept_before) {
                    push(&mut started, kept);
                }
                out = Some(started);
            }
            (Some(_), true) => {}
            (Some(out), false) => push(out, part),
        }
    }
    let Some(out) = out else {
        return (kept_before > 0).then_some(Cow::Borrowed(header_value));
    };
    (!out.is_empty()).then_some(Cow::Owned(out))
}

/// [`strip_cookie`] over all of a request's `Cookie:` header values, as one value (several
/// headers must become one going to HTTP/1): `Some(Cow::Borrowed(_))` when the headers are to
/// be left as they are (none, or one without the cookie), `None` when no cookie is left.
pub fn strip_cookies<'a, V>(
    header_values: impl IntoIterator<Item = &'a V>,
    name: &str,
) -> Option<Cow<'a, [u8]>>
where
    V: AsRef<[u8]> + ?Sized + 'a,
{
    let mut values = header_values.into_iter();
    let Some(first) = values.next() else {
        return Some(Cow::Borrowed(&[]));
    };
    let Some(second) = values.next() else {
        return strip_cookie(first.as_ref(), name);
    };
    let mut joined = Vec::new();
    for v in [first, second].into_iter().chain(values) {
        if let Some(kept) = strip_cookie(v.as_ref(), name) {
            push(&mut joined, &kept);
        }
    }
    (!joined.is_empty()).then_some(Cow::Owned(joined))
}

/// Appends a cookie pair (or several, already joined) to a `Cookie` value being built.
fn push(out: &mut Vec<u8>, part: &[u8]) {
    if !out.is_empty() {
        out.extend_from_slice(b"; ");
    }
    out.extend_from_slice(part);
}

#[cfg(test)]
mod tests;
