//! The validated runtime configuration: what the proxy reads while serving.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use pingora::protocols::tls::CaType;
use pingora::utils::tls::CertKey;
use portcullis_auth::Secret;
use portcullis_databroker::grpc::{ClientTls, ServerTls};
use portcullis_policy::{Cidr, Policy};
use regex::Regex;
use url::Url;

use crate::authority::Listener;

/// Which services this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Services {
    All,
    Proxy,
    Databroker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    Memory,
    Postgres,
}

/// The validated runtime configuration.
#[derive(Debug)]
pub struct Config {
    pub services: Services,
    pub address: SocketAddr,
    pub insecure_server: bool,
    /// (certificate chain, key) PEM files; the first is the default for unknown SNI.
    pub certificates: Vec<(PathBuf, PathBuf)>,
    pub authenticate: ServiceUrl,
    pub shared_secret: Secret,
    pub cookie_secret: Secret,
    pub cookie: CookieSettings,
    /// PEM text of the identity-JWT signing key, when configured.
    pub signing_key: Option<String>,
    pub idp: Option<IdpSettings>,
    pub jwt_claims_headers: Vec<(HeaderName, String)>,
    pub jwt_assertion_header: HeaderName,
    pub metrics_address: Option<SocketAddr>,
    pub databroker: DatabrokerSettings,
    pub log_level: String,
    pub log_format: LogFormat,
    pub show_error_details: bool,
    /// How often a live websocket or streamed response is authorized again
    /// (`stream_recheck_interval`), by the stream re-check.
    pub stream_recheck_interval: Duration,
    /// Request heads of hostile clients: how long the whole head may take to arrive
    /// (`request_header_timeout`), how large it may be (`max_request_header_bytes`) and how
    /// many header fields it may have (`max_request_headers`).
    pub request_head: RequestHeadLimits,
    /// `timeout_idle`: how long a client connection may wait for its next request (HTTP/1) or
    /// stream (HTTP/2).
    pub timeout_idle: Duration,
    /// `request_body_idle_timeout`: how long a request body may stall between two reads.
    pub request_body_idle_timeout: Duration,
    /// Which proxies in front of Portcullis are believed about the client's address.
    pub forwarding: Forwarding,
    pub routes: Vec<Route>,
}

/// The limits every request head is held to before it is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeadLimits {
    /// From the first byte of a request (or the connection's start) to its head's last byte.
    pub timeout: Duration,
    /// The request line and header fields together, in bytes; a larger head gets 431.
    pub max_bytes: usize,
    /// The number of header fields; a head with more gets 431.
    pub max_headers: usize,
}

/// Which proxies in front of Portcullis are believed about the client's address, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// `use_proxy_protocol`: every connection starts with a PROXY protocol header (v1 or v2).
    pub use_proxy_protocol: bool,
    /// `xff_num_trusted_hops`: with N > 0, the client's address is the Nth from the right of
    /// the `X-Forwarded-For` received.
    pub xff_num_trusted_hops: usize,
    /// `trusted_proxies`: the only peers whose PROXY header and forwarding headers are
    /// believed (none listed: every peer). With no hop count, `X-Forwarded-For` is read from
    /// the right past these addresses.
    pub trusted_proxies: Vec<Cidr>,
}

impl Forwarding {
    /// Whether `peer` may speak for the client: it is in `trusted_proxies`, or none are listed.
    pub fn trusts(&self, peer: Option<IpAddr>) -> bool {
        self.trusted_proxies.is_empty() || peer.is_some_and(|ip| self.lists(ip))
    }

    /// Whether `X-Forwarded-For` (and a valid `X-Forwarded-Proto`) from `peer` are believed.
    pub fn believes_forwarded_for(&self, peer: Option<IpAddr>) -> bool {
        (self.xff_num_trusted_hops > 0 || !self.trusted_proxies.is_empty()) && self.trusts(peer)
    }

    /// Whether `ip` is in `trusted_proxies`.
    pub fn lists(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }
}

impl Config {
    /// The listener this configuration describes, for the authority rule.
    pub fn listener(&self) -> Listener {
        Listener {
            tls: !self.insecure_server,
            port: self.address.port(),
        }
    }
}

