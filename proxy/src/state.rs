//! Everything the proxy builds once at start-up and shares between requests.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use portcullis_auth::{
    AssertionCache, AssertionSigner, Cipher, CookieOptions, OidcConfig, OidcProvider, ReplayGuard,
    SameSite, UrlSigner,
};
use tokio::sync::Mutex;
use tracing::{info, warn};
use url::Url;

use crate::authority::Listener;
use crate::config::{self, Config};
use crate::observe::metrics::{Metrics, RouteSeries};
use crate::routes::RouteTable;
use crate::sessions::opened::OpenedCookies;
use crate::sessions::SessionCache;

/// The part of the configuration a reload may replace, swapped atomically.
pub struct Runtime {
    pub config: Config,
    pub routes: RouteTable,
    /// Per route, by index: its metric series, made and resolved on the route's first
    /// request (most of ten thousand routes may see none for a long time).
    route_series: Box<[OnceLock<Box<RouteSeries>>]>,
    pub session_cookie: CookieOptions,
    /// Origin of the authenticate service (`https://authenticate.example.com[:port]`).
    pub authenticate_origin: String,
    /// Which ports a configured URL serves ([`Listener::serves`]).
    pub listener: Listener,
    /// `cookie_domain` normalized (lowercase, no leading or trailing dot): when set, the
    /// scope of every session cookie (see [`Runtime::session_scope`]).
    cookie_scope: Option<String>,
}

/// Shared state of the proxy service.
pub struct State {
    pub runtime: ArcSwap<Runtime>,
    pub cipher: Cipher,
    pub url_signer: UrlSigner,
    pub assertion_signer: AssertionSigner,
    pub assertions: AssertionCache,
    pub sessions: Arc<SessionCache>,
    /// Session cookie values opened recently: what they say, and the cached session each led
    /// to last (used only while the session cache says it is current).
    pub opened_cookies: OpenedCookies,
    pub replay: ReplayGuard,
    pub metrics: Arc<Metrics>,
    oidc: ArcSwapOption<OidcProvider>,
    oidc_config: Option<OidcConfig>,
    /// Serializes discovery attempts made on the request path.
    discovering: Mutex<()>,
    /// The listener speaks TLS.
    pub tls: bool,
    /// Port of the listener, for routes whose `from` has none and for building URLs.
    pub listener_port: u16,
}

/// How many opened session cookie values are kept: about 80 bytes each (a tag, not the value),
/// so at most about 10 MiB, and a busy edge's clients past this many open their cookie again.
pub const OPENED_COOKIES_KEPT: usize = 131_072;

/// How long the login-state cookie lives.
pub const LOGIN_STATE_COOKIE_TTL: Duration = Duration::from_secs(600);

// === impl Runtime ===

impl Runtime {
    /// Compiles `config` for requests. Starts nothing: whoever installs the runtime (start-up,
    /// reload) starts the health checks of its routes ([`crate::upstream::health::spawn`]).
    pub fn new(mut config: Config) -> Self {
        for route in &config.routes {
            if route
                .upstreams
                .iter()
                .any(|u| u.tls_settings.as_ref().is_some_and(|t| t.skip_verify))
            {
                warn!(
                    route = %route.name,
                    "routes[{}].tls_skip_verify = true: upstream certificates are not verified",
                    route.index
                );
            }
        }
        let listener = config.listener();
        let routes = RouteTable::new(std::mem::take(&mut config.routes), listener);
        let route_series = routes.routes().iter().map(|_| OnceLock::new()).collect();
        let session_cookie = CookieOptions {
            name: config.cookie.name.clone(),
            domain: config.cookie.domain.clone(),
            secure: config.cookie.secure,
            http_only: config.cookie.http_only,
            same_site: match config.cookie.same_site {
                config::SameSite::Lax => SameSite::Lax,
                config::SameSite::Strict => SameSite::Strict,
                config::SameSite::None => SameSite::None,
            },
            max_age: config.cookie.expire,
        };
        let authenticate_origin = config.authenticate.url.origin().ascii_serialization();
        let cookie_scope = config.cookie.domain_scope();
        Self {
            config,
            routes,
            route_series,
            session_cookie,
            authenticate_origin,
            listener,
            cookie_scope,
        }
    }

    /// The metric series of route `index` (made on first use).
    pub fn route_series(&self, index: usize) -> Option<&RouteSeries> {
        let series = self.route_series.get(index)?;
        Some(series.get_or_init(|| Box::new(RouteSeries::new())))
    }

