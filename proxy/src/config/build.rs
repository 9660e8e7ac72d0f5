//! Converts the top-level keys of the file into a [`Config`], one function per section.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::header::HeaderName;
use portcullis_auth::Secret;
use portcullis_policy::Cidr;
use url::Url;

use super::errors::Errors;
use super::route::{build_route, Policies};
use super::runtime::{
    Config, CookieSettings, DatabrokerSettings, Forwarding, IdpSettings, LogFormat,
    RequestHeadLimits, Route, SameSite, ServiceUrl, Services, StorageType,
};
use super::schema::{self, top_level_keys};
use super::tls::{databroker_link_tls, signing_key};
use super::values::{duration, header_name, secret, service_url, socket_addr};

/// The whole configuration. The sections are read in file order, so that errors come out in
/// the order `portcullis check` has always printed them.
pub(super) fn build(mut file: schema::File, base: &Path, errors: &mut Errors) -> Option<Config> {
    errors.unknown(
        "",
        std::mem::take(&mut file.unknown).into_keys(),
        top_level_keys(),
    );

    let listener = listener(&mut file, base, errors);
    let proxy_runs = !matches!(listener.services, Some(Services::Databroker));
    let authenticate = authenticate(&mut file, errors);
    let cookie = cookie(&mut file, errors);
    let signing_key = errors
        .opt("signing_key", file.signing_key.take())
        .and_then(|raw| signing_key(errors, base, raw));
    let idp = idp(&mut file, errors);
    let identity_headers = identity_headers(&mut file, errors);
    let metrics_address = metrics_address(&mut file, listener.address, errors);
    let databroker = databroker(&mut file, base, listener.services, errors);
    let logging = logging(&mut file, errors);
    let stream_recheck_interval = duration(
        errors,
        "stream_recheck_interval",
        file.stream_recheck_interval.take(),
        "5s",
    );
    let request_head = request_head(&mut file, errors);
    let timeout_idle = duration(errors, "timeout_idle", file.timeout_idle.take(), "60s");
    let request_body_idle_timeout = duration(
        errors,
        "request_body_idle_timeout",
        file.request_body_idle_timeout.take(),
        "30s",
    );
    let forwarding = forwarding(&mut file, errors);
    let routes = routes(&mut file, base, errors);
    let needs_sign_in = proxy_runs && routes.iter().any(|r| !r.policy.is_public());
    let idp = idp.settings(needs_sign_in, errors);

    Some(Config {
        services: listener.services?,
        address: listener.address?,
        insecure_server: listener.insecure_server,
        certificates: listener.certificates,
        authenticate: authenticate.url?,
        shared_secret: authenticate.shared_secret?,
        cookie_secret: authenticate.cookie_secret?,
        cookie,
        signing_key,
        idp,
        jwt_claims_headers: identity_headers.claims,
        jwt_assertion_header: identity_headers.assertion?,
        metrics_address,
        databroker: databroker?,
        log_level: logging.level,
        log_format: logging.format,
        show_error_details: logging.show_error_details,
        stream_recheck_interval,
        request_head,
        timeout_idle,
        request_body_idle_timeout,
        forwarding,
        routes,
    })
}

/// `request_header_timeout`, `max_request_header_bytes` and `max_request_headers`.
fn request_head(file: &mut schema::File, errors: &mut Errors) -> RequestHeadLimits {
    let timeout = duration(
        errors,
        "request_header_timeout",
        file.request_header_timeout.take(),
        "30s",
    );
    let max_bytes = errors.or(
        "max_request_header_bytes",
        file.max_request_header_bytes.take(),
        DEFAULT_MAX_REQUEST_HEADER_BYTES,
    );
    if !(1024..=MAX_REQUEST_HEADER_BYTES).contains(&max_bytes) {
        errors.push(
            "max_request_header_bytes",
            format!("{max_bytes} is out of range (1024 to {MAX_REQUEST_HEADER_BYTES} bytes)"),
        );
    }
    let max_headers = errors.or(
        "max_request_headers",
        file.max_request_headers.take(),
        DEFAULT_MAX_REQUEST_HEADERS,
    );
    if !(1..=MAX_REQUEST_HEADERS).contains(&max_headers) {
        errors.push(
            "max_request_headers",
            format!("{max_headers} is out of range (1 to {MAX_REQUEST_HEADERS})"),
        );
    }
    RequestHeadLimits {
        timeout,
        max_bytes: usize::try_from(max_bytes.clamp(1024, MAX_REQUEST_HEADER_BYTES))
            .unwrap_or(usize::MAX),
        max_headers: usize::try_from(max_headers.clamp(1, MAX_REQUEST_HEADERS))
            .unwrap_or(usize::MAX),
    }
}

