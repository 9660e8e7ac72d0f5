//! Converts one `[[routes]]` table into a [`Route`], one function per group of keys.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use portcullis_policy::Policy;
use regex::Regex;

use super::errors::Errors;
use super::runtime::{
    FromMatcher, HeaderTemplate, HealthCheck, PathMatcher, Route, RouteOptions, Upstream,
};
use super::schema::{self, health_check_keys, route_keys, Field, OneOrMany};
use super::tls::upstream_tls;
use super::values::{duration, from_matcher, header_name, regex_substitution, upstream};

/// The route at `index` (`path` is its key path, `routes[index]`). The keys are read in the
/// order `portcullis check` has always reported their errors.
/// The policies compiled so far while a file loads, by their text: routes that repeat a
/// policy (generated configurations often do) share one compiled copy.
#[derive(Default)]
pub(super) struct Policies(HashMap<String, Policy>);

pub(super) fn build_route(
    index: usize,
    path: &str,
    mut raw: schema::Route,
    base: &Path,
    errors: &mut Errors,
    policies: &mut Policies,
) -> Option<Route> {
    let key = |k: &str| format!("{path}.{k}");
    errors.unknown(
        path,
        std::mem::take(&mut raw.unknown).into_keys(),
        route_keys(),
    );

    let (name, from) = from(errors, path, &mut raw);
    let mut upstreams = upstreams(errors, path, &mut raw);
    let path_matcher = path_matcher(errors, path, &mut raw);
    let (prefix_rewrite, regex_rewrite) = rewrites(errors, path, &mut raw);
    let tls_settings = upstream_tls(errors, path, base, &mut raw);
    for u in &mut upstreams {
        if u.tls {
            u.tls_settings = tls_settings.clone();
        }
    }
    let health_check = errors
        .opt(&key("health_check"), raw.health_check.take())
        .and_then(|v| health_check(errors, &key("health_check"), v));
    let (preserve_host_header, host_rewrite) = host_header(errors, path, &mut raw);
    let set_request_headers = set_request_headers(errors, path, &mut raw);
    let remove_request_headers = remove_request_headers(errors, path, &mut raw);
    let set_response_headers = set_response_headers(errors, path, &mut raw);
    let timeout = duration(errors, &key("timeout"), raw.timeout.take(), "30s");
    let idle_timeout = duration(errors, &key("idle_timeout"), raw.idle_timeout.take(), "5m");
    let allow_websockets = errors.or(&key("allow_websockets"), raw.allow_websockets.take(), false);
    let public = errors.or(
        &key("allow_public_unauthenticated_access"),
        raw.allow_public_unauthenticated_access.take(),
        false,
    );
    let any_user = errors.or(
        &key("allow_any_authenticated_user"),
        raw.allow_any_authenticated_user.take(),
        false,
    );
    let pass_identity_headers = errors.or(
        &key("pass_identity_headers"),
        raw.pass_identity_headers.take(),
        false,
    );
    let policy = policy(errors, path, raw.policy.take(), public, any_user, policies);

    Some(Route {
        index,
        name: name?,
        from: from?,
        path: path_matcher,
        upstreams,
        preserve_host_header,
        timeout,
        idle_timeout,
        allow_websockets,
        pass_identity_headers,
        policy,
        options: RouteOptions {
            prefix_rewrite,
            regex_rewrite,
            host_rewrite,
            set_request_headers,
            remove_request_headers,
            set_response_headers,
            health_check,
        }
        .boxed_unless_empty(),
    })
}

/// `from`: the route's name (the URL as written) and its host matcher.
fn from(
    errors: &mut Errors,
    path: &str,
    raw: &mut schema::Route,
) -> (Option<String>, Option<FromMatcher>) {
    let key = format!("{path}.from");
    let name = errors.required(&key, raw.from.take());
    let from = name.as_deref().and_then(|f| from_matcher(errors, &key, f));
    (name, from)
}