    /// Where a session cookie presented on `host` (lowercase, no trailing dot) and `port` is
    /// a session: the configured cookie domain when there is one (the cookie is then sent to,
    /// and opens on, every host under it), else the request's own authority `host:port`. A
    /// cookie is sealed with the scope of the host it is set on and opens only where the
    /// request's scope is the same.
    pub fn session_scope<'a>(&'a self, host: &str, port: u16) -> Cow<'a, str> {
        match &self.cookie_scope {
            Some(domain) => Cow::Borrowed(domain),
            None => Cow::Owned(format!("{host}:{port}")),
        }
    }

    /// Whether the authority `host` (lowercase, no port, no trailing dot) on `port` is the
    /// authenticate service's: its host, on a port its URL serves.
    pub fn is_authenticate(&self, host: &str, port: u16) -> bool {
        let authenticate = &self.config.authenticate;
        host == authenticate.host && self.listener.serves(authenticate.port, port)
    }

    /// Whether Portcullis answers for the authority `host` on `port` at all: the authenticate
    /// service or a route. Nothing else gets a page, a signed link or a handoff.
    pub fn serves(&self, host: &str, port: u16) -> bool {
        self.is_authenticate(host, port) || self.routes.serves(host, port)
    }

    /// The authority (normalized host, port) a browser sent to `url` arrives with.
    pub fn authority_of(&self, url: &Url) -> (String, u16) {
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        (host, self.listener.port_of(url))
    }

    /// The login-state cookie: host-only on the authenticate host, `Lax` so that the IdP's
    /// top-level redirect back carries it.
    pub fn login_state_cookie(&self) -> CookieOptions {
        CookieOptions {
            name: format!("{}_login", self.config.cookie.name),
            domain: None,
            secure: self.config.cookie.secure,
            http_only: true,
            same_site: SameSite::Lax,
            max_age: LOGIN_STATE_COOKIE_TTL,
        }
    }

    /// The IdP redirect URI (`/oauth2/callback` on the authenticate host).
    pub fn oauth_callback_url(&self) -> String {
        format!("{}/oauth2/callback", self.authenticate_origin)
    }
}

// === impl State ===

impl State {
    pub fn new(
        config: Config,
        sessions: Arc<SessionCache>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let assertion_signer = match &config.signing_key {
            Some(pem) => AssertionSigner::from_pem(pem),
            None => AssertionSigner::derive(&config.shared_secret),
        }
        .map_err(|e| format!("signing_key: {e}"))?;
        let runtime = Runtime::new(config);
        let c = &runtime.config;
        let oidc_config = c.idp.as_ref().map(|idp| OidcConfig {
            issuer_url: idp.provider_url.clone(),
            client_id: idp.client_id.clone(),
            client_secret: idp.client_secret.clone(),
            redirect_url: runtime.oauth_callback_url(),
            scopes: idp.scopes.clone(),
        });
        Ok(Self {
            cipher: Cipher::new(&c.cookie_secret),
            url_signer: UrlSigner::new(&c.shared_secret),
            assertion_signer,
            assertions: AssertionCache::new(1_000_000),
            sessions,
            opened_cookies: OpenedCookies::new(OPENED_COOKIES_KEPT),
            replay: ReplayGuard::new(),
            metrics,
            oidc: ArcSwapOption::empty(),
            oidc_config,
            discovering: Mutex::new(()),
            tls: !c.insecure_server,
            listener_port: c.address.port(),
            runtime: ArcSwap::from_pointee(runtime),
        })
    }

    /// The IdP client, discovering it first when that has not succeeded yet.
    pub async fn oidc(&self) -> Option<Arc<OidcProvider>> {
        if let Some(p) = self.oidc.load_full() {
            return Some(p);
        }
        let cfg = self.oidc_config.clone()?;
        let _one_at_a_time = self.discovering.lock().await;
        if let Some(p) = self.oidc.load_full() {
            return Some(p);
        }
        match tokio::time::timeout(Duration::from_secs(10), OidcProvider::discover(cfg)).await {
            Ok(Ok(p)) => {
                info!(issuer = p.issuer(), "identity provider discovered");
                let p = Arc::new(p);
                self.oidc.store(Some(p.clone()));
                Some(p)
            }
            Ok(Err(e)) => {
                warn!(error = %e, "identity provider discovery failed");
                None
            }
            Err(_) => {
                warn!("identity provider discovery timed out");
                None
            }
        }
    }

    /// Keeps trying discovery in the background until it succeeds, so the first sign-in
    /// does not wait for it.
    pub async fn discover_in_background(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        if self.oidc_config.is_none() {
            return;
        }
        let mut delay = Duration::from_millis(200);
        while self.oidc().await.is_none() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
}
