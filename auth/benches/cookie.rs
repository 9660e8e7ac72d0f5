//! Hot-path microbenches: opening the session cookie, and an identity assertion served from
//! the cache versus freshly signed.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_auth::{
    find_cookie, AssertionCache, AssertionSigner, Cipher, IdentityClaims, Secret, SessionCookie,
};

const NOW: i64 = 1_700_000_000;

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
        issued_at: NOW,
        expires_at: NOW + 14 * 3600,
    }
    .seal(&cipher);
    let header = format!("_ga=GA1.2.3; _portcullis_csrf=abc; _portcullis={value}; theme=dark");

    c.bench_function("session_cookie_open", |b| {
        b.iter(|| SessionCookie::open(&cipher, black_box(&value), NOW))
    });
    c.bench_function("session_cookie_find_and_open", |b| {
        b.iter(|| {
            let v = find_cookie(std::iter::once(black_box(header.as_str())), "_portcullis");
            v.and_then(|v| SessionCookie::open(&cipher, v, NOW))
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

criterion_group!(benches, cookie, assertion);
criterion_main!(benches);