/// `to`: one upstream URL or a list of them.
fn upstreams(errors: &mut Errors, path: &str, raw: &mut schema::Route) -> Vec<Upstream> {
    let key = format!("{path}.to");
    let mut upstreams = Vec::new();
    match errors.required(&key, raw.to.take()) {
        Some(OneOrMany::One(s)) => {
            upstreams.extend(upstream(errors, &key, &s));
        }
        Some(OneOrMany::Many(list)) => {
            if list.is_empty() {
                errors.push(&key, "must name at least one upstream");
            }
            for (i, s) in list.iter().enumerate() {
                upstreams.extend(upstream(errors, &format!("{path}.to[{i}]"), s));
            }
        }
        None => {}
    }
    // Kept for the configuration's lifetime, once per route: no spare capacity.
    upstreams.shrink_to_fit();
    upstreams
}

/// `prefix`, `path` or `regex` (at most one): which request paths the route serves.
fn path_matcher(errors: &mut Errors, path: &str, raw: &mut schema::Route) -> PathMatcher {
    let key = |k: &str| format!("{path}.{k}");
    let prefix = errors.opt(&key("prefix"), raw.prefix.take());
    let exact = errors.opt(&key("path"), raw.path.take());
    let regex = errors.opt(&key("regex"), raw.regex.take());
    match (prefix, exact, regex) {
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
    }
}

/// `prefix_rewrite`, or `regex_rewrite_pattern` with `regex_rewrite_substitution`.
type Rewrites = (Option<String>, Option<(Regex, String)>);

fn rewrites(errors: &mut Errors, path: &str, raw: &mut schema::Route) -> Rewrites {
    let key = |k: &str| format!("{path}.{k}");
    let prefix_rewrite = errors.opt(&key("prefix_rewrite"), raw.prefix_rewrite.take());
    if let Some(p) = &prefix_rewrite {
        if !p.starts_with('/') {
            errors.push(key("prefix_rewrite"), "must start with /");
        }
    }
    let regex_rewrite = match (
        errors.opt(
            &key("regex_rewrite_pattern"),
            raw.regex_rewrite_pattern.take(),
        ),
        errors.opt(
            &key("regex_rewrite_substitution"),
            raw.regex_rewrite_substitution.take(),
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
    (prefix_rewrite, regex_rewrite)
}

/// `preserve_host_header` or `host_rewrite`: the `Host` the upstream sees.
fn host_header(errors: &mut Errors, path: &str, raw: &mut schema::Route) -> (bool, Option<String>) {
    let key = |k: &str| format!("{path}.{k}");
    let preserve_host_header = errors.or(
        &key("preserve_host_header"),
        raw.preserve_host_header.take(),
        false,
    );
    let host_rewrite = errors.opt(&key("host_rewrite"), raw.host_rewrite.take());
    if preserve_host_header && host_rewrite.is_some() {
        errors.push(
            key("host_rewrite"),
            "cannot be combined with preserve_host_header",
        );
    }
    (preserve_host_header, host_rewrite)
}

fn set_request_headers(
    errors: &mut Errors,
    path: &str,
    raw: &mut schema::Route,
) -> Vec<(HeaderName, HeaderTemplate)> {
    let mut headers = Vec::new();
    for (name, value) in errors.or(
        &format!("{path}.set_request_headers"),
        raw.set_request_headers.take(),
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
                headers.push((h, t));
            }
            Err(e) => errors.push(p, e),
        }
    }
    headers
}

fn remove_request_headers(
    errors: &mut Errors,
    path: &str,
    raw: &mut schema::Route,
) -> Vec<HeaderName> {
    let key = format!("{path}.remove_request_headers");
    let mut headers = Vec::new();
    for name in errors.or(&key, raw.remove_request_headers.take(), Vec::new()) {
        if let Some(h) = header_name(errors, &key, &name) {
            headers.push(h);
        }
    }
    headers
}

