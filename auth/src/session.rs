//! The session record: who signed in, what the IdP said about them, and the IdP's tokens.
//!
//! The databroker stores it; the session cookie only names it by id. Its `Debug` output never
//! shows a token.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A signed-in user's session.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
pub struct Session {
    /// Random 128-bit id, base64url ([`Session::new_id`]).
    pub id: String,
    /// The IdP subject (`sub`).
    pub user_id: String,
    /// `email` claim, empty when the IdP gave none.
    pub email: String,
    /// `name` claim, empty when the IdP gave none.
    pub name: String,
    /// `groups` claim, `[]` when absent.
    pub groups: Vec<String>,
    /// All ID-token and userinfo claims except the protocol ones (`iss`, `aud`, `exp`, ...).
    pub claims: Map<String, Value>,
    /// Unix seconds when the session began.
    pub issued_at: i64,
    /// Unix seconds when the session ends.
    pub expires_at: i64,
    /// The IdP's ID token (used as `id_token_hint` at sign-out).
    pub id_token: Option<String>,
    /// The IdP's access token.
    pub access_token: Option<String>,
    /// The IdP's refresh token.
    pub refresh_token: Option<String>,
    /// Unix seconds when `access_token` expires, if the IdP said.
    pub access_token_expires_at: Option<i64>,
}

// === impl Session ===

impl Session {
    /// A fresh session id: 128 random bits, base64url without padding (22 characters).
    pub fn new_id() -> String {
        crate::random_token(16)
    }

    /// True when the session has ended at `now_unix`.
    pub fn is_expired(&self, now_unix: i64) -> bool {
        now_unix >= self.expires_at
    }

    /// True when the access token is known to expire within `margin_secs` of `now_unix` and
    /// a refresh token is available to renew it.
    pub fn needs_refresh(&self, now_unix: i64, margin_secs: i64) -> bool {
        self.refresh_token.is_some()
            && self
                .access_token_expires_at
                .is_some_and(|at| at <= now_unix.saturating_add(margin_secs))
    }

    /// Applies tokens from [`OidcProvider::refresh`](crate::OidcProvider::refresh): new access
    /// token and expiry, the new refresh and ID tokens when the IdP rotated them, and the new
    /// ID token's claims.
    pub fn apply_refresh(&mut self, refreshed: crate::RefreshedTokens, now_unix: i64) {
        self.access_token = Some(refreshed.access_token);
        self.access_token_expires_at = refreshed
            .expires_in
            .map(|d| now_unix.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
        if let Some(rt) = refreshed.refresh_token {
            self.refresh_token = Some(rt);
        }
        if let Some(idt) = refreshed.id_token {
            self.id_token = Some(idt);
        }
        if let Some(claims) = refreshed.claims {
            let profile = crate::oidc::Profile::from_claims(&claims);
            self.email = profile.email;
            self.name = profile.name;
            self.groups = profile.groups;
            self.claims = profile.claims;
        }
    }
}

fn redact(t: &Option<String>) -> Option<&'static str> {
    t.as_ref().map(|_| "<redacted>")
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("email", &self.email)
            .field("name", &self.name)
            .field("groups", &self.groups)
            .field("claims", &self.claims)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("id_token", &redact(&self.id_token))
            .field("access_token", &redact(&self.access_token))
            .field("refresh_token", &redact(&self.refresh_token))
            .field("access_token_expires_at", &self.access_token_expires_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            id: Session::new_id(),
            user_id: "sub-1".into(),
            email: "alice@example.com".into(),
            name: "Alice".into(),
            groups: vec!["admins".into()],
            claims: Map::new(),
            issued_at: 100,
            expires_at: 200,
            id_token: Some("eyJ.id.token".into()),
            access_token: Some("access-secret".into()),
            refresh_token: Some("refresh-secret".into()),
            access_token_expires_at: Some(150),
        }
    }

    #[test]
    fn ids_are_random_128_bit() {
        let a = Session::new_id();
        assert_eq!(a.len(), 22);
        assert_eq!(crate::b64url_decode(&a).unwrap().len(), 16);
        assert_ne!(a, Session::new_id());
    }

    #[test]
    fn debug_redacts_tokens() {
        let d = format!("{:?}", session());
        assert!(d.contains("<redacted>"));
        assert!(d.contains("alice@example.com"));
        for secret in ["eyJ.id.token", "access-secret", "refresh-secret"] {
            assert!(!d.contains(secret), "{d}");
        }
        let mut s = session();
        s.refresh_token = None;
        assert!(format!("{s:?}").contains("refresh_token: None"));
    }

    #[test]
    fn serde_round_trip() {
        let s = session();
        let back: Session = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn expiry_and_refresh_need() {
        let s = session();
        assert!(!s.is_expired(199));
        assert!(s.is_expired(200));
        assert!(!s.needs_refresh(100, 30));
        assert!(s.needs_refresh(120, 30));
        let mut s = s;
        s.refresh_token = None;
        assert!(!s.needs_refresh(120, 30));
    }

    #[test]
    fn apply_refresh_keeps_unrotated_tokens() {
        let mut s = session();
        let mut claims = Map::new();
        claims.insert("sub".into(), "sub-1".into());
        claims.insert("email".into(), "alice@new.example".into());
        claims.insert("groups".into(), serde_json::json!(["a", "b"]));
        s.apply_refresh(
            crate::RefreshedTokens {
                access_token: "new-access".into(),
                refresh_token: None,
                id_token: Some("new-id".into()),
                expires_in: Some(std::time::Duration::from_secs(60)),
                subject: Some("sub-1".into()),
                claims: Some(claims),
            },
            1_000,
        );
        assert_eq!(s.access_token.as_deref(), Some("new-access"));
        assert_eq!(s.refresh_token.as_deref(), Some("refresh-secret"));
        assert_eq!(s.id_token.as_deref(), Some("new-id"));
        assert_eq!(s.access_token_expires_at, Some(1_060));
        assert_eq!(s.email, "alice@new.example");
        assert_eq!(s.groups, vec!["a", "b"]);
        assert!(!s.claims.contains_key("sub"));
    }
}
