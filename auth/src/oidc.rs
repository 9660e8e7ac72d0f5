//! The OpenID Connect authorization-code flow, with PKCE (S256), a nonce, a browser-bound
//! state and RFC 9207 issuer identification.
//!
//! [`OidcProvider::discover`] reads the IdP's metadata once at start-up (keeping its JWKS), with
//! an HTTP client that never follows redirects (no SSRF through a redirecting IdP) and times out
//! after 10 s. [`OidcProvider::authorize_url`] starts a flow and returns the [`LoginState`] to
//! seal into the login-state cookie; [`OidcProvider::exchange`] finishes it and builds the
//! [`Session`]; [`OidcProvider::refresh`] renews tokens.
//!
//! No error built here carries a token: IdP responses are summarized, never echoed.

use std::time::Duration;

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType,
    CoreClient, CoreClientAuthMethod, CoreErrorResponseType, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AccessTokenHash, AdditionalProviderMetadata, AuthorizationCode, ClientId, ClientSecret,
    CsrfToken, EndSessionUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce,
    OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl,
    RefreshToken, RequestTokenError, Scope, StandardErrorResponse, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq as _;
use url::Url;

use crate::{b64url_decode, AuthError, Session};

/// How long a login (IdP round trip) may take.
pub const LOGIN_STATE_TTL_SECS: i64 = 600;
/// Timeout of every request to the IdP.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Claims about the token rather than the user: never copied into [`Session::claims`].
const PROTOCOL_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "nonce",
    "at_hash",
    "c_hash",
    "s_hash",
    "azp",
    "auth_time",
];

/// How to reach and authenticate to the IdP.
#[derive(Clone, Debug)]
pub struct OidcConfig {
    /// The issuer URL; discovery reads `<issuer>/.well-known/openid-configuration`.
    pub issuer_url: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret; empty for a public client.
    pub client_secret: String,
    /// The redirect URI registered at the IdP (`<authenticate>/oauth2/callback`).
    pub redirect_url: String,
    /// Scopes to ask for; `openid` is always asked for.
    pub scopes: Vec<String>,
}

/// The state of one sign-in flow, sealed into the login-state cookie
/// ([`LOGIN_STATE_PURPOSE`](crate::cookie::LOGIN_STATE_PURPOSE)) so that only the browser that
/// started the flow can finish it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct LoginState {
    /// The `state` sent to the IdP.
    pub csrf_state: String,
    /// The `nonce` sent to the IdP, checked in the ID token.
    pub nonce: String,
    /// The PKCE verifier.
    pub pkce_verifier: String,
    /// The original application URL to return to (set by the caller).
    pub redirect_uri: String,
    /// Unix seconds after which the flow is refused.
    pub expires_at: i64,
}

/// Tokens from a refresh.
#[derive(Clone)]
pub struct RefreshedTokens {
    /// The new access token.
    pub access_token: String,
    /// A new refresh token when the IdP rotates them.
    pub refresh_token: Option<String>,
    /// A new ID token when the IdP sent one.
    pub id_token: Option<String>,
    /// Lifetime of the new access token, if the IdP said.
    pub expires_in: Option<Duration>,
    /// `sub` of the new ID token; the caller must check it equals the session's user.
    pub subject: Option<String>,
    /// All claims of the new ID token (verified), when there is one.
    pub claims: Option<Map<String, Value>>,
}

/// Discovery metadata beyond OIDC Core that Portcullis uses.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct ExtraMetadata {
    /// RP-initiated logout.
    #[serde(default)]
    end_session_endpoint: Option<EndSessionUrl>,
    /// RFC 9207: the IdP sends `iss` with every authorization response.
    #[serde(default)]
    authorization_response_iss_parameter_supported: Option<bool>,
}

impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

type TokenError = RequestTokenError<
    openidconnect::HttpClientError<reqwest::Error>,
    StandardErrorResponse<CoreErrorResponseType>,
>;

/// A discovered OpenID Connect provider.
pub struct OidcProvider {
    client: Client,
    http: reqwest::Client,
    issuer: String,
    client_id: String,
    end_session: Option<Url>,
    iss_required: bool,
    scopes: Vec<Scope>,
    prompt_consent: bool,
}

