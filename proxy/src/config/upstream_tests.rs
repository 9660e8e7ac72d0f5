//! Route keys for rewrites and upstreams: `regex_rewrite_*`, `tls_*`, `h2c://`, health checks.

use std::path::Path;
use std::time::Duration;

use super::values::regex_substitution;
use super::*;

const SECRET: &str = "q2Yd7n0cZ2Jm0Zy3bWl4ZC1zZWNyZXQtb2YtMzItYnk=";

fn with_route(route: &str, base: &Path) -> Result<Config, ConfigErrors> {
    let text = format!(
        r#"
insecure_server = true
address = "127.0.0.1:8443"
authenticate_service_url = "https://authenticate.example.com"
shared_secret = "{SECRET}"
cookie_secret = "{SECRET}"
[[routes]]
from = "https://app.example.com"
allow_public_unauthenticated_access = true
{route}
"#
    );
    Config::from_toml(&text, Vec::new(), base)
}

fn errors(route: &str) -> Vec<String> {
    match with_route(route, Path::new("/nonexistent")) {
        Ok(_) => panic!("expected errors for {route}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn regex_substitution_accepts_backslash_and_dollar_groups() {
    assert_eq!(regex_substitution(r"\2/x/\1", 3).unwrap(), "${2}/x/${1}");
    assert_eq!(regex_substitution("$1abc", 2).unwrap(), "${1}abc");
    assert_eq!(regex_substitution(r"a$$b\\c$", 1).unwrap(), r"a$$b\c$$");
    assert!(regex_substitution(r"\3", 3)
        .unwrap_err()
        .contains("group 3"));
}

#[test]
fn regex_rewrite_keys_are_checked_together() {
    let c = with_route(
        "to = \"http://127.0.0.1:9\"\nregex_rewrite_pattern = '^/a/(.*)$'\nregex_rewrite_substitution = '/b/\\1'",
        Path::new("."),
    )
    .unwrap();
    let (re, sub) = c.routes[0].options().regex_rewrite.as_ref().unwrap();
    assert_eq!(re.replace_all("/a/x/y", sub.as_str()), "/b/x/y");

    let e = errors("to = \"http://127.0.0.1:9\"\nregex_rewrite_pattern = '^/a/(.*)$'");
    assert!(
        e.iter()
            .any(|e| e.starts_with("routes[0].regex_rewrite_substitution: is required")),
        "{e:?}"
    );
    let e = errors(
        "to = \"http://127.0.0.1:9\"\nregex_rewrite_pattern = '^/a/(.*)$'\nregex_rewrite_substitution = '\\2'",
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("routes[0].regex_rewrite_substitution: refers to group 2")),
        "{e:?}"
    );
    let e = errors("to = \"http://127.0.0.1:9\"\nregex_rewrite_pattern = '('\nregex_rewrite_substitution = 'x'");
    assert!(
        e.iter()
            .any(|e| e.starts_with("routes[0].regex_rewrite_pattern: invalid regex")),
        "{e:?}"
    );
}

#[test]
fn tls_files_are_loaded_at_configuration_time_with_errors_naming_the_key() {
    let e = errors(
        "to = \"https://127.0.0.1:9\"\ntls_custom_ca_file = \"ca.pem\"\ntls_client_cert_file = \"c.pem\"",
    );
    assert!(
        e.iter().any(|e| e.starts_with("routes[0].tls_custom_ca_file: cannot read /nonexistent/ca.pem")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("routes[0].tls_client_key_file: is required")),
        "{e:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let e = match with_route(
        "to = \"https://127.0.0.1:9\"\ntls_custom_ca_file = \"junk.pem\"",
        dir.path(),
    ) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("junk accepted"),
    };
    assert!(
        e.contains("routes[0].tls_custom_ca_file: holds no PEM certificate"),
        "{e}"
    );

    let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.key"), ca.key_pair.serialize_pem()).unwrap();
    let c = with_route(
        "to = [\"https://127.0.0.1:9\", \"http://127.0.0.1:10\"]\ntls_custom_ca_file = \"ca.pem\"\ntls_server_name = \"backend.internal\"\ntls_client_cert_file = \"ca.pem\"\ntls_client_key_file = \"client.key\"",
        dir.path(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let u = &c.routes[0].upstreams;
    let t = u[0].tls_settings.as_ref().unwrap();
    assert_eq!(t.server_name.as_deref(), Some("backend.internal"));
    assert_eq!(t.ca.as_ref().unwrap().len(), 1);
    assert!(t.client_cert.is_some() && !t.skip_verify);
    assert!(
        u[1].tls_settings.is_none(),
        "plain http upstreams have no TLS"
    );
}

#[test]
fn h2c_upstreams() {
    let c = with_route("to = \"h2c://127.0.0.1:9\"", Path::new(".")).unwrap();
    let u = &c.routes[0].upstreams[0];
    assert!(u.h2c && !u.tls);
    assert_eq!(u.addr.port(), 9);
    let e = errors("to = \"ftp://127.0.0.1:9\"");
    assert!(e[0].contains("(http, https or h2c)"), "{e:?}");
}

#[test]
fn health_checks() {
    let c = with_route(
        "to = \"http://127.0.0.1:9\"\nhealth_check = \"/healthz\"",
        Path::new("."),
    )
    .unwrap();
    let h = c.routes[0].options().health_check.as_ref().unwrap();
    assert_eq!(h.path, "/healthz");
    assert_eq!(h.interval, Duration::from_secs(10));
    assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (2, 3));
    let c = with_route(
        "to = \"http://127.0.0.1:9\"\nhealth_check = { path = \"/up\", interval = \"1s\", timeout = \"500ms\", healthy_threshold = 1, unhealthy_threshold = 2 }",
        Path::new("."),
    )
    .unwrap();
    let h = c.routes[0].options().health_check.as_ref().unwrap();
    assert_eq!(h.interval, Duration::from_secs(1));
    assert_eq!(h.timeout, Duration::from_millis(500));
    assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (1, 2));
    let e = errors(
        "to = \"http://127.0.0.1:9\"\nhealth_check = { path = \"up\", intervall = \"1s\", unhealthy_threshold = 0 }",
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("routes[0].health_check.path: must be")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.contains(
            "routes[0].health_check.intervall: unknown key (did you mean \"interval\"?)"
        )),
        "{e:?}"
    );
    let e = errors(
        "to = \"http://127.0.0.1:9\"\nhealth_check = { path = \"/x\", unhealthy_threshold = 0 }",
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("routes[0].health_check.unhealthy_threshold: must be")),
        "{e:?}"
    );
}

#[test]
fn an_upstream_writes_back_as_its_url() {
    for (to, shown) in [
        ("http://127.0.0.1:9000/api/", "http://127.0.0.1:9000/api"),
        ("https://127.0.0.1", "https://127.0.0.1"),
        ("h2c://[::1]:81", "h2c://[::1]:81"),
    ] {
        let c = with_route(&format!("to = \"{to}\""), Path::new(".")).unwrap();
        assert_eq!(c.routes[0].upstreams[0].to_string(), shown);
    }
}
