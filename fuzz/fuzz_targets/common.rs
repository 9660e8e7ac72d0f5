//! Shared by the fuzz targets: whatever parses must also evaluate and explain without a panic.

use portcullis_policy::{ClientCertificate, Identity, Policy, Request};

/// Parses `value` as a route policy; a policy that compiles is evaluated for a few requests.
pub fn check(value: &toml::Value) {
    let Ok(policy) = Policy::parse(value, "routes[0].policy") else {
        return;
    };
    let mut claims = serde_json::Map::new();
    claims.insert("department".into(), "engineering".into());
    claims.insert("roles".into(), vec!["viewer", "editor"].into());
    let identity = Identity::new(
        "alice".into(),
        "Alice@Example.com".into(),
        vec!["admins".into(), "users".into()],
        claims,
    );
    let cert = ClientCertificate {
        fingerprint_sha256: "00".repeat(32),
        san_dns: vec!["client.example.com".into()],
        san_email: vec!["alice@example.com".into()],
        san_uri: vec!["spiffe://example.com/alice".into()],
    };
    let headers: &[(&str, &str)] = &[
        ("origin", "https://a.example.com"),
        ("access-control-request-method", "POST"),
    ];
    for now in [0, 1_800_000_000, i64::MIN, i64::MAX] {
        let anonymous = Request::new("GET", "/", now);
        let full = Request {
            identity: Some(&identity),
            method: "OPTIONS",
            path: "/a/b",
            source_ip: Some([10, 1, 2, 3].into()),
            now_unix: now,
            headers: &headers,
            client_certificate: Some(&cert),
        };
        for request in [anonymous, full] {
            let decision = policy.evaluate(&request);
            let _ = decision.explain(&policy);
        }
    }
}
