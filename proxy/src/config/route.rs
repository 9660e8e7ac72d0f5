//! Converts one `[[routes]]` table into a [`Route`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use http::header::HeaderValue;
use portcullis_policy::Policy;
use regex::Regex;

use super::errors::Errors;
use super::runtime::{HeaderTemplate, HealthCheck, PathMatcher, Route};
use super::schema::{self, Field, OneOrMany, ROUTE_KEYS};
use super::tls::{upstream_tls, TlsFields};
use super::values::{duration, from_matcher, header_name, regex_substitution, upstream};

pub(super) fn build_route(
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