/// Envoy's default (and so Pomerium's).
const DEFAULT_MAX_REQUEST_HEADERS: u64 = 100;
/// Pingora parses no request head with more header fields.
const MAX_REQUEST_HEADERS: u64 = 256;

/// `use_proxy_protocol`, `xff_num_trusted_hops` and `trusted_proxies`.
fn forwarding(file: &mut schema::File, errors: &mut Errors) -> Forwarding {
    let use_proxy_protocol = errors.or("use_proxy_protocol", file.use_proxy_protocol.take(), false);
    let hops = errors.or("xff_num_trusted_hops", file.xff_num_trusted_hops.take(), 0);
    let listed = errors.or("trusted_proxies", file.trusted_proxies.take(), Vec::new());
    let mut trusted_proxies = Vec::with_capacity(listed.len());
    for (i, raw) in listed.iter().enumerate() {
        match Cidr::parse(raw) {
            Ok(net) => trusted_proxies.push(net),
            Err(e) => errors.push(format!("trusted_proxies[{i}]"), format!("{raw:?}: {e}")),
        }
    }
    Forwarding {
        use_proxy_protocol,
        xff_num_trusted_hops: usize::try_from(hops).unwrap_or(usize::MAX),
        trusted_proxies,
    }
}

/// 64 KiB, as the contract fixes.
const DEFAULT_MAX_REQUEST_HEADER_BYTES: u64 = 64 << 10;
/// Pingora reads no request head larger than 1 MiB.
const MAX_REQUEST_HEADER_BYTES: u64 = 1 << 20;

/// `services`, `address`, `insecure_server` and the listener's certificates.
struct Listener {
    services: Option<Services>,
    address: Option<SocketAddr>,
    insecure_server: bool,
    certificates: Vec<(PathBuf, PathBuf)>,
}

fn listener(file: &mut schema::File, base: &Path, errors: &mut Errors) -> Listener {
    let services = match errors
        .or("services", file.services.take(), "all".into())
        .as_str()
    {
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
    let raw_address = errors.or("address", file.address.take(), "0.0.0.0:443".into());
    let address = socket_addr(errors, "address", &raw_address);
    let insecure_server = errors.or("insecure_server", file.insecure_server.take(), false);

    let certificates = certificates(file, base, errors);
    let proxy_runs = !matches!(services, Some(Services::Databroker));
    if proxy_runs && !insecure_server && certificates.is_empty() {
        errors.push(
            "certificate_file",
            "is required unless insecure_server = true (or give [[certificates]])",
        );
    }
    Listener {
        services,
        address,
        insecure_server,
        certificates,
    }
}

/// `certificate_file` + `certificate_key_file` and `[[certificates]]`: (chain, key) pairs
/// whose files exist.
fn certificates(
    file: &mut schema::File,
    base: &Path,
    errors: &mut Errors,
) -> Vec<(PathBuf, PathBuf)> {
    // (key path for errors, certificate, key)
    let mut pairs: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    let cert_file = errors.opt("certificate_file", file.certificate_file.take());
    let key_file = errors.opt("certificate_key_file", file.certificate_key_file.take());
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
        .or("certificates", file.certificates.take(), Vec::new())
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
    pairs.into_iter().map(|(_, c, k)| (c, k)).collect()
}

/// `authenticate_service_url` and the two secrets.
struct Authenticate {
    url: Option<ServiceUrl>,
    shared_secret: Option<Secret>,
    cookie_secret: Option<Secret>,
}

fn authenticate(file: &mut schema::File, errors: &mut Errors) -> Authenticate {
    let url = match errors.required(
        "authenticate_service_url",
        file.authenticate_service_url.take(),
    ) {
        Some(raw) => service_url(errors, "authenticate_service_url", &raw),
        None => None,
    };
    Authenticate {
        url,
        shared_secret: secret(errors, "shared_secret", file.shared_secret.take()),
        cookie_secret: secret(errors, "cookie_secret", file.cookie_secret.take()),
    }
}

/// The `cookie_*` keys but `cookie_secret`.
fn cookie(file: &mut schema::File, errors: &mut Errors) -> CookieSettings {
    let name = errors.or("cookie_name", file.cookie_name.take(), "_portcullis".into());
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        errors.push(
            "cookie_name",
            format!("{name:?} is not a valid cookie name (letters, digits, - _ .)"),
        );
    }
    let expire = duration(errors, "cookie_expire", file.cookie_expire.take(), "14h");
    let same_site = match errors
        .or(
            "cookie_same_site",
            file.cookie_same_site.take(),
            "lax".into(),
        )
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
    CookieSettings {
        name,
        expire,
        domain: errors.opt("cookie_domain", file.cookie_domain.take()),
        secure: errors.or("cookie_secure", file.cookie_secure.take(), true),
        http_only: errors.or("cookie_http_only", file.cookie_http_only.take(), true),
        same_site,
    }
}

