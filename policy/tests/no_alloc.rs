//! `Policy::evaluate` must not allocate: it runs on every request. A counting global allocator
//! (`allocation-counter`) checks the allow path, the deny paths and the time-zone criteria.
//!
//! The counter is per thread. A process-wide one also saw the test harness's own thread, which
//! allocates when it starts waiting for the result; on a CI machine that fell inside the
//! measured region and failed the test.

use std::net::IpAddr;

use portcullis_policy::{ClientCertificate, Identity, Policy, Request};

const POLICY: &str = r#"
policy = [
  { allow = { and = [
      { domain = { in = ["example.com", "example.org"] } },
      { groups = { has = "admins", exclude = "banned" } },
      { "claim/level" = { in = ["6", "7"] } },
      { "claim/address/country" = "NL" },
      { "claim/roles" = { starts_with = "wri", not = "root" } },
      { http_method = { in = ["get", "HEAD"] } },
      { http_path = { starts_with = "/api/", not_in = ["/api/admin"] } },
      { source_ip = ["10.0.0.0/8", "2001:db8::/32"] },
      { date = { after = "2020-01-01T00:00:00Z" } },
      { day_of_week = { days = "mon-fri", timezone = "Europe/Amsterdam" } },
      { time_of_day = { after = "08:00", before = "20:00", timezone = "America/New_York" } },
      { client_certificate = { san_dns = { ends_with = ".example.com" } } },
      { or = [ { user = { contains = "alice" } }, { email = { ends_with = "@example.com" } } ] },
      { not = [ { cors_preflight = true } ] },
      { nor = [ { reject = true }, { accept = true } ] },
  ] } },
  { deny = { or = [ { email = "mallory@example.com" }, { http_method = "DELETE" } ] } },
]
"#;

#[test]
fn evaluate_does_not_allocate() {
    let doc: toml::Table = toml::from_str(POLICY).expect("policy TOML");
    let policy = Policy::parse(&doc["policy"], "policy").expect("policy compiles");
    let claims = serde_json::json!({
        "level": 7,
        "address": { "country": "NL" },
        "roles": ["reader", "writer"],
    });
    let claims = claims.as_object().cloned().expect("object");
    let alice = Identity::new(
        "sub-alice".into(),
        "Alice@Example.com".into(),
        vec!["admins".into()],
        claims.clone(),
    );
    let mallory = Identity::new(
        "sub-mallory".into(),
        "mallory@example.com".into(),
        vec!["admins".into()],
        claims,
    );
    let cert = ClientCertificate {
        san_dns: vec!["client.example.com".into()],
        ..ClientCertificate::default()
    };
    let source: IpAddr = "::ffff:10.1.2.3".parse().expect("address");
    let headers = [("origin", "https://x.example")];
    // 2024-01-03T14:00:00Z: a Wednesday, 09:00 in New York.
    let allowed = Request {
        identity: Some(&alice),
        method: "GET",
        path: "/api/things",
        source_ip: Some(source),
        now_unix: 1_704_290_400,
        headers: &headers,
        client_certificate: Some(&cert),
    };
    let denied_by_rule = Request {
        identity: Some(&mallory),
        ..allowed
    };
    let no_allow = Request {
        path: "/api/admin",
        ..allowed
    };
    let anonymous = Request {
        identity: None,
        ..allowed
    };
    // Warm up anything lazily initialised (none expected, but measure steady state).
    for r in [&allowed, &denied_by_rule, &no_allow, &anonymous] {
        let _ = policy.evaluate(r);
    }

    // Control: the counter is in use, and counts a reallocation too.
    let control = allocation_counter::measure(|| {
        let mut v = std::hint::black_box(Vec::<u64>::with_capacity(1));
        v.extend([1, 2, 3]);
    });
    assert_eq!(
        control.count_total, 2,
        "the counting allocator is not in use"
    );

    let mut outcomes = [false; 4];
    let measured = allocation_counter::measure(|| {
        for _ in 0..100 {
            for (o, r) in
                outcomes
                    .iter_mut()
                    .zip([&allowed, &denied_by_rule, &no_allow, &anonymous])
            {
                *o = policy.evaluate(r).allowed;
            }
        }
    });

    assert_eq!(outcomes, [true, false, false, false]);
    assert_eq!(
        measured.count_total, 0,
        "evaluate allocated or reallocated: {measured:?}"
    );
}