/// An external URL of a service (the authenticate service).
#[derive(Debug, Clone)]
pub struct ServiceUrl {
    pub url: Url,
    /// Lowercase host name, no port.
    pub host: String,
    pub port: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct CookieSettings {
    pub name: String,
    pub expire: Duration,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
}

impl CookieSettings {
    /// `cookie_domain` as a session scope (lowercase, without leading or trailing dots), when
    /// set: the scope of every session cookie then (see `Runtime::session_scope`).
    pub fn domain_scope(&self) -> Option<String> {
        self.domain
            .as_deref()
            .map(|d| d.trim().trim_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
    }
}

#[derive(Debug, Clone)]
pub struct IdpSettings {
    pub provider_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DatabrokerSettings {
    pub storage_type: StorageType,
    pub connection_string: Option<String>,
    /// The deadline of each PostgreSQL call (`databroker_storage_timeout`).
    pub storage_timeout: Duration,
    pub service_url: Option<Url>,
    /// TLS of the link to `service_url` when it is `https://` (`databroker_tls_*`).
    pub service_tls: Option<ClientTls>,
    pub grpc_address: SocketAddr,
    /// TLS of a `databroker`'s gRPC listener (`grpc_tls_*`, `grpc_client_ca_file`); plain
    /// HTTP/2 when `None`.
    pub grpc_tls: Option<ServerTls>,
    /// A digest of the TLS keys and the files they name: a change needs a restart.
    pub tls_digest: u64,
    /// How long cached sessions keep working after the databroker was last reached
    /// (`databroker_cache_staleness`).
    pub cache_staleness: Duration,
    /// The proxy's session cache bound in bytes (`session_cache_max_mib`).
    pub session_cache_bytes: u64,
}

/// One route, compiled.
#[derive(Debug)]
pub struct Route {
    /// Position in the file; first match wins.
    pub index: usize,
    /// The `from` URL as written, for logs and metrics.
    pub name: String,
    pub from: FromMatcher,
    pub path: PathMatcher,
    pub upstreams: Vec<Upstream>,
    pub preserve_host_header: bool,
    pub timeout: Duration,
    pub idle_timeout: Duration,
    pub allow_websockets: bool,
    pub pass_identity_headers: bool,
    pub policy: Policy,
    /// What most routes leave unset, boxed and absent when all of it is: ten thousand routes
    /// pay a pointer each for it, not a quarter of a kilobyte.
    pub options: Option<Box<RouteOptions>>,
}

/// A route's rewrites, header changes and health checks ([`Route::options`]).
#[derive(Debug, Default)]
pub struct RouteOptions {
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite_pattern` and its substitution (in `regex` crate syntax: `${1}`).
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<String>,
    pub set_request_headers: Vec<(HeaderName, HeaderTemplate)>,
    pub remove_request_headers: Vec<HeaderName>,
    pub set_response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Active HTTP health checks of the route's upstreams (`health_check`).
    pub health_check: Option<HealthCheck>,
}

/// The options of a route that sets none.
static NO_OPTIONS: RouteOptions = RouteOptions {
    prefix_rewrite: None,
    regex_rewrite: None,
    host_rewrite: None,
    set_request_headers: Vec::new(),
    remove_request_headers: Vec::new(),
    set_response_headers: Vec::new(),
    health_check: None,
};

impl Route {
    /// The route's rewrites, header changes and health checks (all empty when it sets none).
    pub fn options(&self) -> &RouteOptions {
        self.options.as_deref().unwrap_or(&NO_OPTIONS)
    }
}

impl RouteOptions {
    /// `Some` unless every option is unset.
    pub fn boxed_unless_empty(self) -> Option<Box<RouteOptions>> {
        let empty = self.prefix_rewrite.is_none()
            && self.regex_rewrite.is_none()
            && self.host_rewrite.is_none()
            && self.set_request_headers.is_empty()
            && self.remove_request_headers.is_empty()
            && self.set_response_headers.is_empty()
            && self.health_check.is_none();
        (!empty).then(|| Box::new(self))
    }
}

/// `health_check = "/path"` or `{ path, interval, timeout, healthy_threshold,
/// unhealthy_threshold }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring an unhealthy backend back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take a backend out.
    pub unhealthy_threshold: u32,
}

/// The host part of `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromMatcher {
    pub tls: bool,
    pub host: HostPattern,
    /// When absent, the route matches on the scheme's default port and the listener's own
    /// ([`Listener::serves`]).
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// A lowercase host name.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Wildcard(String),
}

#[derive(Debug, Clone)]
pub enum PathMatcher {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

/// One `to` URL, resolved; [`fmt::Display`] writes it back (`https://host:port/base`).
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub tls: bool,
    /// `h2c://`: cleartext HTTP/2 with prior knowledge.
    pub h2c: bool,
    /// The route's upstream TLS settings (for `https://` upstreams).
    pub tls_settings: Option<Arc<UpstreamTls>>,
    /// `host[:port]` as the upstream expects it in `Host`.
    pub authority: String,
    /// Host name for SNI and certificate verification.
    pub sni: String,
    pub weight: u32,
    /// A path on the `to` URL acts as a prefix rewrite ("" when none).
    pub base_path: String,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match (self.tls, self.h2c) {
            (true, _) => "https",
            (false, true) => "h2c",
            (false, false) => "http",
        };
        write!(f, "{scheme}://{}{}", self.authority, self.base_path)
    }
}

/// A route's upstream TLS options, loaded from their files at configuration time.
pub struct UpstreamTls {
    /// `tls_skip_verify`: no certificate or name verification at all.
    pub skip_verify: bool,
    /// `tls_server_name`: SNI and the name verified, instead of the upstream's host.
    pub server_name: Option<String>,
    /// `tls_custom_ca_file`: trusted instead of the system roots.
    pub ca: Option<Arc<CaType>>,
    /// `tls_client_cert_file` + `tls_client_key_file`: the client certificate (mTLS).
    pub client_cert: Option<Arc<CertKey>>,
    /// Keeps pooled connections made with different TLS settings apart.
    pub group_key: u64,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("skip_verify", &self.skip_verify)
            .field("server_name", &self.server_name)
            .field("custom_ca", &self.ca.as_ref().map(|c| c.len()))
            .field("client_cert", &self.client_cert.is_some())
            .finish()
    }
}

/// A `set_request_headers` value with its `${portcullis.*}` substitutions parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTemplate(pub Vec<TemplatePart>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    AccessToken,
    IdToken,
    Jwt,
}