/// The `idp_*` keys as read; whether they are required is known only once the routes are.
struct Idp {
    provider_url: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scopes: Vec<String>,
}

fn idp(file: &mut schema::File, errors: &mut Errors) -> Idp {
    let provider = errors.or("idp_provider", file.idp_provider.take(), "oidc".into());
    if provider != "oidc" {
        errors.push(
            "idp_provider",
            format!("unknown provider {provider:?} (supported: oidc)"),
        );
    }
    let provider_url = errors.opt("idp_provider_url", file.idp_provider_url.take());
    if let Some(u) = &provider_url {
        if let Err(e) = Url::parse(u) {
            errors.push("idp_provider_url", format!("invalid URL {u:?}: {e}"));
        }
    }
    let client_id = errors.opt("idp_client_id", file.idp_client_id.take());
    let client_secret = errors.opt("idp_client_secret", file.idp_client_secret.take());
    let scopes = errors.or(
        "idp_scopes",
        file.idp_scopes.take(),
        ["openid", "profile", "email", "offline_access"]
            .map(String::from)
            .to_vec(),
    );
    if !scopes.iter().any(|s| s == "openid") {
        errors.push("idp_scopes", "must include \"openid\"");
    }
    Idp {
        provider_url,
        client_id,
        client_secret,
        scopes,
    }
}

// === impl Idp ===

