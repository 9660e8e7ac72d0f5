use std::path::Path;
use std::time::Duration;

use super::*;

const SECRET: &str = "q2Yd7n0cZ2Jm0Zy3bWl4ZC1zZWNyZXQtb2YtMzItYnk=";

fn base() -> String {
    format!(
        r#"
insecure_server = true
address = "127.0.0.1:8443"
authenticate_service_url = "https://authenticate.example.com"
shared_secret = "{SECRET}"
cookie_secret = "{SECRET}"
idp_provider_url = "https://idp.example.com"
idp_client_id = "portcullis"
idp_client_secret = "secret"
"#
    )
}

fn load(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml(text, Vec::new(), Path::new("."))
}

fn load_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    Config::from_toml(
        text,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        Path::new("."),
    )
}

fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_config_has_contract_defaults() {
    let c = load(&format!(
        "{}\n[[routes]]\nfrom = \"https://app.example.com\"\nto = \"http://127.0.0.1:9\"\nallow_any_authenticated_user = true\n",
        base()
    ))
    .unwrap();
    assert_eq!(c.services, Services::All);
    assert_eq!(c.cookie.name, "_portcullis");
    assert_eq!(c.cookie.expire, Duration::from_secs(14 * 3600));
    assert!(c.cookie.secure && c.cookie.http_only);
    assert_eq!(c.cookie.same_site, SameSite::Lax);
    assert_eq!(
        c.jwt_assertion_header.as_str(),
        "x-portcullis-jwt-assertion"
    );
    assert_eq!(
        c.idp.unwrap().scopes,
        ["openid", "profile", "email", "offline_access"]
    );
    assert_eq!(c.log_format, LogFormat::Json);
    let r = &c.routes[0];
    assert!(matches!(&r.path, PathMatcher::Prefix(p) if p == "/"));
    assert_eq!(r.timeout, Duration::from_secs(30));
    assert_eq!(r.idle_timeout, Duration::from_secs(300));
    assert_eq!(r.from.host, HostPattern::Exact("app.example.com".into()));
}

#[test]
fn every_error_is_reported_with_its_path() {
    let text = format!(
        r#"{}
cookie_expire = "forever"
cokie_name = "x"

[[routes]]
from = "https://app.example.com"
to = "http://127.0.0.1:9"
policy = {{ allow = {{ or = [ {{ emial = {{ is = "a@b.c" }} }} ] }} }}

[[routes]]
from = "https://b.example.com/path"
to = "notaurl"
prefix = "/a"
path = "/b"
alow_websockets = true
"#,
        base()
    );
    let errs = errors(&text);
    let joined = errs.join("\n");
    for expected in [
        "cookie_expire: invalid duration",
        "cokie_name: unknown key (did you mean \"cookie_name\"?)",
        "routes[0].policy",
        "emial",
        "routes[1].from: must not have a path",
        "routes[1].to: invalid URL",
        "routes[1]: at most one of prefix, path and regex",
        "routes[1].alow_websockets: unknown key (did you mean \"allow_websockets\"?)",
    ] {
        assert!(
            joined.contains(expected),
            "missing {expected:?} in:\n{joined}"
        );
    }
    assert!(errs.len() >= 7, "{joined}");
}

#[test]
fn stream_recheck_interval_defaults_parses_and_names_itself_in_errors() {
    let c = load(&base()).unwrap();
    assert_eq!(c.stream_recheck_interval, Duration::from_secs(5));
    let c = load(&format!(
        "{}\nstream_recheck_interval = \"500ms\"\n",
        base()
    ))
    .unwrap();
    assert_eq!(c.stream_recheck_interval, Duration::from_millis(500));
    let c = load_env(&base(), &[("PORTCULLIS_STREAM_RECHECK_INTERVAL", "2s")]).unwrap();
    assert_eq!(c.stream_recheck_interval, Duration::from_secs(2));
    for bad in ["\"soon\"", "\"0s\"", "5"] {
        let errs = errors(&format!("{}\nstream_recheck_interval = {bad}\n", base())).join("\n");
        assert!(errs.contains("stream_recheck_interval: "), "{bad}: {errs}");
    }
    let errs = errors(&format!("{}\nstream_recheck_intervall = \"5s\"\n", base())).join("\n");
    assert!(
        errs.contains("did you mean \"stream_recheck_interval\""),
        "{errs}"
    );
}