fn set_response_headers(
    errors: &mut Errors,
    path: &str,
    raw: &mut schema::Route,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::new();
    for (name, value) in errors.or(
        &format!("{path}.set_response_headers"),
        raw.set_response_headers.take(),
        BTreeMap::new(),
    ) {
        let p = format!("{path}.set_response_headers.{name}");
        let Some(h) = header_name(errors, &p, &name) else {
            continue;
        };
        match HeaderValue::from_str(&value) {
            Ok(v) => headers.push((h, v)),
            Err(_) => errors.push(p, "is not a valid header value"),
        }
    }
    headers
}

/// `policy`, `allow_public_unauthenticated_access` and `allow_any_authenticated_user`
/// combined into the route's policy (deny all when none is given).
fn policy(
    errors: &mut Errors,
    path: &str,
    raw: Field<toml::Value>,
    public: bool,
    any_user: bool,
    policies: &mut Policies,
) -> Policy {
    let key = |k: &str| format!("{path}.{k}");
    let parsed = match errors.opt(&key("policy"), raw) {
        // Parsing depends on the value alone (the path only names errors), so an equal text
        // compiles to an equal policy; only policies that compiled are shared.
        Some(value) => {
            let text = value.to_string();
            match policies.0.get(&text) {
                Some(p) => Some(p.clone()),
                None => match Policy::parse(&value, &key("policy")) {
                    Ok(p) => {
                        policies.0.insert(text, p.clone());
                        Some(p)
                    }
                    Err(list) => {
                        for e in list {
                            errors.push(e.path, e.message);
                        }
                        None
                    }
                },
            }
        }
        None => None,
    };
    if public {
        if any_user || parsed.is_some() {
            errors.push(
                key("allow_public_unauthenticated_access"),
                "cannot be combined with allow_any_authenticated_user or policy (a public route has no policy)",
            );
        }
        Policy::public()
    } else {
        let p = parsed.unwrap_or_else(Policy::deny_all);
        if any_user {
            p.allow_any_authenticated_user()
        } else {
            p
        }
    }
}
/// `health_check = "/path"` or a table of [`schema::HealthCheck`] keys.
fn health_check(errors: &mut Errors, path: &str, value: toml::Value) -> Option<HealthCheck> {
    let table = match value {
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
    let known = health_check_keys();
    let unknown: Vec<String> = table
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .cloned()
        .collect();
    errors.unknown(path, unknown, known);
    let raw: schema::HealthCheck = match toml::Value::Table(table).try_into() {
        Ok(raw) => raw,
        Err(e) => {
            errors.push(path, e.to_string());
            return None;
        }
    };
    let key = |k: &str| format!("{path}.{k}");
    let check_path = match raw.path {
        Field::Value(p)
            if p.starts_with('/') && http::uri::PathAndQuery::try_from(p.as_str()).is_ok() =>
        {
            p
        }
        Field::Value(_) | Field::Invalid(_) => {
            errors.push(key("path"), "must be a path starting with /");
            return None;
        }
        Field::Missing => {
            errors.push(key("path"), "is required");
            return None;
        }
    };
    let mut dur = |k: &str, field: Field<String>, default: &str| -> Duration {
        let field = match field {
            Field::Invalid(_) => Field::Invalid("must be a duration string like \"5s\"".into()),
            other => other,
        };
        duration(errors, &key(k), field, default)
    };
    let interval = dur("interval", raw.interval, "10s");
    let timeout = dur("timeout", raw.timeout, "2s");
    let mut threshold = |k: &str, field: Field<i64>, default: u32| -> u32 {
        match field {
            Field::Missing => default,
            Field::Value(n) if (1..=100).contains(&n) => n as u32,
            Field::Value(_) | Field::Invalid(_) => {
                errors.push(key(k), "must be a whole number from 1 to 100");
                default
            }
        }
    };
    let healthy_threshold = threshold("healthy_threshold", raw.healthy_threshold, 2);
    let unhealthy_threshold = threshold("unhealthy_threshold", raw.unhealthy_threshold, 3);
    Some(HealthCheck {
        path: check_path,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    })
}