impl Idp {
    /// The IdP settings when all three keys are given; a missing one is an error only when
    /// some route served by this process needs sign-in.
    fn settings(self, needs_sign_in: bool, errors: &mut Errors) -> Option<IdpSettings> {
        match (self.provider_url, self.client_id, self.client_secret) {
            (Some(provider_url), Some(client_id), Some(client_secret)) => Some(IdpSettings {
                provider_url,
                client_id,
                client_secret,
                scopes: self.scopes,
            }),
            (url, id, secret) => {
                if needs_sign_in {
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
        }
    }
}

/// `jwt_assertion_header` and `jwt_claims_headers`: the identity headers sent upstream.
struct IdentityHeaders {
    assertion: Option<HeaderName>,
    claims: Vec<(HeaderName, String)>,
}

fn identity_headers(file: &mut schema::File, errors: &mut Errors) -> IdentityHeaders {
    let raw_assertion = errors.or(
        "jwt_assertion_header",
        file.jwt_assertion_header.take(),
        "X-Portcullis-Jwt-Assertion".into(),
    );
    let assertion = header_name(errors, "jwt_assertion_header", &raw_assertion);
    let mut claims = Vec::new();
    for (name, claim) in errors.or(
        "jwt_claims_headers",
        file.jwt_claims_headers.take(),
        BTreeMap::new(),
    ) {
        if let Some(h) = header_name(errors, &format!("jwt_claims_headers.{name}"), &name) {
            claims.push((h, claim));
        }
    }
    IdentityHeaders { assertion, claims }
}

fn metrics_address(
    file: &mut schema::File,
    address: Option<SocketAddr>,
    errors: &mut Errors,
) -> Option<SocketAddr> {
    let metrics_address = errors
        .opt("metrics_address", file.metrics_address.take())
        .and_then(|raw| socket_addr(errors, "metrics_address", &raw));
    if let (Some(m), Some(a)) = (metrics_address, address) {
        if m == a {
            errors.push("metrics_address", "must differ from address");
        }
    }
    metrics_address
}

/// The `databroker_*` keys, the `grpc_*` keys and `session_cache_max_mib`.
fn databroker(
    file: &mut schema::File,
    base: &Path,
    services: Option<Services>,
    errors: &mut Errors,
) -> Option<DatabrokerSettings> {
    let storage_type = match errors
        .or(
            "databroker_storage_type",
            file.databroker_storage_type.take(),
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
        file.databroker_storage_connection_string.take(),
    );
    if storage_type == StorageType::Postgres && connection_string.is_none() {
        errors.push(
            "databroker_storage_connection_string",
            "is required when databroker_storage_type = \"postgres\"",
        );
    }
    let storage_timeout = duration(
        errors,
        "databroker_storage_timeout",
        file.databroker_storage_timeout.take(),
        "2s",
    );
    let service_url = databroker_service_url(file, errors);
    let raw_grpc = errors.or(
        "grpc_address",
        file.grpc_address.take(),
        "127.0.0.1:5443".into(),
    );
    let grpc_address = socket_addr(errors, "grpc_address", &raw_grpc);
    let link = databroker_link_tls(file, base, services, service_url.as_ref(), errors);
    let cache_staleness = duration(
        errors,
        "databroker_cache_staleness",
        file.databroker_cache_staleness.take(),
        "5m",
    );
    let cache_mib = errors.or(
        "session_cache_max_mib",
        file.session_cache_max_mib.take(),
        512,
    );
    if cache_mib == 0 || cache_mib > 1 << 20 {
        errors.push(
            "session_cache_max_mib",
            format!("{cache_mib} is out of range (1 to 1048576 MiB)"),
        );
    }
    Some(DatabrokerSettings {
        storage_type,
        connection_string,
        storage_timeout,
        service_url,
        service_tls: link.client,
        grpc_address: grpc_address?,
        grpc_tls: link.server,
        tls_digest: link.digest,
        cache_staleness,
        session_cache_bytes: cache_mib.saturating_mul(1 << 20),
    })
}

fn databroker_service_url(file: &mut schema::File, errors: &mut Errors) -> Option<Url> {
    let url = errors
        .opt("databroker_service_url", file.databroker_service_url.take())
        .and_then(|raw| match Url::parse(&raw) {
            Ok(u) => Some(u),
            Err(e) => {
                errors.push("databroker_service_url", format!("invalid URL: {e}"));
                None
            }
        })?;
    // https:// is gRPC over TLS (the `databroker_tls_*` keys); http:// is plain HTTP/2.
    if !matches!(url.scheme(), "http" | "https") {
        errors.push(
            "databroker_service_url",
            format!(
                "scheme {:?} is not supported (use https://host:port, or http://host:port \
                 on a private network)",
                url.scheme()
            ),
        );
    }
    if url.host_str().is_none() {
        errors.push("databroker_service_url", "has no host");
    }
    Some(url)
}

/// `log_level`, `log_format` and `show_error_details`.
struct Logging {
    level: String,
    format: LogFormat,
    show_error_details: bool,
}

fn logging(file: &mut schema::File, errors: &mut Errors) -> Logging {
    let level = errors.or("log_level", file.log_level.take(), "info".into());
    if !["trace", "debug", "info", "warn", "error", "off"].contains(&level.as_str()) {
        errors.push(
            "log_level",
            format!("unknown level {level:?} (trace, debug, info, warn, error, off)"),
        );
    }
    let format = match errors
        .or("log_format", file.log_format.take(), "json".into())
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
    Logging {
        level,
        format,
        show_error_details: errors.or("show_error_details", file.show_error_details.take(), false),
    }
}

/// Every `[[routes]]` table that converts; the others leave their errors.
fn routes(file: &mut schema::File, base: &Path, errors: &mut Errors) -> Vec<Route> {
    let raw_routes = errors.or("routes", file.routes.take(), Vec::new());
    let mut routes = Vec::with_capacity(raw_routes.len());
    let mut policies = Policies::default();
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
        if let Some(r) = build_route(index, &path, route, base, errors, &mut policies) {
            routes.push(r);
        }
    }
    routes.shrink_to_fit();
    routes
}
