//! Hot-path microbenches: opening the session cookie, and an identity assertion served from
//! the cache versus freshly signed, and kept on the session versus looked up.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_auth::{
    find_cookie, AssertionCache, AssertionSigner, AssertionSlot, Cipher, IdentityClaims, Secret,
    SessionCookie,
};

const NOW: i64 = 1_700_000_000;
/// The route host authority the benched cookie was issued for.
const SCOPE: &str = "app.example.com:443";

fn claims() -> IdentityClaims {
    IdentityClaims {
        iss: "app.example.com".into(),
        aud: "app.example.com".into(),
        sub: "user-1".into(),
        user: "user-1".into(),
        email: "alice@example.com".into(),
        groups: vec!["admins".into(), "devs".into()],
        name: "Alice".into(),
        sid: "sess-1".into(),
        iat: NOW,
        exp: NOW + 300,
        jti: String::new(),
    }
}

fn cookie(c: &mut Criterion) {
    let cipher = Cipher::new(&Secret::random());
    let value = SessionCookie {
        session_id: "Zm9vYmFyYmF6cXV4cXV1eA".into(),
        scope: SCOPE.into(),
        issued_at: NOW,
        expires_at: NOW + 14 * 3600,
    }
    .seal(&cipher);
    let header = format!("_ga=GA1.2.3; _portcullis_csrf=abc; _portcullis={value}; theme=dark");

    c.bench_function("session_cookie_open", |b| {
        b.iter(|| SessionCookie::open(&cipher, black_box(&value), NOW, SCOPE))
    });
    c.bench_function("session_cookie_find_and_open", |b| {
        b.iter(|| {
            let v = find_cookie(std::iter::once(black_box(header.as_str())), "_portcullis");
            v.and_then(|v| SessionCookie::open(&cipher, v, NOW, SCOPE))
        })
    });
}

fn assertion(c: &mut Criterion) {
    let signer = AssertionSigner::derive(&Secret::random()).expect("derived key");
    let cache = AssertionCache::default();
    cache
        .get_or_sign(&signer, "sess-1", "app.example.com", 0, NOW, claims)
        .expect("sign");

    c.bench_function("assertion_cache_hit", |b| {
        b.iter(|| {
            cache
                .get_or_sign(
                    &signer,
                    black_box("sess-1"),
                    "app.example.com",
                    0,
                    NOW,
                    claims,
                )
                .expect("cached")
        })
    });
    c.bench_function("assertion_fresh_sign", |b| {
        b.iter(|| signer.sign(black_box(&claims())).expect("sign"))
    });
}

/// 10,000 sessions in turn, each with its assertion cached: the assertion kept on the session
/// (as the proxy's cached sessions keep it) against a lookup by session id (`get_or_sign`,
/// which also makes an id and fills a slot of its own that it then drops).
fn assertion_10k(c: &mut Criterion) {
    let signer = AssertionSigner::derive(&Secret::random()).expect("derived key");
    let cache = AssertionCache::default();
    let sessions: Vec<(Arc<str>, AssertionSlot)> = (0..10_000)
        .map(|i| {
            (
                format!("Zm9vYmFyYmF6cXV4{i:06}").into(),
                AssertionSlot::default(),
            )
        })
        .collect();
    for (id, slot) in &sessions {
        cache
            .get_or_sign_kept(slot, &signer, id, "app.example.com", 0, NOW, claims)
            .expect("sign");
    }
    let mut group = c.benchmark_group("assertion_10k");
    let mut i = 0;
    group.bench_function("kept", |b| {
        b.iter(|| {
            i = (i + 1) % sessions.len();
            let (id, slot) = &sessions[i];
            cache
                .get_or_sign_kept(slot, &signer, id, "app.example.com", 0, NOW, claims)
                .expect("kept")
        })
    });
    group.bench_function("lookup", |b| {
        b.iter(|| {
            i = (i + 1) % sessions.len();
            cache
                .get_or_sign(&signer, &sessions[i].0, "app.example.com", 0, NOW, claims)
                .expect("cached")
        })
    });
    group.finish();
}

criterion_group!(benches, cookie, assertion, assertion_10k);
criterion_main!(benches);
