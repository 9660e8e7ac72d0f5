//! Authorization, the second stage: route, then session, then the route's policy.
//!
//! [`authorize`] is the one place that decides whether a request may go through: the proxy
//! service runs it for every request, the authenticate endpoints use [`load_session`], and
//! the watch of a live stream runs [`authorize`] again every `stream_recheck_interval`.

use std::net::IpAddr;
use std::sync::Arc;

use http::header;
use pingora::http::RequestHeader;
use portcullis_auth::find_cookie_bytes;
use portcullis_policy::{Decision, HeaderLookup, Request as PolicyRequest};
use tracing::warn;

use crate::config::Route;
use crate::request::{is_upgrade, Validated};
use crate::respond::{Dependency, Malformed, Refusal};
use crate::sessions::opened::Known;
use crate::sessions::CachedSession;
use crate::state::{Runtime, State};

/// Who asks, as far as [`authorize`] needs to know besides the request itself.
pub struct Asker<'a> {
    /// Lowercase host, no port.
    pub host: &'a str,
    pub port: u16,
    pub client_ip: Option<IpAddr>,
}

/// What [`authorize`] found, kept even when it refuses.
#[derive(Default)]
pub struct Found {
    /// Index of the matching route.
    pub route: Option<usize>,
    pub session: Option<Arc<CachedSession>>,
    /// The credential came from an `Authorization` header.
    pub bearer: bool,
}

/// Lets the policy read request headers without copying them.
struct Headers<'a>(&'a RequestHeader);

// === impl Asker ===

impl<'a> From<&'a Validated> for Asker<'a> {
    fn from(request: &'a Validated) -> Self {
        Asker {
            host: &request.host,
            port: request.port,
            client_ip: request.client_ip,
        }
    }
}

// === impl Headers ===

impl HeaderLookup for Headers<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Finds the route of a validated, normalized request, checks that it may switch protocols,
/// loads its session and evaluates the route's policy: the whole of authorization that depends
/// on configuration and sessions. `request_filter` runs it for every request, and the watch of a
/// live websocket or stream runs it again every `stream_recheck_interval`
/// ([`crate::upstream::streams`]), so a reload or a sign-out is judged the same way for both.
///
/// What it found on the way is left in `found` even when it refuses (for logs and answers).
pub async fn authorize<'r>(
    state: &State,
    runtime: &'r Runtime,
    req: &RequestHeader,
    asker: &Asker<'_>,
    now: i64,
    found: &mut Found,
) -> Result<(&'r Route, Decision), Refusal> {
    let path = req.uri.path();
    let route = runtime
        .routes
        .find(asker.host, asker.port, path)
        .ok_or(Refusal::NotFound)?;
    found.route = Some(route.index);

    if !route.allow_websockets && is_upgrade(req) {
        return Err(Refusal::BadRequest(Malformed::UpgradeNotAllowed));
    }

    if !route.policy.is_public() {
        let scope = runtime.session_scope(asker.host, asker.port);
        found.session = load_session(state, runtime, req, &scope, &mut found.bearer, now).await?;
    }
    let request = PolicyRequest {
        identity: found.session.as_ref().map(|s| &s.identity),
        method: req.method.as_str(),
        path,
        source_ip: asker.client_ip,
        now_unix: now,
        headers: &Headers(req),
        client_certificate: None,
    };
    Ok((route, route.policy.evaluate(&request)))
}

/// The session the request's cookie or bearer token names, when it is valid for `scope` (the
/// request's, [`Runtime::session_scope`]) and live; `bearer` is set when the credential came
/// from `Authorization`.
pub async fn load_session(
    state: &State,
    runtime: &Runtime,
    req: &RequestHeader,
    scope: &str,
    bearer: &mut bool,
    now: i64,
) -> Result<Option<Arc<CachedSession>>, Refusal> {
    // The bearer token, else the session cookie. The cookie is read as bytes: no pass goes
    // over the whole header, another cookie's odd bytes cannot hide this one, and the value
    // is compared with the opened-cookie memo as bytes (decoded only to be opened).
    let sealed: &[u8] = match bearer_token(req) {
        Some(t) => {
            *bearer = true;
            t.as_bytes()
        }
        None => match find_cookie_bytes(
            req.headers.get_all(header::COOKIE),
            &runtime.config.cookie.name,
        ) {
            Some(c) => c,
            None => return Ok(None),
        },
    };
    let sessions = &state.sessions;
    let cookie = match state
        .opened_cookies
        .open(&state.cipher, sealed, now, scope, |s| {
            sessions.is_current(s, now)
        }) {
        None => return Ok(None),
        // The steady state: the value's last lookup found this session, and it is still the
        // one the cache would answer with.
        Some(Known::Session(s)) => {
            sessions.count_hit();
            return Ok(Some(s));
        }
        Some(Known::Cookie(c)) => c,
    };
    let session = sessions.get(&cookie.session_id, now).await.map_err(|e| {
        warn!(error = %e, "session store unavailable");
        Refusal::Unavailable(Dependency::SessionStore)
    })?;
    if let Some(s) = &session {
        state.opened_cookies.attach(&cookie, s);
    }
    Ok(session)
}

/// The bearer token in `Authorization`, when it is one of ours (see [`portcullis_token`]).
fn bearer_token(req: &RequestHeader) -> Option<&str> {
    portcullis_token(req.headers.get(header::AUTHORIZATION)?)
}

/// The token in an `Authorization` value that is Portcullis's: `Bearer Portcullis-<token>` or
/// `Portcullis <token>` (schemes in any case). Any other value (an application's own bearer
/// token, Basic credentials) is not ours: it neither stands for a session nor hides a cookie.
pub fn portcullis_token(value: &http::HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        token.strip_prefix("Portcullis-")
    } else if scheme.eq_ignore_ascii_case("portcullis") {
        Some(token)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_forms() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("authorization", "Bearer Portcullis-abc")
            .unwrap();
        assert_eq!(bearer_token(&req), Some("abc"));
        req.insert_header("authorization", "Portcullis xyz")
            .unwrap();
        assert_eq!(bearer_token(&req), Some("xyz"));
        req.insert_header("authorization", "Basic dXNlcjpw")
            .unwrap();
        assert_eq!(bearer_token(&req), None);
        // An application's own bearer token is not a Portcullis token.
        req.insert_header("authorization", "Bearer app-token")
            .unwrap();
        assert_eq!(bearer_token(&req), None);
        req.insert_header("authorization", "bearer Portcullis-abc")
            .unwrap();
        assert_eq!(bearer_token(&req), Some("abc"));
    }
}
