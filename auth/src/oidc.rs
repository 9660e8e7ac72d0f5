//! The OpenID Connect authorization-code flow, with PKCE (S256), a nonce, a browser-bound
//! state and RFC 9207 issuer identification.
//!
//! [`OidcProvider::discover`] reads the IdP's metadata and JWKS at start-up, with an HTTP client
//! that never follows redirects (no SSRF through a redirecting IdP) and times out after 10 s.
//! [`OidcProvider::authorize_url`] starts a flow and returns the [`LoginState`] to seal into the
//! login-state cookie; [`OidcProvider::exchange`] finishes it and builds the [`Session`];
//! [`OidcProvider::refresh`] renews tokens.
//!
//! IdPs rotate their signing keys. An ID token that no key of the JWKS verifies (an unknown
//! `kid`, or a signature the known key rejects) makes the provider fetch the JWKS again and
//! verify once more; those fetches are at least [`JWKS_REFETCH_INTERVAL`] apart, so a stream of
//! bad tokens cannot turn into a stream of requests to the IdP. Discovery is run again, on the
//! next exchange or refresh, once it is [`DISCOVERY_MAX_AGE`] old; until it succeeds the
//! metadata and keys in hand stay in use.
//!
//! No error built here carries a token: IdP responses are summarized, never echoed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType,
    CoreClient, CoreClientAuthMethod, CoreErrorResponseType, CoreGrantType, CoreIdToken,
    CoreIdTokenClaims, CoreJsonWebKey, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AccessTokenHash, AdditionalProviderMetadata, AuthorizationCode, ClaimsVerificationError,
    ClientId, ClientSecret, CsrfToken, EndSessionUrl, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, NonceVerifier, OAuth2TokenResponse as _, PkceCodeChallenge,
    PkceCodeVerifier, ProviderMetadata, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    SignatureVerificationError, StandardErrorResponse, TokenResponse as _,
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
/// The least time between two JWKS fetches made because an ID token's key was not in the JWKS.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// The age at which the next exchange or refresh runs discovery (metadata and JWKS) again.
pub const DISCOVERY_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// The least time between two attempts at running discovery again.
const DISCOVERY_RETRY: Duration = Duration::from_secs(60);

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
    /// The metadata and keys in use; replaced whole by a rediscovery or a JWKS refetch.
    discovered: ArcSwap<Discovered>,
    http: reqwest::Client,
    issuer_url: IssuerUrl,
    issuer: String,
    client_id: String,
    client_secret: Option<ClientSecret>,
    redirect: RedirectUrl,
    scopes: Vec<Scope>,
    prompt_consent: bool,
    /// When a key miss last fetched the JWKS; held across the fetch, so concurrent misses make
    /// one request and then use its answer.
    jwks_refetched: tokio::sync::Mutex<Option<Instant>>,
    jwks_refetch_interval: Duration,
    /// When discovery was last attempted again; held across the attempt.
    rediscovery_attempted: tokio::sync::Mutex<Option<Instant>>,
    discovery_max_age: Duration,
}

