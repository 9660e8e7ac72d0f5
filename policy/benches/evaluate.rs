//! `Policy::evaluate` on a three-criterion policy, for an allowed and a denied identity.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis_policy::{Identity, Policy, Request};

const POLICY: &str = r#"
policy = { allow = { and = [
  { domain = "example.com" },
  { groups = { has = "admins" } },
  { http_method = { in = ["GET", "HEAD"] } },
] } }
"#;

fn evaluate(c: &mut Criterion) {
    let doc: toml::Table = toml::from_str(POLICY).expect("policy TOML");
    let policy = Policy::parse(&doc["policy"], "policy").expect("policy compiles");
    let alice = Identity::new(
        "sub-alice".into(),
        "alice@example.com".into(),
        vec!["dev".into(), "admins".into()],
        Default::default(),
    );
    let bob = Identity::new(
        "sub-bob".into(),
        "bob@example.com".into(),
        vec!["dev".into()],
        Default::default(),
    );
    let allowed = Request::new("GET", "/", 1_700_000_000).with_identity(&alice);
    let denied = Request::new("GET", "/", 1_700_000_000).with_identity(&bob);
    assert!(policy.evaluate(&allowed).allowed);
    assert!(!policy.evaluate(&denied).allowed);

    c.bench_function("evaluate/allowed", |b| {
        b.iter(|| policy.evaluate(black_box(&allowed)))
    });
    c.bench_function("evaluate/denied", |b| {
        b.iter(|| policy.evaluate(black_box(&denied)))
    });
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