/// The user-facing part of a claim set.
pub(crate) struct Profile {
    pub(crate) email: String,
    pub(crate) name: String,
    pub(crate) groups: Vec<String>,
    pub(crate) claims: Map<String, Value>,
}

// === impl OidcProvider ===

impl OidcProvider {
    /// Discovers the provider at `cfg.issuer_url` (an `http://` issuer is accepted, for tests
    /// and development) and fetches its JWKS.
    pub async fn discover(cfg: OidcConfig) -> Result<OidcProvider, AuthError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| AuthError::Configuration(format!("HTTP client: {e}")))?;
        let issuer = IssuerUrl::new(cfg.issuer_url.clone())
            .map_err(|_| AuthError::Configuration("issuer URL is not a URL".into()))?;
        let metadata = Metadata::discover_async(issuer.clone(), &http)
            .await
            .map_err(|e| AuthError::Discovery(error_chain(&e)))?;
        let extra = metadata.additional_metadata().clone();
        let redirect = RedirectUrl::new(cfg.redirect_url.clone())
            .map_err(|_| AuthError::Configuration("redirect URL is not a URL".into()))?;
        let secret = (!cfg.client_secret.is_empty()).then(|| ClientSecret::new(cfg.client_secret));
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(cfg.client_id.clone()),
            secret,
        )
        .set_redirect_uri(redirect);
        let scopes = cfg
            .scopes
            .iter()
            .filter(|s| s.as_str() != "openid" && !s.is_empty())
            .map(|s| Scope::new(s.clone()))
            .collect();
        Ok(OidcProvider {
            client,
            http,
            issuer: issuer.as_str().to_owned(),
            client_id: cfg.client_id,
            end_session: extra.end_session_endpoint.map(|u| u.url().clone()),
            iss_required: extra
                .authorization_response_iss_parameter_supported
                .unwrap_or(false),
            prompt_consent: cfg.scopes.iter().any(|s| s == "offline_access"),
            scopes,
        })
    }

    /// The issuer, as discovered.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Starts a sign-in: the IdP URL to redirect to and the state to seal into the login-state
    /// cookie. `redirect_uri` is left empty for the caller to fill; `expires_at` is
    /// [`LOGIN_STATE_TTL_SECS`] from now. See [`OidcProvider::authorize_url_for`].
    pub fn authorize_url(&self) -> (Url, LoginState) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.authorize_url_for("", now)
    }

    /// Like [`OidcProvider::authorize_url`], with the original application URL and the clock
    /// given explicitly.
    pub fn authorize_url_for(&self, redirect_uri: &str, now_unix: i64) -> (Url, LoginState) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = self
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(self.scopes.iter().cloned())
            .set_pkce_challenge(challenge);
        if self.prompt_consent {
            // Providers such as node oidc-provider only issue refresh tokens after consent.
            req = req.add_prompt(CoreAuthPrompt::Consent);
        }
        let (url, csrf, nonce) = req.url();
        let state = LoginState {
            csrf_state: csrf.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            redirect_uri: redirect_uri.to_owned(),
            expires_at: now_unix.saturating_add(LOGIN_STATE_TTL_SECS),
        };
        (url, state)
    }

    /// Finishes a sign-in at the IdP callback.
    ///
    /// Checks the login state's age, the returned `state` (constant time) and, per RFC 9207,
    /// `iss` (required when the IdP advertises support); redeems `code` with the PKCE
    /// verifier; validates the ID token (signature, issuer, audience, expiry, nonce, `at_hash`);
    /// fills in from userinfo when the ID token has no email (a userinfo failure does not fail
    /// the login). The session lives `session_ttl_secs` from `now_unix`.
    pub async fn exchange(
        &self,
        code: &str,
        returned_state: &str,
        iss: Option<&str>,
        login: &LoginState,
        now_unix: i64,
        session_ttl_secs: i64,
    ) -> Result<Session, AuthError> {
        check_callback(
            returned_state,
            iss,
            login,
            now_unix,
            &self.issuer,
            self.iss_required,
        )?;
        let response = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| AuthError::Configuration(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;

        let id_token = response.id_token().ok_or(AuthError::MissingIdToken)?;
        let verifier = self.client.id_token_verifier();
        let verified = id_token
            .claims(&verifier, &Nonce::new(login.nonce.clone()))
            .map_err(|e| AuthError::InvalidIdToken(e.to_string()))?;
        if let Some(expected) = verified.access_token_hash() {
            let alg = id_token
                .signing_alg()
                .map_err(|e| AuthError::InvalidIdToken(e.to_string()))?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(|e| AuthError::InvalidIdToken(e.to_string()))?;
            let actual = AccessTokenHash::from_token(response.access_token(), alg, key)
                .map_err(|e| AuthError::InvalidIdToken(e.to_string()))?;
            if actual != *expected {
                return Err(AuthError::InvalidIdToken("at_hash mismatch".into()));
            }
        }
        let raw_id_token = id_token.to_string();
        let mut claims = jwt_payload(&raw_id_token)
            .ok_or_else(|| AuthError::InvalidIdToken("payload is not a JSON object".into()))?;
        let subject = verified.subject().as_str().to_owned();

        if !claims.get("email").is_some_and(Value::is_string) {
            if let Some(info) = self
                .userinfo(response.access_token().secret(), &subject)
                .await
            {
                merge_missing(&mut claims, info);
            }
        }

        let profile = Profile::from_claims(&claims);
        Ok(Session {
            id: Session::new_id(),
            user_id: subject,
            email: profile.email,
            name: profile.name,
            groups: profile.groups,
            claims: profile.claims,
            issued_at: now_unix,
            expires_at: now_unix.saturating_add(session_ttl_secs),
            id_token: Some(raw_id_token),
            access_token: Some(response.access_token().secret().clone()),
            refresh_token: response.refresh_token().map(|t| t.secret().clone()),
            access_token_expires_at: response
                .expires_in()
                .map(|d| now_unix.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))),
        })
    }

    /// Fetches userinfo claims; `None` on any failure, a non-JSON answer, or a `sub` that is not
    /// the ID token's.
    async fn userinfo(&self, access_token: &str, subject: &str) -> Option<Map<String, Value>> {
        let url = self.client.user_info_url()?.url().clone();
        let result = async {
            let resp = self
                .http
                .get(url)
                .bearer_auth(access_token)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .ok()?;
            if !resp.status().is_success() {
                tracing::warn!(status = %resp.status(), "userinfo request failed");
                return None;
            }
            let map: Map<String, Value> = resp.json().await.ok()?;
            (map.get("sub").and_then(Value::as_str) == Some(subject)).then_some(map)
        }
        .await;
        if result.is_none() {
            tracing::warn!("userinfo unavailable; continuing with ID token claims only");
        }
        result
    }

    /// The IdP's RP-initiated logout URL, when it has an end-session endpoint.
    pub fn end_session_url(
        &self,
        id_token_hint: Option<&str>,
        post_logout_redirect_uri: Option<&str>,
    ) -> Option<Url> {
        let mut url = self.end_session.clone()?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(hint) = id_token_hint {
                q.append_pair("id_token_hint", hint);
            }
            q.append_pair("client_id", &self.client_id);
            if let Some(uri) = post_logout_redirect_uri {
                q.append_pair("post_logout_redirect_uri", uri);
            }
        }
        Some(url)
    }

    /// Renews tokens with `refresh_token`. [`AuthError::InvalidGrant`] means the grant is gone
    /// (the user must sign in again); [`AuthError::Transport`] is worth retrying.
    pub async fn refresh(&self, refresh_token: &str) -> Result<RefreshedTokens, AuthError> {
        let token = RefreshToken::new(refresh_token.to_owned());
        let response = self
            .client
            .exchange_refresh_token(&token)
            .map_err(|e| AuthError::Configuration(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let (id_token, subject, claims) = match response.id_token() {
            Some(idt) => {
                // Refreshed ID tokens carry no nonce (OIDC Core 12.2); issuer, audience,
                // signature and expiry are still checked.
                let verified = idt
                    .claims(&self.client.id_token_verifier(), |_: Option<&Nonce>| Ok(()))
                    .map_err(|e| AuthError::InvalidIdToken(e.to_string()))?;
                let raw = idt.to_string();
                let claims = jwt_payload(&raw);
                (
                    Some(raw),
                    Some(verified.subject().as_str().to_owned()),
                    claims,
                )
            }
            None => (None, None, None),
        };
        Ok(RefreshedTokens {
            access_token: response.access_token().secret().clone(),
            refresh_token: response.refresh_token().map(|t| t.secret().clone()),
            id_token,
            expires_in: response.expires_in(),
            subject,
            claims,
        })
    }
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("end_session", &self.end_session.as_ref().map(Url::as_str))
            .finish_non_exhaustive()
    }
}