#[test]
fn required_keys_and_bad_secrets() {
    let errs = errors("insecure_server = true\nshared_secret = \"short\"\n").join("\n");
    assert!(
        errs.contains("authenticate_service_url: is required"),
        "{errs}"
    );
    assert!(
        errs.contains("shared_secret: must be base64 of 32 random bytes"),
        "{errs}"
    );
    assert!(errs.contains("cookie_secret: is required"), "{errs}");
}

#[test]
fn wrong_types_name_the_key() {
    let errs = errors(&format!("{}\ncookie_secure = \"yes\"\n", base())).join("\n");
    assert!(errs.contains("cookie_secure: invalid type"), "{errs}");
}

#[test]
fn tls_needs_a_certificate_unless_insecure() {
    let text = base().replace("insecure_server = true", "insecure_server = false");
    let errs = errors(&text).join("\n");
    assert!(errs.contains("certificate_file: is required"), "{errs}");
    let errs = errors(&format!(
        "{text}\ncertificate_file = \"/nonexistent/c.pem\"\ncertificate_key_file = \"/nonexistent/k.pem\"\n"
    ))
    .join("\n");
    assert!(
        errs.contains("certificate_file: certificate file /nonexistent/c.pem does not exist"),
        "{errs}"
    );
}

#[test]
fn environment_overrides_win_over_the_file() {
    let other = "b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzLWV4YWN0bHk=";
    let c = load_env(
        &base(),
        &[
            ("PORTCULLIS_ADDRESS", "127.0.0.1:9999"),
            ("PORTCULLIS_COOKIE_NAME", "_env"),
            ("PORTCULLIS_COOKIE_SECURE", "false"),
            ("PORTCULLIS_SHARED_SECRET", other),
            ("PORTCULLIS_NOT_A_KEY", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(c.address.port(), 9999);
    assert_eq!(c.cookie.name, "_env");
    assert!(!c.cookie.secure);
    let errs = match load_env(&base(), &[("PORTCULLIS_COOKIE_SECURE", "maybe")]) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a non-boolean override must fail"),
    };
    assert!(errs.contains("cookie_secure"), "{errs}");
}

#[test]
fn route_shortcuts_map_onto_the_policy() {
    let c = load(&format!(
        r#"{}
[[routes]]
from = "https://public.example.com"
to = "http://127.0.0.1:9"
allow_public_unauthenticated_access = true
[[routes]]
from = "https://nobody.example.com"
to = "http://127.0.0.1:9"
"#,
        base()
    ))
    .unwrap();
    assert!(c.routes[0].policy.is_public());
    assert!(!c.routes[1].policy.is_public());

    let errs = errors(&format!(
        r#"{}
[[routes]]
from = "https://public.example.com"
to = "http://127.0.0.1:9"
allow_public_unauthenticated_access = true
allow_any_authenticated_user = true
"#,
        base()
    ))
    .join("\n");
    assert!(errs.contains("cannot be combined"), "{errs}");
}

#[test]
fn wildcard_hosts_weights_and_paths_on_to() {
    let c = load(&format!(
        r#"{}
[[routes]]
from = "https://*.Example.com"
to = ["http://127.0.0.1:9/base/,3", "http://127.0.0.1:10"]
allow_any_authenticated_user = true
"#,
        base()
    ))
    .unwrap();
    let r = &c.routes[0];
    assert_eq!(r.from.host, HostPattern::Wildcard(".example.com".into()));
    assert_eq!(r.upstreams[0].weight, 3);
    assert_eq!(r.upstreams[0].base_path, "/base");
    assert_eq!(r.upstreams[1].weight, 1);
    assert_eq!(r.upstreams[1].authority, "127.0.0.1:10");
}

#[test]
fn header_templates() {
    assert_eq!(
        HeaderTemplate::parse("Bearer ${portcullis.access_token}").unwrap(),
        HeaderTemplate(vec![
            TemplatePart::Literal("Bearer ".into()),
            TemplatePart::AccessToken
        ])
    );
    assert_eq!(
        HeaderTemplate::parse("cost: $$5").unwrap(),
        HeaderTemplate(vec![TemplatePart::Literal("cost: $5".into())])
    );
    assert!(HeaderTemplate::parse("${portcullis.password}").is_err());
    assert!(HeaderTemplate::parse("${portcullis.jwt").is_err());
}

#[test]
fn shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = Config::from_toml(&text, Vec::new(), path.parent().unwrap()) {
            panic!("{}:\n{e}", path.display());
        }
        checked += 1;
    }
    assert!(checked > 0, "no configs in {}", dir.display());
}