/// What discovery found, with the JWKS as last fetched.
struct Discovered {
    metadata: Metadata,
    client: Client,
    end_session: Option<Url>,
    iss_required: bool,
    /// When discovery ran (a JWKS refetch keeps it).
    at: Instant,
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
        let issuer_url = IssuerUrl::new(cfg.issuer_url.clone())
            .map_err(|_| AuthError::Configuration("issuer URL is not a URL".into()))?;
        let redirect = RedirectUrl::new(cfg.redirect_url.clone())
            .map_err(|_| AuthError::Configuration("redirect URL is not a URL".into()))?;
        let client_secret =
            (!cfg.client_secret.is_empty()).then(|| ClientSecret::new(cfg.client_secret));
        let scopes = cfg
            .scopes
            .iter()
            .filter(|s| s.as_str() != "openid" && !s.is_empty())
            .map(|s| Scope::new(s.clone()))
            .collect();
        let metadata = fetch_metadata(&issuer_url, &http).await?;
        let discovered =
            Discovered::new(metadata, &cfg.client_id, client_secret.as_ref(), &redirect);
        Ok(OidcProvider {
            discovered: ArcSwap::from_pointee(discovered),
            http,
            issuer: issuer_url.as_str().to_owned(),
            issuer_url,
            client_id: cfg.client_id,
            client_secret,
            redirect,
            prompt_consent: cfg.scopes.iter().any(|s| s == "offline_access"),
            scopes,
            jwks_refetched: tokio::sync::Mutex::new(None),
            jwks_refetch_interval: JWKS_REFETCH_INTERVAL,
            rediscovery_attempted: tokio::sync::Mutex::new(None),
            discovery_max_age: DISCOVERY_MAX_AGE,
        })
    }

    /// Sets the least time between two JWKS fetches for unknown keys (default
    /// [`JWKS_REFETCH_INTERVAL`]).
    pub fn with_jwks_refetch_interval(mut self, interval: Duration) -> OidcProvider {
        self.jwks_refetch_interval = interval;
        self
    }

    /// Sets the age at which discovery runs again (default [`DISCOVERY_MAX_AGE`]).
    pub fn with_discovery_max_age(mut self, age: Duration) -> OidcProvider {
        self.discovery_max_age = age;
        self
    }

    fn discovered_from(&self, metadata: Metadata) -> Discovered {
        Discovered::new(
            metadata,
            &self.client_id,
            self.client_secret.as_ref(),
            &self.redirect,
        )
    }

    /// The metadata and keys to use, after running discovery again when they are older than
    /// the maximum age (at most one attempt at a time, and one per [`DISCOVERY_RETRY`] or per
    /// maximum age, whichever is shorter). A failed attempt keeps what is in hand.
    async fn current(&self) -> Arc<Discovered> {
        let d = self.discovered.load_full();
        if d.at.elapsed() < self.discovery_max_age {
            return d;
        }
        // Another call is at it: use what is in hand rather than wait.
        let Ok(mut attempted) = self.rediscovery_attempted.try_lock() else {
            return d;
        };
        let d = self.discovered.load_full();
        let spacing = DISCOVERY_RETRY.min(self.discovery_max_age);
        if d.at.elapsed() < self.discovery_max_age
            || attempted.is_some_and(|t| t.elapsed() < spacing)
        {
            return d;
        }
        *attempted = Some(Instant::now());
        match fetch_metadata(&self.issuer_url, &self.http).await {
            Ok(metadata) => {
                let fresh = Arc::new(self.discovered_from(metadata));
                self.discovered.store(fresh.clone());
                tracing::debug!(issuer = %self.issuer, "identity provider discovered again");
                fresh
            }
            Err(e) => {
                tracing::warn!(error = %e, "identity provider discovery failed; keeping the metadata in hand");
                d
            }
        }
    }

    /// Fetches the JWKS again because `stale`'s keys verified no ID token: unless the keys
    /// changed meanwhile (then those), or a fetch for this reason happened less than the
    /// refetch interval ago (then `None`).
    async fn refetch_jwks(&self, stale: &Arc<Discovered>) -> Option<Arc<Discovered>> {
        let mut refetched = self.jwks_refetched.lock().await;
        let d = self.discovered.load_full();
        if !Arc::ptr_eq(&d, stale) {
            return Some(d);
        }
        if refetched.is_some_and(|t| t.elapsed() < self.jwks_refetch_interval) {
            tracing::warn!(
                "ID token signed by a key not in the IdP's JWKS, which was fetched again less than {:?} ago",
                self.jwks_refetch_interval
            );
            return None;
        }
        *refetched = Some(Instant::now());
        match CoreJsonWebKeySet::fetch_async(d.metadata.jwks_uri(), &self.http).await {
            Ok(jwks) => {
                let mut fresh = self.discovered_from(d.metadata.clone().set_jwks(jwks));
                fresh.at = d.at;
                let fresh = Arc::new(fresh);
                // A rediscovery that landed meanwhile has fresher keys still: keep it.
                let prev = self.discovered.compare_and_swap(&d, fresh.clone());
                tracing::info!(
                    issuer = %self.issuer,
                    "ID token signed by a key not in the IdP's JWKS; fetched the JWKS again"
                );
                if Arc::ptr_eq(&prev, &d) {
                    Some(fresh)
                } else {
                    Some(self.discovered.load_full())
                }
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "fetching the IdP's JWKS again failed");
                None
            }
        }
    }

    /// Verifies `id_token` (signature, issuer, audience, expiry, nonce by `nonce`) with `d`'s
    /// keys; when none of them verifies its signature, once more after fetching the JWKS again
    /// ([`OidcProvider::refetch_jwks`]). Returns the claims and the keys that verified them.
    async fn verify_id_token<'t, N: NonceVerifier + Copy>(
        &self,
        d: Arc<Discovered>,
        id_token: &'t CoreIdToken,
        nonce: N,
    ) -> Result<(&'t CoreIdTokenClaims, Arc<Discovered>), AuthError> {
        let invalid = |e: ClaimsVerificationError| AuthError::InvalidIdToken(e.to_string());
        let first = id_token.claims(&d.client.id_token_verifier(), nonce);
        match first {
            Ok(claims) => Ok((claims, d)),
            Err(e) if is_key_miss(&e) => {
                let Some(fresh) = self.refetch_jwks(&d).await else {
                    return Err(invalid(e));
                };
                let claims = id_token
                    .claims(&fresh.client.id_token_verifier(), nonce)
                    .map_err(invalid)?;
                Ok((claims, fresh))
            }
            Err(e) => Err(invalid(e)),
        }
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
        let d = self.discovered.load();
        let mut req = d
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
        let d = self.current().await;
        check_callback(
            returned_state,
            iss,
            login,
            now_unix,
            &self.issuer,
            d.iss_required,
        )?;
        let response = d
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| AuthError::Configuration(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;

        let id_token = response.id_token().ok_or(AuthError::MissingIdToken)?;
        let nonce = Nonce::new(login.nonce.clone());
        let (verified, d) = self.verify_id_token(d, id_token, &nonce).await?;
        let verifier = d.client.id_token_verifier();
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
                .userinfo(&d, response.access_token().secret(), &subject)
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
    async fn userinfo(
        &self,
        d: &Discovered,
        access_token: &str,
        subject: &str,
    ) -> Option<Map<String, Value>> {
        let url = d.client.user_info_url()?.url().clone();
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
        let mut url = self.discovered.load().end_session.clone()?;
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
        let d = self.current().await;
        let response = d
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
                let (verified, _) = self
                    .verify_id_token(d, idt, |_: Option<&Nonce>| Ok(()))
                    .await?;
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
            .field(
                "end_session",
                &self.discovered.load().end_session.as_ref().map(Url::as_str),
            )
            .finish_non_exhaustive()
    }
}

// === impl Discovered ===

impl Discovered {
    /// The client for `metadata` (its endpoints and keys); discovered now.
    fn new(
        metadata: Metadata,
        client_id: &str,
        client_secret: Option<&ClientSecret>,
        redirect: &RedirectUrl,
    ) -> Discovered {
        let extra = metadata.additional_metadata().clone();
        let client = CoreClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(client_id.to_owned()),
            client_secret.cloned(),
        )
        .set_redirect_uri(redirect.clone());
        Discovered {
            metadata,
            client,
            end_session: extra.end_session_endpoint.map(|u| u.url().clone()),
            iss_required: extra
                .authorization_response_iss_parameter_supported
                .unwrap_or(false),
            at: Instant::now(),
        }
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

/// The discovery document of `issuer` and the JWKS it names.
async fn fetch_metadata(issuer: &IssuerUrl, http: &reqwest::Client) -> Result<Metadata, AuthError> {
    Metadata::discover_async(issuer.clone(), http)
        .await
        .map_err(|e| AuthError::Discovery(error_chain(&e)))
}

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

/// Whether verification failed for want of the right key: no key of the JWKS matches the
/// token's `kid` and algorithm, or the one that does rejects the signature (a key replaced under
/// the same `kid`, or a token without `kid`). Fetching the JWKS again may help.
fn is_key_miss(e: &ClaimsVerificationError) -> bool {
    matches!(
        e,
        ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey | SignatureVerificationError::CryptoError(_)
        )
    )
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

#[cfg(test)]
mod rotation_tests;
