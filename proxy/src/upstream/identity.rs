//! The identity a request carries upstream: the signed identity assertion (a JWT), claims as
//! headers, and the session's tokens for header templates.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::HeaderValue;
use portcullis_auth::IdentityClaims;
use portcullis_policy::Claim;
use tracing::warn;

use crate::clock::now_unix;
use crate::sessions::CachedSession;
use crate::state::State;

/// The identity assertion for `session`, for the route host `audience`.
pub fn assertion(state: &State, audience: &str, session: &CachedSession) -> Option<HeaderValue> {
    let s = session;
    let result = state.assertions.get_or_sign_kept(
        &s.assertion,
        &state.assertion_signer,
        &s.id,
        audience,
        s.assertion_content,
        now_unix(),
        || claims(audience, s),
    );
    match result {
        Ok(jwt) => Some(jwt),
        Err(e) => {
            warn!(error = %e, "cannot sign the identity assertion");
            None
        }
    }
}

/// What the identity assertion of `session` for the route host `audience` says; the assertion
/// cache dates it and gives it its id.
pub fn claims(audience: &str, session: &CachedSession) -> IdentityClaims {
    IdentityClaims {
        iss: audience.to_string(),
        aud: audience.to_string(),
        sub: session.user_id().to_owned(),
        user: session.user_id().to_owned(),
        email: session.email().to_owned(),
        groups: session
            .identity
            .groups()
            .iter()
            .map(|g| g.to_string())
            .collect(),
        name: session.name().to_owned(),
        sid: session.id.to_string(),
        iat: 0,
        exp: 0,
        jti: String::new(),
    }
}

/// The whole session (tokens included) behind a cached one, from the store.
pub async fn full_session(
    state: &State,
    cached: Option<&CachedSession>,
) -> Option<portcullis_auth::Session> {
    let cached = cached?;
    match state.sessions.full(&cached.id, now_unix()).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot read the session's tokens from the store");
            None
        }
    }
}

/// A claim of the session as a header value (lists joined with `,`).
pub fn claim_value<'s>(s: &'s CachedSession, claim: &str) -> Option<Cow<'s, str>> {
    match claim {
        "email" => Some(Cow::Borrowed(s.email())),
        "sub" | "user" => Some(Cow::Borrowed(s.user_id())),
        "name" => Some(Cow::Borrowed(s.name())),
        "groups" => Some(join_list(s.identity.groups())),
        other => match s.identity.claim(other)? {
            Claim::Str(v) => Some(Cow::Borrowed(v)),
            Claim::List(items) => Some(join_list(items)),
            Claim::Json(serde_json::Value::String(v)) => Some(Cow::Borrowed(v)),
            Claim::Json(serde_json::Value::Array(items)) => Some(Cow::Owned(
                items
                    .iter()
                    .map(|i| match i {
                        serde_json::Value::String(v) => v.clone(),
                        v => v.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            )),
            Claim::Json(serde_json::Value::Null) => None,
            Claim::Json(v) => Some(Cow::Owned(v.to_string())),
        },
    }
}

/// A list claim joined with `,`; a single item is borrowed as it is.
fn join_list(items: &[Arc<str>]) -> Cow<'_, str> {
    match items {
        [one] => Cow::Borrowed(one),
        _ => Cow::Owned(items.join(",")),
    }
}