#[test]
fn routes_are_moved_not_copied_but_still_checked() {
    // `routes` of the wrong type, and a route that is not a table
    let errs = errors(&format!("{}\nroutes = \"app\"\n", base()));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("routes") && e.contains("invalid type")),
        "{errs:?}"
    );
    let errs = errors(&format!("{}\nroutes = [\"app\"]\n", base()));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("routes[0]: must be a table")),
        "{errs:?}"
    );
    // policy, health_check and unknown keys of a route all still arrive
    let text = format!(
        r#"{}
[[routes]]
from = "https://app.example.com"
to = "http://127.0.0.1:9000"
policy = {{ allow = {{ or = [ {{ emial = "a@example.com" }} ] }} }}
polcy = "x"
"#,
        base()
    );
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("routes[0].policy") && e.contains("emial")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("routes[0].polcy") && e.contains("did you mean \"policy\"")),
        "{errs:?}"
    );
}

#[test]
fn session_cache_bound_is_in_mib_and_checked() {
    let route = "[[routes]]\nfrom = \"https://app.example.com\"\nto = \"http://127.0.0.1:9\"\nallow_any_authenticated_user = true\n";
    let c = load(&format!("{}\n{route}", base())).unwrap();
    assert_eq!(c.databroker.session_cache_bytes, 512 << 20);
    let c = load(&format!("session_cache_max_mib = 64\n{}\n{route}", base())).unwrap();
    assert_eq!(c.databroker.session_cache_bytes, 64 << 20);
    let e = errors(&format!("session_cache_max_mib = 0\n{}\n{route}", base()));
    assert!(
        e.iter().any(|e| e.starts_with("session_cache_max_mib")),
        "{e:?}"
    );
    let e = errors(&format!(
        "session_cache_max_mib = \"lots\"\n{}\n{route}",
        base()
    ));
    assert!(
        e.iter().any(|e| e.starts_with("session_cache_max_mib")),
        "{e:?}"
    );
}

#[test]
fn session_cache_bound_can_come_from_the_environment() {
    let route = "[[routes]]\nfrom = \"https://app.example.com\"\nto = \"http://127.0.0.1:9\"\nallow_any_authenticated_user = true\n";
    let c = load_env(
        &format!("{}\n{route}", base()),
        &[("PORTCULLIS_SESSION_CACHE_MAX_MIB", "64")],
    )
    .unwrap();
    assert_eq!(c.databroker.session_cache_bytes, 64 << 20);
}

#[test]
fn request_head_limits_default_parse_and_name_themselves_in_errors() {
    let c = load(&base()).unwrap();
    assert_eq!(c.request_head.timeout, Duration::from_secs(30));
    assert_eq!(c.request_head.max_bytes, 65536);
    assert_eq!(c.request_head.max_headers, 100);
    let c = load(&format!(
        "{}\nrequest_header_timeout = \"2s\"\nmax_request_header_bytes = 8192\nmax_request_headers = 20\n",
        base()
    ))
    .unwrap();
    assert_eq!(c.request_head.timeout, Duration::from_secs(2));
    assert_eq!(c.request_head.max_bytes, 8192);
    assert_eq!(c.request_head.max_headers, 20);
    let c = load_env(
        &base(),
        &[
            ("PORTCULLIS_REQUEST_HEADER_TIMEOUT", "10s"),
            ("PORTCULLIS_MAX_REQUEST_HEADER_BYTES", "4096"),
            ("PORTCULLIS_MAX_REQUEST_HEADERS", "50"),
        ],
    )
    .unwrap();
    assert_eq!(c.request_head.timeout, Duration::from_secs(10));
    assert_eq!(c.request_head.max_bytes, 4096);
    assert_eq!(c.request_head.max_headers, 50);
    for (key, bad) in [
        ("request_header_timeout", "\"soon\""),
        ("request_header_timeout", "\"0s\""),
        ("max_request_header_bytes", "100"),
        ("max_request_header_bytes", "2000000"),
        ("max_request_header_bytes", "\"64k\""),
        ("max_request_headers", "0"),
        ("max_request_headers", "257"),
        ("max_request_headers", "\"many\""),
    ] {
        let errs = errors(&format!("{}\n{key} = {bad}\n", base())).join("\n");
        assert!(errs.contains(&format!("{key}: ")), "{key} = {bad}: {errs}");
    }
}

