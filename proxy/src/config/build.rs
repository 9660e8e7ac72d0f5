//! Converts the top-level keys of the file into a [`Config`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use url::Url;

use super::errors::Errors;
use super::route::build_route;
use super::runtime::{
    Config, CookieSettings, DatabrokerSettings, IdpSettings, LogFormat, SameSite, Services,
    StorageType,
};
use super::schema::{self, TOP_LEVEL_KEYS};
use super::tls::signing_key;
use super::values::{duration, header_name, secret, service_url, socket_addr};

pub(super) fn build(file: schema::File, base: &Path, errors: &mut Errors) -> Option<Config> {
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
