//! Configuration: the file's schema ([`schema`]) and the validated runtime form ([`Config`]).
//!
//! [`Config::load`] reads the TOML file, applies `PORTCULLIS_<KEY>` environment overrides,
//! and converts the schema into a [`Config`], collecting every error with its key path
//! (`routes[2].policy.allow.or[0]: unknown criterion "emial"`), never only the first.

pub mod schema;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use pingora::protocols::tls::CaType;
use pingora::utils::tls::{CertKey, WrappedX509};
use portcullis_auth::Secret;
use portcullis_policy::Policy;
use regex::Regex;
use url::Url;

use schema::{did_you_mean, Field, OneOrMany, ROUTE_KEYS, STRING_KEYS, TOP_LEVEL_KEYS};

/// One configuration problem, with the key path it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

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
    /// (`stream_recheck_interval`); see [`crate::streams`].
    pub stream_recheck_interval: Duration,
    pub routes: Vec<Route>,
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
    pub service_url: Option<Url>,
    pub grpc_address: SocketAddr,
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
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite_pattern` and its substitution (in `regex` crate syntax: `${1}`).
    pub regex_rewrite: Option<(Regex, String)>,
    pub preserve_host_header: bool,
    pub host_rewrite: Option<String>,
    pub set_request_headers: Vec<(HeaderName, HeaderTemplate)>,
    pub remove_request_headers: Vec<HeaderName>,
    pub set_response_headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    pub idle_timeout: Duration,
    pub allow_websockets: bool,
    pub pass_identity_headers: bool,
    /// Active HTTP health checks of the route's upstreams (`health_check`).
    pub health_check: Option<HealthCheck>,
    pub policy: Policy,
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
    /// When absent, the route matches on the listener's port.
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

#[derive(Debug, Clone)]
pub struct Upstream {
    pub url: Url,
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

// === impl ConfigError ===

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// === impl Config ===

impl Config {
    /// Reads, overrides from the environment, and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: path.display().to_string(),
                message: format!("cannot read the configuration file: {e}"),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, std::env::vars(), base)
    }

    /// Parses TOML text with the given environment (`PORTCULLIS_*` variables win over the file).
    /// Relative file paths in the configuration are resolved against `base`.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        base: &Path,
    ) -> Result<Config, ConfigErrors> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError {
                path: "config".into(),
                message: format!("invalid TOML: {}", e.message()),
            }])
        })?;
        let mut errors = Errors::default();
        apply_env(&mut table, env, &mut errors);
        // The routes are moved out rather than deserialized with the rest: a copy of every
        // route's values would cost more than all the rest of loading a large file.
        let raw_routes = table.remove("routes");
        let mut file: schema::File = match toml::Value::Table(table).try_into() {
            Ok(f) => f,
            Err(e) => {
                errors.push("config", e.to_string());
                return Err(errors.into_result());
            }
        };
        file.routes = match raw_routes {
            None => schema::Field::Missing,
            Some(toml::Value::Array(items)) => schema::Field::Value(items),
            Some(other) => schema::Field::from_value(other),
        };
        let config = build(file, base, &mut errors);
        if errors.0.is_empty() {
            config.ok_or_else(|| errors.into_result())
        } else {
            Err(errors.into_result())
        }
    }

    /// A one-line summary for `portcullis check`.
    pub fn summary(&self) -> String {
        format!(
            "configuration OK: services={}, {} route(s), listening on {} ({}), authenticate at {}",
            match self.services {
                Services::All => "all",
                Services::Proxy => "proxy",
                Services::Databroker => "databroker",
            },
            self.routes.len(),
            self.address,
            if self.insecure_server {
                "http"
            } else {
                "https"
            },
            self.authenticate.url,
        )
    }

    /// Whether `host` (lowercase, no port) is a host some route serves: where sign-in may return.
    pub fn is_route_host(&self, host: &str) -> bool {
        self.routes.iter().any(|r| match &r.from.host {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        })
    }
}

// === impl HeaderTemplate ===

impl HeaderTemplate {
    fn parse(raw: &str) -> Result<HeaderTemplate, String> {
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

// === building ===

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn into_result(self) -> ConfigErrors {
        ConfigErrors(self.0)
    }

    /// The value of an optional key; reports a wrong type.
    fn opt<T>(&mut self, path: &str, field: Field<T>) -> Option<T> {
        match field {
            Field::Missing => None,
            Field::Value(v) => Some(v),
            Field::Invalid(e) => {
                self.push(path, e);
                None
            }
        }
    }

    /// The value of a key with a default.
    fn or<T>(&mut self, path: &str, field: Field<T>, default: T) -> T {
        self.opt(path, field).unwrap_or(default)
    }

    /// The value of a required key.
    fn required<T>(&mut self, path: &str, field: Field<T>) -> Option<T> {
        if !field.is_present() {
            self.push(path, "is required");
        }
        self.opt(path, field)
    }

    fn unknown(&mut self, prefix: &str, keys: impl IntoIterator<Item = String>, known: &[&str]) {
        for key in keys {
            let message = match did_you_mean(&key, known) {
                Some(k) => format!("unknown key (did you mean \"{k}\"?)"),
                None => "unknown key".to_string(),
            };
            let path = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            self.push(path, message);
        }
    }
}

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    errors: &mut Errors,
) {
    for (name, value) in env {
        let Some(key) = name.strip_prefix("PORTCULLIS_") else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            // Not ours to judge: other PORTCULLIS_* variables (the harness, the shell) may exist.
            continue;
        }
        let parsed = if STRING_KEYS.contains(&key.as_str()) {
            toml::Value::String(value)
        } else {
            match format!("v = {value}").parse::<toml::Table>() {
                Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(value)),
                Err(_) if matches!(key.as_str(), "routes" | "certificates") => {
                    errors.push(
                        format!("{name} (environment)"),
                        "must be a TOML array of tables",
                    );
                    continue;
                }
                Err(_) => toml::Value::String(value),
            }
        };
        table.insert(key, parsed);
    }
}

fn build(file: schema::File, base: &Path, errors: &mut Errors) -> Option<Config> {
    errors.unknown("", file.unknown.into_keys(), TOP_LEVEL_KEYS);

    let services = match errors.or("services", file.services, "all".into()).as_str() {
        "all" => Some(Services::All),
        "proxy" => Some(Services::Proxy),
        "databroker" => Some(Services::Databroker),
        other => {
            errors.push(
                "services",
                format!("unknown service {other:?} (expected all, proxy or databroker)"),
            );
            None
        }
    };
    let raw_address = errors.or("address", file.address, "0.0.0.0:443".into());
    let address = socket_addr(errors, "address", &raw_address);
    let insecure_server = errors.or("insecure_server", file.insecure_server, false);

    // (key path for errors, certificate, key)
    let mut pairs: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    let cert_file = errors.opt("certificate_file", file.certificate_file);
    let key_file = errors.opt("certificate_key_file", file.certificate_key_file);
    match (cert_file, key_file) {
        (Some(c), Some(k)) => pairs.push(("certificate_file".into(), base.join(c), base.join(k))),
        (Some(_), None) => errors.push(
            "certificate_key_file",
            "is required when certificate_file is set",
        ),
        (None, Some(_)) => errors.push(
            "certificate_file",
            "is required when certificate_key_file is set",
        ),
        (None, None) => {}
    }
    for (i, pair) in errors
        .or("certificates", file.certificates, Vec::new())
        .into_iter()
        .enumerate()
    {
        pairs.push((
            format!("certificates[{i}]"),
            base.join(pair.cert),
            base.join(pair.key),
        ));
    }
    for (path, cert, key) in &pairs {
        for (what, p) in [("certificate", cert), ("key", key)] {
            if !p.is_file() {
                errors.push(path, format!("{what} file {} does not exist", p.display()));
            }
        }
    }
    let certificates: Vec<(PathBuf, PathBuf)> = pairs.into_iter().map(|(_, c, k)| (c, k)).collect();
    let proxy_runs = !matches!(services, Some(Services::Databroker));
    if proxy_runs && !insecure_server && certificates.is_empty() {
        errors.push(
            "certificate_file",
            "is required unless insecure_server = true (or give [[certificates]])",
        );
    }

    let authenticate =
        match errors.required("authenticate_service_url", file.authenticate_service_url) {
            Some(raw) => service_url(errors, "authenticate_service_url", &raw),
            None => None,
        };
    let shared_secret = secret(errors, "shared_secret", file.shared_secret);
    let cookie_secret = secret(errors, "cookie_secret", file.cookie_secret);

    let cookie_name = errors.or("cookie_name", file.cookie_name, "_portcullis".into());
    if cookie_name.is_empty()
        || !cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        errors.push(
            "cookie_name",
            format!("{cookie_name:?} is not a valid cookie name (letters, digits, - _ .)"),
        );
    }
    let cookie_expire = duration(errors, "cookie_expire", file.cookie_expire, "14h");
    let same_site = match errors
        .or("cookie_same_site", file.cookie_same_site, "lax".into())
        .to_ascii_lowercase()
        .as_str()
    {
        "lax" => SameSite::Lax,
        "strict" => SameSite::Strict,
        "none" => SameSite::None,
        other => {
            errors.push(
                "cookie_same_site",
                format!("unknown value {other:?} (expected lax, strict or none)"),
            );
            SameSite::Lax
        }
    };
    let cookie = CookieSettings {
        name: cookie_name,
        expire: cookie_expire,
        domain: errors.opt("cookie_domain", file.cookie_domain),
        secure: errors.or("cookie_secure", file.cookie_secure, true),
        http_only: errors.or("cookie_http_only", file.cookie_http_only, true),
        same_site,
    };

    let signing_key = errors
        .opt("signing_key", file.signing_key)
        .and_then(|raw| signing_key(errors, base, raw));

    let idp_provider = errors.or("idp_provider", file.idp_provider, "oidc".into());
    if idp_provider != "oidc" {
        errors.push(
            "idp_provider",
            format!("unknown provider {idp_provider:?} (supported: oidc)"),
        );
    }
    let provider_url = errors.opt("idp_provider_url", file.idp_provider_url);
    if let Some(u) = &provider_url {
        if let Err(e) = Url::parse(u) {
            errors.push("idp_provider_url", format!("invalid URL {u:?}: {e}"));
        }
    }
    let client_id = errors.opt("idp_client_id", file.idp_client_id);
    let client_secret = errors.opt("idp_client_secret", file.idp_client_secret);
    let scopes = errors.or(
        "idp_scopes",
        file.idp_scopes,
        ["openid", "profile", "email", "offline_access"]
            .map(String::from)
            .to_vec(),
    );
    if !scopes.iter().any(|s| s == "openid") {
        errors.push("idp_scopes", "must include \"openid\"");
    }

    let raw_assertion_header = errors.or(
        "jwt_assertion_header",
        file.jwt_assertion_header,
        "X-Portcullis-Jwt-Assertion".into(),
    );
    let jwt_assertion_header = header_name(errors, "jwt_assertion_header", &raw_assertion_header);
    let mut jwt_claims_headers = Vec::new();
    for (name, claim) in errors.or(
        "jwt_claims_headers",
        file.jwt_claims_headers,
        BTreeMap::new(),
    ) {
        if let Some(h) = header_name(errors, &format!("jwt_claims_headers.{name}"), &name) {
            jwt_claims_headers.push((h, claim));
        }
    }

    let metrics_address = errors
        .opt("metrics_address", file.metrics_address)
        .and_then(|raw| socket_addr(errors, "metrics_address", &raw));
    if let (Some(m), Some(a)) = (metrics_address, address) {
        if m == a {
            errors.push("metrics_address", "must differ from address");
        }
    }

    let storage_type = match errors
        .or(
            "databroker_storage_type",
            file.databroker_storage_type,
            "memory".into(),
        )
        .as_str()
    {
        "memory" => StorageType::Memory,
        "postgres" => StorageType::Postgres,
        other => {
            errors.push(
                "databroker_storage_type",
                format!("unknown storage {other:?} (expected memory or postgres)"),
            );
            StorageType::Memory
        }
    };
    let connection_string = errors.opt(
        "databroker_storage_connection_string",
        file.databroker_storage_connection_string,
    );
    if storage_type == StorageType::Postgres && connection_string.is_none() {
        errors.push(
            "databroker_storage_connection_string",
            "is required when databroker_storage_type = \"postgres\"",
        );
    }
    let service_url = errors
        .opt("databroker_service_url", file.databroker_service_url)
        .and_then(|raw| match Url::parse(&raw) {
            Ok(u) => Some(u),
            Err(e) => {
                errors.push("databroker_service_url", format!("invalid URL: {e}"));
                None
            }
        });
    if let Some(url) = &service_url {
        // The gRPC client speaks plain HTTP/2 (h2c); keep the databroker on a private network.
        if url.scheme() != "http" {
            errors.push(
                "databroker_service_url",
                format!(
                    "scheme {:?} is not supported (use http://host:port)",
                    url.scheme()
                ),
            );
        }
        if url.host_str().is_none() {
            errors.push("databroker_service_url", "has no host");
        }
    }
    let raw_grpc = errors.or("grpc_address", file.grpc_address, "127.0.0.1:5443".into());
    let grpc_address = socket_addr(errors, "grpc_address", &raw_grpc);
    let cache_staleness = duration(
        errors,
        "databroker_cache_staleness",
        file.databroker_cache_staleness,
        "5m",
    );
    let cache_mib = errors.or("session_cache_max_mib", file.session_cache_max_mib, 512);
    if cache_mib == 0 || cache_mib > 1 << 20 {
        errors.push(
            "session_cache_max_mib",
            format!("{cache_mib} is out of range (1 to 1048576 MiB)"),
        );
    }

    let log_level = errors.or("log_level", file.log_level, "info".into());
    if !["trace", "debug", "info", "warn", "error", "off"].contains(&log_level.as_str()) {
        errors.push(
            "log_level",
            format!("unknown level {log_level:?} (trace, debug, info, warn, error, off)"),
        );
    }
    let log_format = match errors
        .or("log_format", file.log_format, "json".into())
        .as_str()
    {
        "json" => LogFormat::Json,
        "pretty" => LogFormat::Pretty,
        other => {
            errors.push(
                "log_format",
                format!("unknown format {other:?} (expected json or pretty)"),
            );
            LogFormat::Json
        }
    };
    let show_error_details = errors.or("show_error_details", file.show_error_details, false);
    let stream_recheck_interval = duration(
        errors,
        "stream_recheck_interval",
        file.stream_recheck_interval,
        "5s",
    );

    let raw_routes = errors.or("routes", file.routes, Vec::new());
    let mut routes = Vec::with_capacity(raw_routes.len());
    for (index, raw) in raw_routes.into_iter().enumerate() {
        let path = format!("routes[{index}]");
        let route: schema::Route = match raw {
            toml::Value::Table(table) => match schema::Route::from_table(table) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(&path, e.to_string());
                    continue;
                }
            },
            _ => {
                errors.push(&path, "must be a table");
                continue;
            }
        };
        if let Some(r) = build_route(index, &path, route, base, errors) {
            routes.push(r);
        }
    }
    let needs_idp = routes.iter().any(|r| !r.policy.is_public());
    let idp = match (provider_url, client_id, client_secret) {
        (Some(provider_url), Some(client_id), Some(client_secret)) => Some(IdpSettings {
            provider_url,
            client_id,
            client_secret,
            scopes,
        }),
        (url, id, secret) => {
            if needs_idp && proxy_runs {
                for (key, present) in [
                    ("idp_provider_url", url.is_some()),
                    ("idp_client_id", id.is_some()),
                    ("idp_client_secret", secret.is_some()),
                ] {
                    if !present {
                        errors.push(key, "is required when a route needs sign-in");
                    }
                }
            }
            None
        }
    };

    Some(Config {
        services: services?,
        address: address?,
        insecure_server,
        certificates,
        authenticate: authenticate?,
        shared_secret: shared_secret?,
        cookie_secret: cookie_secret?,
        cookie,
        signing_key,
        idp,
        jwt_claims_headers,
        jwt_assertion_header: jwt_assertion_header?,
        metrics_address,
        databroker: DatabrokerSettings {
            storage_type,
            connection_string,
            service_url,
            grpc_address: grpc_address?,
            cache_staleness,
            session_cache_bytes: cache_mib.saturating_mul(1 << 20),
        },
        log_level,
        log_format,
        show_error_details,
        stream_recheck_interval,
        routes,
    })
}

fn build_route(
    index: usize,
    path: &str,
    raw: schema::Route,
    base: &Path,
    errors: &mut Errors,
) -> Option<Route> {
    let key = |k: &str| format!("{path}.{k}");
    errors.unknown(path, raw.unknown.into_keys(), ROUTE_KEYS);

    let from_raw = errors.required(&key("from"), raw.from);
    let from = from_raw
        .as_deref()
        .and_then(|f| from_matcher(errors, &key("from"), f));

    let mut upstreams = Vec::new();
    match errors.required(&key("to"), raw.to) {
        Some(OneOrMany::One(s)) => {
            upstreams.extend(upstream(errors, &key("to"), &s));
        }
        Some(OneOrMany::Many(list)) => {
            if list.is_empty() {
                errors.push(key("to"), "must name at least one upstream");
            }
            for (i, s) in list.iter().enumerate() {
                upstreams.extend(upstream(errors, &format!("{path}.to[{i}]"), s));
            }
        }
        None => {}
    }

    let prefix = errors.opt(&key("prefix"), raw.prefix);
    let exact = errors.opt(&key("path"), raw.path);
    let regex = errors.opt(&key("regex"), raw.regex);
    let path_matcher = match (prefix, exact, regex) {
        (None, None, None) => PathMatcher::Prefix("/".into()),
        (Some(p), None, None) => {
            if !p.starts_with('/') {
                errors.push(key("prefix"), "must start with /");
            }
            PathMatcher::Prefix(p)
        }
        (None, Some(p), None) => {
            if !p.starts_with('/') {
                errors.push(key("path"), "must start with /");
            }
            PathMatcher::Exact(p)
        }
        (None, None, Some(r)) => match Regex::new(&format!("^(?:{r})$")) {
            Ok(re) => PathMatcher::Regex(re),
            Err(e) => {
                errors.push(key("regex"), format!("invalid regex: {e}"));
                PathMatcher::Prefix("/".into())
            }
        },
        _ => {
            errors.push(
                path.to_string(),
                "at most one of prefix, path and regex may be set",
            );
            PathMatcher::Prefix("/".into())
        }
    };

    let prefix_rewrite = errors.opt(&key("prefix_rewrite"), raw.prefix_rewrite);
    if let Some(p) = &prefix_rewrite {
        if !p.starts_with('/') {
            errors.push(key("prefix_rewrite"), "must start with /");
        }
    }
    let regex_rewrite = match (
        errors.opt(&key("regex_rewrite_pattern"), raw.regex_rewrite_pattern),
        errors.opt(
            &key("regex_rewrite_substitution"),
            raw.regex_rewrite_substitution,
        ),
    ) {
        (None, None) => None,
        (Some(_), None) => {
            errors.push(
                key("regex_rewrite_substitution"),
                "is required when regex_rewrite_pattern is set",
            );
            None
        }
        (None, Some(_)) => {
            errors.push(
                key("regex_rewrite_pattern"),
                "is required when regex_rewrite_substitution is set",
            );
            None
        }
        (Some(pattern), Some(substitution)) => match Regex::new(&pattern) {
            Ok(re) => {
                if prefix_rewrite.is_some() {
                    errors.push(
                        key("regex_rewrite_pattern"),
                        "cannot be combined with prefix_rewrite",
                    );
                }
                match regex_substitution(&substitution, re.captures_len()) {
                    Ok(s) => Some((re, s)),
                    Err(e) => {
                        errors.push(key("regex_rewrite_substitution"), e);
                        None
                    }
                }
            }
            Err(e) => {
                errors.push(key("regex_rewrite_pattern"), format!("invalid regex: {e}"));
                None
            }
        },
    };
    let tls_settings = upstream_tls(
        errors,
        path,
        base,
        TlsFields {
            skip_verify: raw.tls_skip_verify,
            custom_ca_file: raw.tls_custom_ca_file,
            server_name: raw.tls_server_name,
            client_cert_file: raw.tls_client_cert_file,
            client_key_file: raw.tls_client_key_file,
        },
    );
    for u in &mut upstreams {
        if u.tls {
            u.tls_settings = tls_settings.clone();
        }
    }

    let health_check = errors
        .opt(&key("health_check"), raw.health_check)
        .and_then(|v| health_check(errors, &key("health_check"), v));

    let preserve_host_header = errors.or(
        &key("preserve_host_header"),
        raw.preserve_host_header,
        false,
    );
    let host_rewrite = errors.opt(&key("host_rewrite"), raw.host_rewrite);
    if preserve_host_header && host_rewrite.is_some() {
        errors.push(
            key("host_rewrite"),
            "cannot be combined with preserve_host_header",
        );
    }

    let mut set_request_headers = Vec::new();
    for (name, value) in errors.or(
        &key("set_request_headers"),
        raw.set_request_headers,
        BTreeMap::new(),
    ) {
        let p = format!("{path}.set_request_headers.{name}");
        let Some(h) = header_name(errors, &p, &name) else {
            continue;
        };
        match HeaderTemplate::parse(&value) {
            Ok(t) => {
                if let Some(s) = t.is_static() {
                    if HeaderValue::from_str(s).is_err() {
                        errors.push(&p, "is not a valid header value");
                        continue;
                    }
                }
                set_request_headers.push((h, t));
            }
            Err(e) => errors.push(p, e),
        }
    }
    let mut remove_request_headers = Vec::new();
    for name in errors.or(
        &key("remove_request_headers"),
        raw.remove_request_headers,
        Vec::new(),
    ) {
        if let Some(h) = header_name(errors, &key("remove_request_headers"), &name) {
            remove_request_headers.push(h);
        }
    }
    let mut set_response_headers = Vec::new();
    for (name, value) in errors.or(
        &key("set_response_headers"),
        raw.set_response_headers,
        BTreeMap::new(),
    ) {
        let p = format!("{path}.set_response_headers.{name}");
        let Some(h) = header_name(errors, &p, &name) else {
            continue;
        };
        match HeaderValue::from_str(&value) {
            Ok(v) => set_response_headers.push((h, v)),
            Err(_) => errors.push(p, "is not a valid header value"),
        }
    }

    let timeout = duration(errors, &key("timeout"), raw.timeout, "30s");
    let idle_timeout = duration(errors, &key("idle_timeout"), raw.idle_timeout, "5m");
    let allow_websockets = errors.or(&key("allow_websockets"), raw.allow_websockets, false);
    let public = errors.or(
        &key("allow_public_unauthenticated_access"),
        raw.allow_public_unauthenticated_access,
        false,
    );
    let any_user = errors.or(
        &key("allow_any_authenticated_user"),
        raw.allow_any_authenticated_user,
        false,
    );
    let pass_identity_headers = errors.or(
        &key("pass_identity_headers"),
        raw.pass_identity_headers,
        false,
    );

    let parsed_policy = match errors.opt(&key("policy"), raw.policy) {
        Some(value) => match Policy::parse(&value, &key("policy")) {
            Ok(p) => Some(p),
            Err(list) => {
                for e in list {
                    errors.push(e.path, e.message);
                }
                None
            }
        },
        None => None,
    };
    let policy = if public {
        if any_user || parsed_policy.is_some() {
            errors.push(
                key("allow_public_unauthenticated_access"),
                "cannot be combined with allow_any_authenticated_user or policy (a public route has no policy)",
            );
        }
        Policy::public()
    } else {
        let p = parsed_policy.unwrap_or_else(Policy::deny_all);
        if any_user {
            p.allow_any_authenticated_user()
        } else {
            p
        }
    };

    Some(Route {
        index,
        name: from_raw?,
        from: from?,
        path: path_matcher,
        upstreams,
        prefix_rewrite,
        regex_rewrite,
        preserve_host_header,
        host_rewrite,
        set_request_headers,
        remove_request_headers,
        set_response_headers,
        timeout,
        idle_timeout,
        allow_websockets,
        pass_identity_headers,
        health_check,
        policy,
    })
}

fn health_check(errors: &mut Errors, path: &str, value: toml::Value) -> Option<HealthCheck> {
    const KEYS: &[&str] = &[
        "path",
        "interval",
        "timeout",
        "healthy_threshold",
        "unhealthy_threshold",
    ];
    let mut table = match value {
        toml::Value::String(p) => {
            let mut t = toml::Table::new();
            t.insert("path".into(), toml::Value::String(p));
            t
        }
        toml::Value::Table(t) => t,
        _ => {
            errors.push(path, "must be a path (\"/healthz\") or a table with path, interval, timeout, healthy_threshold, unhealthy_threshold");
            return None;
        }
    };
    let unknown: Vec<String> = table
        .keys()
        .filter(|k| !KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    errors.unknown(path, unknown, KEYS);
    let key = |k: &str| format!("{path}.{k}");
    let check_path = match table.remove("path") {
        Some(toml::Value::String(p))
            if p.starts_with('/') && http::uri::PathAndQuery::try_from(p.as_str()).is_ok() =>
        {
            p
        }
        Some(_) => {
            errors.push(key("path"), "must be a path starting with /");
            return None;
        }
        None => {
            errors.push(key("path"), "is required");
            return None;
        }
    };
    let mut dur = |k: &str, default: &str| -> Duration {
        let field = match table.remove(k) {
            None => Field::Missing,
            Some(toml::Value::String(s)) => Field::Value(s),
            Some(_) => Field::Invalid("must be a duration string like \"5s\"".into()),
        };
        duration(errors, &key(k), field, default)
    };
    let interval = dur("interval", "10s");
    let timeout = dur("timeout", "2s");
    let mut threshold = |k: &str, default: u32| -> u32 {
        match table.remove(k) {
            None => default,
            Some(toml::Value::Integer(n)) if (1..=100).contains(&n) => n as u32,
            Some(_) => {
                errors.push(key(k), "must be a whole number from 1 to 100");
                default
            }
        }
    };
    let healthy_threshold = threshold("healthy_threshold", 2);
    let unhealthy_threshold = threshold("unhealthy_threshold", 3);
    Some(HealthCheck {
        path: check_path,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    })
}

/// The `tls_*` keys of a route.
struct TlsFields {
    skip_verify: Field<bool>,
    custom_ca_file: Field<String>,
    server_name: Field<String>,
    client_cert_file: Field<String>,
    client_key_file: Field<String>,
}

/// Loads a route's upstream TLS settings (`None` when it sets none of the `tls_*` keys).
fn upstream_tls(
    errors: &mut Errors,
    path: &str,
    base: &Path,
    f: TlsFields,
) -> Option<Arc<UpstreamTls>> {
    use std::hash::{Hash as _, Hasher as _};
    let key = |k: &str| format!("{path}.{k}");
    let skip_verify = errors.or(&key("tls_skip_verify"), f.skip_verify, false);
    let ca_file = errors.opt(&key("tls_custom_ca_file"), f.custom_ca_file);
    let server_name = errors.opt(&key("tls_server_name"), f.server_name);
    let cert_file = errors.opt(&key("tls_client_cert_file"), f.client_cert_file);
    let key_file = errors.opt(&key("tls_client_key_file"), f.client_key_file);
    if !skip_verify
        && ca_file.is_none()
        && server_name.is_none()
        && cert_file.is_none()
        && key_file.is_none()
    {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    skip_verify.hash(&mut hasher);
    server_name.hash(&mut hasher);

    if let Some(name) = &server_name {
        if name.is_empty() || url::Host::parse(name).is_err() {
            errors.push(
                key("tls_server_name"),
                format!("{name:?} is not a host name"),
            );
        }
    }
    let ca = ca_file.and_then(|file| {
        let k = key("tls_custom_ca_file");
        let pem = read_pem_file(errors, &k, base, &file)?;
        pem.hash(&mut hasher);
        let ders = pem_certificates(errors, &k, &pem)?;
        let list: Vec<WrappedX509> = ders
            .into_iter()
            .map(|der| WrappedX509::new(der, pingora::utils::tls::parse_x509))
            .collect();
        Some(Arc::<CaType>::from(list))
    });
    let client_cert = match (cert_file, key_file) {
        (None, None) => None,
        (Some(_), None) => {
            errors.push(
                key("tls_client_key_file"),
                "is required when tls_client_cert_file is set",
            );
            None
        }
        (None, Some(_)) => {
            errors.push(
                key("tls_client_cert_file"),
                "is required when tls_client_key_file is set",
            );
            None
        }
        (Some(cert), Some(private)) => {
            let ck = key("tls_client_cert_file");
            let kk = key("tls_client_key_file");
            let certs = read_pem_file(errors, &ck, base, &cert)
                .and_then(|pem| pem_certificates(errors, &ck, &pem));
            let private = read_pem_file(errors, &kk, base, &private).and_then(|pem| {
                match rustls_pemfile::private_key(&mut pem.as_slice()) {
                    Ok(Some(k)) => Some(k.secret_der().to_vec()),
                    Ok(None) => {
                        errors.push(&kk, "holds no PEM private key");
                        None
                    }
                    Err(e) => {
                        errors.push(&kk, format!("invalid PEM: {e}"));
                        None
                    }
                }
            });
            match (certs, private) {
                (Some(certs), Some(private)) => {
                    certs.hash(&mut hasher);
                    Some(Arc::new(CertKey::new(certs, private)))
                }
                _ => None,
            }
        }
    };
    Some(Arc::new(UpstreamTls {
        skip_verify,
        server_name,
        ca,
        client_cert,
        group_key: hasher.finish(),
    }))
}

fn read_pem_file(errors: &mut Errors, path: &str, base: &Path, file: &str) -> Option<Vec<u8>> {
    let p = base.join(file);
    match std::fs::read(&p) {
        Ok(b) => Some(b),
        Err(e) => {
            errors.push(path, format!("cannot read {}: {e}", p.display()));
            None
        }
    }
}

/// The DER certificates of a PEM file: at least one, each a parseable X.509 certificate.
fn pem_certificates(errors: &mut Errors, path: &str, pem: &[u8]) -> Option<Vec<Vec<u8>>> {
    use x509_parser::prelude::FromDer as _;
    let mut out = Vec::new();
    for item in rustls_pemfile::certs(&mut &pem[..]) {
        match item {
            Ok(der) => {
                if x509_parser::certificate::X509Certificate::from_der(der.as_ref()).is_err() {
                    errors.push(path, "holds a certificate that does not parse");
                    return None;
                }
                out.push(der.to_vec());
            }
            Err(e) => {
                errors.push(path, format!("invalid PEM: {e}"));
                return None;
            }
        }
    }
    if out.is_empty() {
        errors.push(path, "holds no PEM certificate");
        return None;
    }
    Some(out)
}

/// Turns a `regex_rewrite_substitution` (`\1` as in Pomerium and Envoy, or `$1`) into the
/// `regex` crate's syntax (`${1}`), checking that every group exists.
fn regex_substitution(raw: &str, groups: usize) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len() + 8);
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' | '$' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    let mut n = 0usize;
                    while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                        n = n.saturating_mul(10).saturating_add(d as usize);
                        chars.next();
                    }
                    if n >= groups {
                        return Err(format!(
                            "refers to group {n}, but the pattern has {} group(s)",
                            groups.saturating_sub(1)
                        ));
                    }
                    out.push_str("${");
                    out.push_str(&n.to_string());
                    out.push('}');
                }
                Some(next) if next == c => {
                    chars.next();
                    out.push_str(if c == '$' { "$$" } else { "\\" });
                }
                _ if c == '$' => out.push_str("$$"),
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

fn socket_addr(errors: &mut Errors, path: &str, raw: &str) -> Option<SocketAddr> {
    match raw.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => match raw.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => Some(a),
            _ => {
                errors.push(path, format!("{raw:?} is not a host:port address"));
                None
            }
        },
    }
}

fn service_url(errors: &mut Errors, path: &str, raw: &str) -> Option<ServiceUrl> {
    let url = match Url::parse(raw) {
        Ok(u) => u,
        Err(e) => {
            errors.push(path, format!("invalid URL {raw:?}: {e}"));
            return None;
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        errors.push(path, "must be an http:// or https:// URL");
        return None;
    }
    let Some(host) = url.host_str().map(|h| h.to_ascii_lowercase()) else {
        errors.push(path, "must have a host");
        return None;
    };
    if url.path() != "/" || url.query().is_some() {
        errors.push(path, "must not have a path or query");
    }
    Some(ServiceUrl {
        port: url.port(),
        host,
        url,
    })
}

fn secret(errors: &mut Errors, path: &str, field: Field<String>) -> Option<Secret> {
    let raw = errors.required(path, field)?;
    match Secret::from_base64(raw.trim()) {
        Ok(s) => Some(s),
        Err(_) => {
            errors.push(
                path,
                "must be base64 of 32 random bytes (e.g. `head -c32 /dev/urandom | base64`)",
            );
            None
        }
    }
}

fn duration(errors: &mut Errors, path: &str, field: Field<String>, default: &str) -> Duration {
    let raw = errors.or(path, field, default.to_string());
    match humantime::parse_duration(&raw) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            errors.push(path, "must be longer than zero");
            humantime::parse_duration(default).unwrap_or(Duration::from_secs(30))
        }
        Err(e) => {
            errors.push(
                path,
                format!("invalid duration {raw:?}: {e} (e.g. \"30s\", \"14h\")"),
            );
            humantime::parse_duration(default).unwrap_or(Duration::from_secs(30))
        }
    }
}

fn header_name(errors: &mut Errors, path: &str, raw: &str) -> Option<HeaderName> {
    match HeaderName::from_bytes(raw.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            errors.push(path, format!("{raw:?} is not a valid header name"));
            None
        }
    }
}

fn signing_key(errors: &mut Errors, base: &Path, raw: String) -> Option<String> {
    use base64::Engine as _;
    let text = if raw.contains("-----BEGIN") {
        raw
    } else if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(raw.trim()) {
        match String::from_utf8(bytes) {
            Ok(s) if s.contains("-----BEGIN") => s,
            _ => {
                errors.push("signing_key", "base64 value does not hold a PEM key");
                return None;
            }
        }
    } else {
        let p = base.join(&raw);
        match std::fs::read_to_string(&p) {
            Ok(s) => s,
            Err(_) => {
                errors.push(
                    "signing_key",
                    "must be a PEM EC P-256 private key, base64 of one, or a file path",
                );
                return None;
            }
        }
    };
    match portcullis_auth::AssertionSigner::from_pem(&text) {
        Ok(_) => Some(text),
        Err(e) => {
            errors.push("signing_key", format!("unusable key: {e}"));
            None
        }
    }
}

fn from_matcher(errors: &mut Errors, path: &str, raw: &str) -> Option<FromMatcher> {
    // Url cannot parse `*.` hosts, so split the wildcard off first.
    let (scheme, rest) = match raw.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => {
            errors.push(path, format!("{raw:?} must be http://host or https://host"));
            return None;
        }
    };
    let tls = match scheme.as_str() {
        "http" => false,
        "https" => true,
        _ => {
            errors.push(
                path,
                format!("unsupported scheme {scheme:?} (http or https)"),
            );
            return None;
        }
    };
    let (wildcard, rest) = match rest.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let url = match Url::parse(&format!("{scheme}://{rest}")) {
        Ok(u) => u,
        Err(e) => {
            errors.push(path, format!("invalid URL {raw:?}: {e}"));
            return None;
        }
    };
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        errors.push(
            path,
            "must not have a path, query or fragment (use prefix, path or regex)",
        );
    }
    if !url.username().is_empty() || url.password().is_some() {
        errors.push(path, "must not have user information");
    }
    let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.contains('*') {
        errors.push(path, "invalid host");
        return None;
    }
    Some(FromMatcher {
        tls,
        host: if wildcard {
            HostPattern::Wildcard(format!(".{host}"))
        } else {
            HostPattern::Exact(host)
        },
        port: url.port(),
    })
}

fn upstream(errors: &mut Errors, path: &str, raw: &str) -> Option<Upstream> {
    let (url_part, weight) = match raw.rsplit_once(',') {
        Some((u, w)) => match w.trim().parse::<u32>() {
            Ok(w) if w > 0 => (u.trim(), w),
            _ => {
                errors.push(
                    path,
                    format!("invalid weight {w:?} (a whole number above 0)"),
                );
                return None;
            }
        },
        None => (raw.trim(), 1),
    };
    let url = match Url::parse(url_part) {
        Ok(u) => u,
        Err(e) => {
            errors.push(path, format!("invalid URL {url_part:?}: {e}"));
            return None;
        }
    };
    let (tls, h2c) = match url.scheme() {
        "http" => (false, false),
        "https" => (true, false),
        "h2c" => (false, true),
        other => {
            errors.push(
                path,
                format!("unsupported upstream scheme {other:?} (http, https or h2c)"),
            );
            return None;
        }
    };
    let Some(host) = url.host_str().map(str::to_string) else {
        errors.push(path, "upstream URL must have a host");
        return None;
    };
    let port = url.port().unwrap_or(if tls { 443 } else { 80 });
    // Resolve once, at load: the request path must never block on a lookup.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addr = match (bare, port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        _ => {
            errors.push(path, format!("cannot resolve upstream host {host:?}"));
            return None;
        }
    };
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let base_path = url.path().trim_end_matches('/').to_string();
    Some(Upstream {
        addr,
        tls,
        h2c,
        tls_settings: None,
        authority,
        sni: bare.to_string(),
        weight,
        base_path,
        url,
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod upstream_tests;