#[test]
fn forwarding_defaults_parse_and_name_themselves_in_errors() {
    let c = load(&base()).unwrap();
    assert_eq!(c.forwarding, Forwarding::default());
    assert!(!c.forwarding.use_proxy_protocol);
    let c = load(&format!(
        "{}\nuse_proxy_protocol = true\nxff_num_trusted_hops = 2\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"2001:db8::/32\"]\n",
        base()
    ))
    .unwrap();
    let f = &c.forwarding;
    assert!(f.use_proxy_protocol);
    assert_eq!(f.xff_num_trusted_hops, 2);
    assert_eq!(f.trusted_proxies.len(), 3);
    for (ip, listed) in [
        ("10.1.2.3", true),
        ("127.0.0.1", true),
        ("127.0.0.2", false),
        ("2001:db8::1", true),
        ("192.0.2.1", false),
    ] {
        assert_eq!(f.lists(ip.parse().unwrap()), listed, "{ip}");
    }
    let c = load_env(
        &base(),
        &[
            ("PORTCULLIS_USE_PROXY_PROTOCOL", "true"),
            ("PORTCULLIS_TRUSTED_PROXIES", "[\"192.0.2.0/24\"]"),
        ],
    )
    .unwrap();
    assert!(c.forwarding.use_proxy_protocol);
    assert!(c.forwarding.lists("192.0.2.7".parse().unwrap()));
    let errs = errors(&format!(
        "{}\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\", \"nonsense\", \"10.0.0.0/33\"]\n",
        base()
    ))
    .join("\n");
    assert!(!errs.contains("trusted_proxies[0]"), "{errs}");
    assert!(
        errs.contains("trusted_proxies[1]: \"10.0.0.1/8\": host bits are set"),
        "{errs}"
    );
    assert!(errs.contains("trusted_proxies[2]: \"nonsense\""), "{errs}");
    assert!(
        errs.contains("trusted_proxies[3]: \"10.0.0.0/33\""),
        "{errs}"
    );
    for (key, bad) in [
        ("trusted_proxies", "\"10.0.0.0/8\""),
        ("use_proxy_protocol", "\"yes\""),
    ] {
        let errs = errors(&format!("{}\n{key} = {bad}\n", base())).join("\n");
        assert!(errs.contains(&format!("{key}: ")), "{key} = {bad}: {errs}");
    }
}

#[test]
fn connection_timeouts_default_parse_and_name_themselves_in_errors() {
    let c = load(&base()).unwrap();
    assert_eq!(c.timeout_idle, Duration::from_secs(60));
    assert_eq!(c.request_body_idle_timeout, Duration::from_secs(30));
    let c = load(&format!(
        "{}\ntimeout_idle = \"5m\"\nrequest_body_idle_timeout = \"10s\"\n",
        base()
    ))
    .unwrap();
    assert_eq!(c.timeout_idle, Duration::from_secs(300));
    assert_eq!(c.request_body_idle_timeout, Duration::from_secs(10));
    let c = load_env(
        &base(),
        &[
            ("PORTCULLIS_TIMEOUT_IDLE", "2s"),
            ("PORTCULLIS_REQUEST_BODY_IDLE_TIMEOUT", "3s"),
        ],
    )
    .unwrap();
    assert_eq!(c.timeout_idle, Duration::from_secs(2));
    assert_eq!(c.request_body_idle_timeout, Duration::from_secs(3));
    for key in ["timeout_idle", "request_body_idle_timeout"] {
        for bad in ["\"soon\"", "\"0s\"", "30"] {
            let errs = errors(&format!("{}\n{key} = {bad}\n", base())).join("\n");
            assert!(errs.contains(&format!("{key}: ")), "{key} = {bad}: {errs}");
        }
    }
}

#[test]
fn storage_timeout_defaults_to_2s_and_is_checked() {
    let c = load(&base()).unwrap();
    assert_eq!(c.databroker.storage_timeout, Duration::from_secs(2));
    let c = load(&format!(
        "{}\ndatabroker_storage_timeout = \"500ms\"\n",
        base()
    ))
    .unwrap();
    assert_eq!(c.databroker.storage_timeout, Duration::from_millis(500));
    let c = load_env(&base(), &[("PORTCULLIS_DATABROKER_STORAGE_TIMEOUT", "3s")]).unwrap();
    assert_eq!(c.databroker.storage_timeout, Duration::from_secs(3));
    for bad in ["\"0s\"", "\"soon\"", "2"] {
        let errs = errors(&format!("{}\ndatabroker_storage_timeout = {bad}\n", base())).join("\n");
        assert!(
            errs.contains("databroker_storage_timeout: "),
            "databroker_storage_timeout = {bad}: {errs}"
        );
    }
}