// === impl HeaderTemplate ===

impl HeaderTemplate {
    pub(super) fn parse(raw: &str) -> Result<HeaderTemplate, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = raw;
        while let Some(pos) = rest.find('$') {
            literal.push_str(&rest[..pos]);
            rest = &rest[pos..];
            if let Some(after) = rest.strip_prefix("$$") {
                literal.push('$');
                rest = after;
            } else if let Some(after) = rest.strip_prefix("${") {
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("unterminated substitution in {raw:?}"))?;
                let part = match &after[..end] {
                    "portcullis.access_token" | "pomerium.access_token" => TemplatePart::AccessToken,
                    "portcullis.id_token" | "pomerium.id_token" => TemplatePart::IdToken,
                    "portcullis.jwt" | "pomerium.jwt" => TemplatePart::Jwt,
                    other => return Err(format!(
                        "unknown substitution ${{{other}}} (known: ${{portcullis.access_token}}, ${{portcullis.id_token}}, ${{portcullis.jwt}}; $$ for a literal $)"
                    )),
                };
                if !literal.is_empty() {
                    parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
                }
                parts.push(part);
                rest = &after[end + 1..];
            } else {
                literal.push('$');
                rest = &rest[1..];
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(literal));
        }
        Ok(HeaderTemplate(parts))
    }

    /// Whether the value depends on the session (and so cannot be sent for anonymous requests).
    pub fn is_static(&self) -> Option<&str> {
        match self.0.as_slice() {
            [] => Some(""),
            [TemplatePart::Literal(s)] => Some(s),
            _ => None,
        }
    }
}
