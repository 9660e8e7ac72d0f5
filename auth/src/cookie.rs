//! The session cookie: its sealed payload, its `Set-Cookie` rendering, and the `Cookie:`
//! header parsing the proxy uses to find it and to strip it before going upstream.
//!
//! The cookie holds only a session id and its validity window; the session itself lives in
//! the databroker. The payload is sealed with purpose [`SESSION_PURPOSE`], so no other sealed
//! token of this crate can be presented as a session cookie.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Cipher;

/// AEAD purpose (associated data) of the session cookie.
pub const SESSION_PURPOSE: &[u8] = b"portcullis-session";
/// AEAD purpose of the login-state cookie that binds an OIDC flow to the browser.
pub const LOGIN_STATE_PURPOSE: &[u8] = b"portcullis-login-state";

/// What the session cookie carries.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionCookie {
    /// The databroker session id.
    pub session_id: String,
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
    /// Seals the cookie payload.
    pub fn seal(&self, cipher: &Cipher) -> String {
        // A struct of strings and integers always serializes.
        cipher.seal_json(SESSION_PURPOSE, self).unwrap_or_default()
    }

    /// Opens a session cookie value; `None` if it does not open or has expired at `now_unix`.
    pub fn open(cipher: &Cipher, value: &str, now_unix: i64) -> Option<SessionCookie> {
        let c: SessionCookie = cipher.open_json(SESSION_PURPOSE, value)?;
        (now_unix < c.expires_at && !c.session_id.is_empty()).then_some(c)
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

    fn render(&self, value: &str, max_age: u64, expired: bool) -> String {
        let mut s = format!("{}={}; Path=/; Max-Age={}", self.name, value, max_age);
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

/// Splits one `Cookie:` header value into `(name, value, whole pair)`, trimming optional
/// whitespace and dropping empty segments. Values keep their quotes.
fn pairs(header_value: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    header_value.split(';').filter_map(|part| {
        let part = part.trim_matches(|c| c == ' ' || c == '\t');
        if part.is_empty() {
            return None;
        }
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        Some((
            name.trim_matches(|c| c == ' ' || c == '\t'),
            value.trim_matches(|c| c == ' ' || c == '\t'),
            part,
        ))
    })
}

/// Removes one pair of surrounding double quotes (RFC 6265 `cookie-value`).
fn unquote(value: &str) -> &str {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        &value[1..value.len() - 1]
    } else {
        value
    }
}

/// Finds the value of cookie `name` across all `Cookie:` header values; the first occurrence
/// wins (browsers send the most specific cookie first). Names match exactly, so `_portcullis`
/// never matches `_portcullis_csrf`. Surrounding quotes are removed.
pub fn find_cookie<'a>(
    header_values: impl Iterator<Item = &'a str>,
    name: &str,
) -> Option<&'a str> {
    header_values
        .flat_map(pairs)
        .find(|(n, _, _)| *n == name)
        .map(|(_, v, _)| unquote(v))
}

/// Returns `header_value` without any cookie named `name`, re-joined with `"; "`, or `None`
/// when no cookie is left (the proxy then drops the header).
pub fn strip_cookie(header_value: &str, name: &str) -> Option<String> {
    let mut out = String::with_capacity(header_value.len());
    for (_, _, part) in pairs(header_value).filter(|(n, _, _)| *n != name) {
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(part);
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests;