// === impl LoginState / RefreshedTokens ===

impl std::fmt::Debug for LoginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginState")
            .field("redirect_uri", &self.redirect_uri)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RefreshedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshedTokens")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("id_token", &self.id_token.as_ref().map(|_| "<redacted>"))
            .field("expires_in", &self.expires_in)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

// === impl Profile ===

impl Profile {
    /// Splits verified claims into the session's fields. `groups` may be an array of strings
    /// (non-strings are skipped) or a single string.
    pub(crate) fn from_claims(all: &Map<String, Value>) -> Profile {
        let string = |k: &str| {
            all.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let groups = match all.get("groups") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let claims = all
            .iter()
            .filter(|(k, _)| !PROTOCOL_CLAIMS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Profile {
            email: string("email"),
            name: string("name"),
            groups,
            claims,
        }
    }
}

// === helpers ===

/// The callback checks that need no network: login age, `state`, RFC 9207 `iss`.
fn check_callback(
    returned_state: &str,
    iss: Option<&str>,
    login: &LoginState,
    now_unix: i64,
    issuer: &str,
    iss_required: bool,
) -> Result<(), AuthError> {
    if now_unix >= login.expires_at {
        return Err(AuthError::LoginStateExpired);
    }
    let state_ok: bool = returned_state
        .as_bytes()
        .ct_eq(login.csrf_state.as_bytes())
        .into();
    if !state_ok || login.csrf_state.is_empty() {
        return Err(AuthError::StateMismatch);
    }
    match iss {
        Some(iss) if iss != issuer => Err(AuthError::IssuerMismatch),
        None if iss_required => Err(AuthError::IssuerMismatch),
        _ => Ok(()),
    }
}

/// The payload of a compact JWS as a JSON object. Only call on a token whose signature has
/// been verified.
fn jwt_payload(jwt: &str) -> Option<Map<String, Value>> {
    let mut parts = jwt.split('.');
    let _header = parts.next()?;
    let payload = b64url_decode(parts.next()?)?;
    serde_json::from_slice(&payload).ok()
}

/// Adds userinfo claims the ID token does not have; the ID token wins on conflicts.
fn merge_missing(claims: &mut Map<String, Value>, extra: Map<String, Value>) {
    for (k, v) in extra {
        claims.entry(k).or_insert(v);
    }
}

/// Maps a token-endpoint failure without echoing anything the IdP sent but the OAuth error
/// code and description.
fn token_error(e: TokenError) -> AuthError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            if *r.error() == CoreErrorResponseType::InvalidGrant {
                AuthError::InvalidGrant
            } else {
                let code = r.error().as_ref().to_owned();
                AuthError::TokenEndpoint(match r.error_description() {
                    Some(d) => format!("{code}: {d}"),
                    None => code,
                })
            }
        }
        RequestTokenError::Request(e) => AuthError::Transport(error_chain(&e)),
        // The body may hold tokens: never include it, nor serde's message (which quotes input).
        RequestTokenError::Parse(_, _) => {
            AuthError::Transport("unparsable token endpoint response".into())
        }
        RequestTokenError::Other(_) => {
            AuthError::Transport("unexpected token endpoint response".into())
        }
    }
}

/// `e: source: source...`, for errors known not to carry secrets.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests;
