//! `portcullis policy test`: evaluates a route's policy for a made-up request, offline.
//!
//! Operators use it to check a policy change before they ship it: the same route table and
//! the same compiled policies as the proxy, with the identity and request facts given on the
//! command line.

use std::net::IpAddr;

use portcullis_policy::{Identity, Request};
use url::Url;

use crate::config::Config;
use crate::request::path;
use crate::routes::RouteTable;

/// The request and identity to evaluate.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub url: String,
    pub email: Option<String>,
    pub user: Option<String>,
    pub groups: Vec<String>,
    /// `name=value`; a value that parses as JSON (a list, a number, a boolean) is taken as such.
    pub claims: Vec<String>,
    pub method: String,
    pub source_ip: Option<IpAddr>,
    /// RFC 3339; now when absent.
    pub time: Option<String>,
    pub anonymous: bool,
}

/// The verdict and a human explanation (first line `allow` or `deny`).
#[derive(Debug)]
pub struct Verdict {
    pub allowed: bool,
    pub report: String,
}

/// Evaluates `probe` against `config`; `Err` is a usage error (bad URL, time, claim).
pub fn evaluate(config: Config, probe: &Probe) -> Result<Verdict, String> {
    let url = Url::parse(&probe.url).map_err(|e| format!("--url {:?}: {e}", probe.url))?;
    let host = url
        .host_str()
        .ok_or_else(|| format!("--url {:?} has no host", probe.url))?
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let port = config.listener().port_of(&url);
    let path =
        path::normalize(url.path()).map_err(|e| format!("--url: {e} (the proxy answers 400)"))?;
    let now = match &probe.time {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|e| {
                format!("--time {t:?}: {e} (expected RFC 3339, e.g. 2026-01-31T09:30:00Z)")
            })?
            .unix_timestamp(),
        None => crate::clock::now_unix(),
    };
    let mut claims = serde_json::Map::new();
    for c in &probe.claims {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| format!("--claim {c:?}: expected name=value"))?;
        let value = match serde_json::from_str::<serde_json::Value>(v) {
            Ok(
                j @ (serde_json::Value::Array(_)
                | serde_json::Value::Number(_)
                | serde_json::Value::Bool(_)),
            ) => j,
            _ => serde_json::Value::String(v.to_string()),
        };
        claims.insert(k.to_string(), value);
    }
    let email = probe.email.clone().unwrap_or_default();
    if !email.is_empty() {
        claims
            .entry("email")
            .or_insert_with(|| email.clone().into());
    }
    let identity = (!probe.anonymous).then(|| {
        let user = probe
            .user
            .clone()
            .or_else(|| probe.email.clone())
            .unwrap_or_else(|| "user".to_string());
        Identity::new(user, email.clone(), probe.groups.clone(), claims)
    });

    let listener = config.listener();
    let table = RouteTable::new(config.routes, listener);
    let Some(route) = table.find(&host, port, &path) else {
        return Ok(Verdict {
            allowed: false,
            report: format!("deny\nno route matches {host}:{port}{path} (the proxy answers 404)"),
        });
    };
    let method = if probe.method.is_empty() {
        "GET"
    } else {
        probe.method.as_str()
    };
    let method = method.to_ascii_uppercase();
    let request = Request {
        identity: identity.as_ref(),
        method: &method,
        path: &path,
        source_ip: probe.source_ip,
        now_unix: now,
        headers: &(),
        client_certificate: None,
    };
    let decision = route.policy.evaluate(&request);
    let mut report = String::from(if decision.allowed { "allow" } else { "deny" });
    report.push_str(&format!(
        "\nroute: routes[{}] (from = {:?})\n{}",
        route.index,
        route.name,
        decision.explain(&route.policy)
    ));
    if !decision.allowed && identity.is_none() {
        report.push_str("\nan anonymous browser would be sent to sign in (401 for API clients)");
    }
    Ok(Verdict {
        allowed: decision.allowed,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let s = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        Config::from_toml(
            &format!(
                r#"
insecure_server = true
authenticate_service_url = "https://authenticate.example.com"
shared_secret = "{s}"
cookie_secret = "{s}"
idp_provider_url = "https://idp.example.com"
idp_client_id = "id"
idp_client_secret = "secret"
[[routes]]
from = "https://app.example.com"
to = "http://127.0.0.1:9"
policy = [
  {{ allow = {{ or = [ {{ groups = {{ has = "admins" }} }} ] }} }},
  {{ deny = {{ or = [ {{ http_method = "DELETE" }} ] }} }},
]
"#
            ),
            Vec::new(),
            std::path::Path::new("."),
        )
        .unwrap()
    }

    fn probe(groups: &[&str], method: &str) -> Probe {
        Probe {
            url: "https://app.example.com/x".into(),
            email: Some("a@example.com".into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            method: method.into(),
            ..Probe::default()
        }
    }

    #[test]
    fn allow_deny_and_reasons() {
        let v = evaluate(config(), &probe(&["admins"], "GET")).unwrap();
        assert!(v.allowed);
        assert!(
            v.report.starts_with("allow\nroute: routes[0]"),
            "{}",
            v.report
        );
        let v = evaluate(config(), &probe(&["admins"], "delete")).unwrap();
        assert!(!v.allowed);
        assert!(v.report.starts_with("deny\n"));
        assert!(v.report.contains("rule 1"), "{}", v.report);
        let v = evaluate(config(), &probe(&["users"], "GET")).unwrap();
        assert!(!v.allowed);
        let mut anon = probe(&[], "GET");
        anon.anonymous = true;
        assert!(evaluate(config(), &anon)
            .unwrap()
            .report
            .contains("sign in"));
    }

    #[test]
    fn usage_errors_and_unknown_hosts() {
        let mut p = probe(&[], "GET");
        p.url = "https://nowhere.example.com/".into();
        assert!(evaluate(config(), &p).unwrap().report.contains("404"));
        p.url = "not a url".into();
        assert!(evaluate(config(), &p).is_err());
        let mut p = probe(&[], "GET");
        p.time = Some("yesterday".into());
        assert!(evaluate(config(), &p).is_err());
    }
}
