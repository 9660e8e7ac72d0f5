use super::*;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};

const SEC1: &str = include_str!("testdata/ec-sec1.pem");
const PKCS8: &str = include_str!("testdata/ec-pkcs8.pem");
const ED25519: &str = include_str!("testdata/ed25519.pem");
const P384: &str = include_str!("testdata/ec-p384.pem");
/// Computed independently from the fixture with `openssl ec -pubout` and Python's hashlib.
const SEC1_KID: &str = "3IPEirBKulyVgVRaQgxVLAUHH2UqrIdJGoUVVl58Stw";
const SEC1_X: &str = "nJRYVdPJSDhIMyNPllf6cHJHpTdkw8_1w8jAsDV2lCE";
const SEC1_Y: &str = "qW0R_tV_KAFmXNH8cXyCUuSbUmukTSplodiOnorZIlI";

fn claims(now: i64) -> IdentityClaims {
    IdentityClaims {
        iss: "app.example.com".into(),
        aud: "app.example.com".into(),
        sub: "user-1".into(),
        user: "user-1".into(),
        email: "alice@example.com".into(),
        groups: vec!["admins".into(), "devs".into()],
        name: "Alice".into(),
        sid: "sess-1".into(),
        iat: now,
        exp: now + ASSERTION_LIFETIME_SECS,
        jti: "jti-1".into(),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One renewal run with every signature at once, every session's content 0 and claims
/// `claims(0)`.
fn renew_at_once(cache: &AssertionCache, signer: &AssertionSigner, now_unix: i64) -> usize {
    cache.renew_due(signer, now_unix, Duration::ZERO, &|| false, &same_claims)
}

/// What `renew_due` asks of the sessions, for tests where all have content 0 and `claims(0)`.
fn same_claims(_id: &str, _audience: &str) -> Option<(u64, IdentityClaims)> {
    Some((0, claims(0)))
}

/// Whether the cache keeps the JWT of `id`'s assertion ready to send (not only its signature).
fn keeps_jwt(cache: &AssertionCache, id: &str) -> bool {
    let (hash, shard) = cache.locate(id);
    let map = read(shard);
    let entry = map.find(hash, |e| *e.session_id == *id).unwrap();
    let kept = entry.signed.read().unwrap().jwt.is_some();
    kept
}

fn verify(signer: &AssertionSigner, jwt: &str) -> IdentityClaims {
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.kid.as_deref(), Some(signer.kid()));
    let set: JwkSet = serde_json::from_str(signer.jwks_json()).unwrap();
    let jwk = set.find(signer.kid()).expect("kid in JWKS");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["app.example.com"]);
    v.set_issuer(&["app.example.com"]);
    jsonwebtoken::decode::<IdentityClaims>(jwt, &key, &v)
        .unwrap()
        .claims
}

#[test]
fn sign_and_verify_against_jwks() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let c = claims(now());
    let jwt = s.sign(&c).unwrap();
    assert_eq!(verify(&s, &jwt), c);
}

#[test]
fn kid_is_rfc7638_thumbprint() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    assert_eq!(s.kid(), SEC1_KID);
    let jwks: serde_json::Value = serde_json::from_str(s.jwks_json()).unwrap();
    assert_eq!(
        jwks,
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": SEC1_X, "y": SEC1_Y,
            "kid": SEC1_KID, "alg": "ES256", "use": "sig"
        }]})
    );
}

#[test]
fn pkcs8_and_base64_of_pem_load_the_same_key() {
    let a = AssertionSigner::from_pem(SEC1).unwrap();
    let b = AssertionSigner::from_pem(PKCS8).unwrap();
    let c =
        AssertionSigner::from_pem(&base64::engine::general_purpose::STANDARD.encode(SEC1)).unwrap();
    let d = AssertionSigner::from_pem(&base64::engine::general_purpose::STANDARD.encode(PKCS8))
        .unwrap();
    assert_eq!(a.kid(), b.kid());
    assert_eq!(a.kid(), c.kid());
    assert_eq!(a.kid(), d.kid());
    // A JWT from the PKCS#8 key verifies against the SEC1 key's JWKS.
    let jwt = b.sign(&claims(now())).unwrap();
    verify(&a, &jwt);
}

#[test]
fn bad_keys_are_refused() {
    for bad in [
        "",
        "garbage",
        "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        ED25519,
        P384,
    ] {
        assert!(
            matches!(
                AssertionSigner::from_pem(bad),
                Err(AuthError::InvalidSigningKey(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn derived_key_is_deterministic_per_secret() {
    let a1 = AssertionSigner::derive(&Secret::from_bytes([1; 32])).unwrap();
    let a2 = AssertionSigner::derive(&Secret::from_bytes([1; 32])).unwrap();
    let b = AssertionSigner::derive(&Secret::from_bytes([2; 32])).unwrap();
    assert_eq!(a1.kid(), a2.kid());
    assert_eq!(a1.jwks_json(), a2.jwks_json());
    assert_ne!(a1.kid(), b.kid());
    // a2 verifies what a1 signed.
    verify(&a2, &a1.sign(&claims(now())).unwrap());
}

#[test]
fn verification_fails_with_other_key() {
    let a = AssertionSigner::derive(&Secret::from_bytes([1; 32])).unwrap();
    let b = AssertionSigner::derive(&Secret::from_bytes([2; 32])).unwrap();
    let jwt = a.sign(&claims(now())).unwrap();
    let set: JwkSet = serde_json::from_str(b.jwks_json()).unwrap();
    let key = DecodingKey::from_jwk(&set.keys[0]).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["app.example.com"]);
    assert!(jsonwebtoken::decode::<IdentityClaims>(&jwt, &key, &v).is_err());
}

#[test]
fn debug_shows_only_kid() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let d = format!("{s:?}");
    assert!(d.contains(SEC1_KID));
    assert!(!d.contains("key_pair"));
}

#[test]
fn cache_signs_once_for_repeated_calls() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let cache = AssertionCache::default();
    let t = now();
    // The caller's claims are dated and identified by the cache.
    let undated = || IdentityClaims {
        iat: 0,
        exp: 0,
        jti: String::new(),
        ..claims(0)
    };
    let first = cache
        .get_or_sign(&s, "sess-1", "app.example.com", 0, t, undated)
        .unwrap();
    for dt in [
        0,
        1,
        100,
        ASSERTION_LIFETIME_SECS - ASSERTION_REUSE_MARGIN_SECS - 1,
    ] {
        let again = cache
            .get_or_sign(&s, "sess-1", "app.example.com", 0, t + dt, undated)
            .unwrap();
        // Made again from the kept signature and the same claims: the same bytes.
        assert_eq!(first, again);
    }
    assert_eq!(cache.signatures_total(), 1);
    let c = verify(&s, first.to_str().unwrap());
    assert_eq!(c.iat, t);
    assert_eq!(c.exp, t + ASSERTION_LIFETIME_SECS);
    assert!(!c.jti.is_empty());
}

#[test]
fn cache_resigns_near_expiry_and_per_audience() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let cache = AssertionCache::default();
    let t = now();
    let a = cache
        .get_or_sign(&s, "sess-1", "app.example.com", 0, t, || claims(0))
        .unwrap();
    // Only 60 s left: re-sign.
    let b = cache
        .get_or_sign(
            &s,
            "sess-1",
            "app.example.com",
            0,
            t + ASSERTION_LIFETIME_SECS - ASSERTION_REUSE_MARGIN_SECS,
            || claims(0),
        )
        .unwrap();
    assert_ne!(a, b);
    assert_eq!(cache.signatures_total(), 2);
    // Another audience or another session is another assertion.
    let other = IdentityClaims {
        aud: "other.example.com".into(),
        ..claims(0)
    };
    cache
        .get_or_sign(&s, "sess-1", "other.example.com", 0, t, || other)
        .unwrap();
    cache
        .get_or_sign(&s, "sess-2", "app.example.com", 0, t, || claims(0))
        .unwrap();
    assert_eq!(cache.signatures_total(), 4);
}

#[test]
fn changed_session_content_gets_a_new_assertion_and_unchanged_keeps_it() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let cache = AssertionCache::default();
    let t = now();
    let a = cache
        .get_or_sign(&s, "sess-1", "app.example.com", 7, t, || claims(0))
        .unwrap();
    // The same content (the session read again, say after a change event): the same JWT.
    let again = cache
        .get_or_sign(&s, "sess-1", "app.example.com", 7, t + 1, || claims(0))
        .unwrap();
    assert_eq!(a, again);
    // Other content (new groups after a refresh): signed again from the new claims.
    let b = cache
        .get_or_sign(&s, "sess-1", "app.example.com", 8, t + 2, || claims(0))
        .unwrap();
    assert_ne!(a, b);
    assert_eq!(cache.signatures_total(), 2);
}

#[test]
fn invalidate_session_drops_its_assertions_only() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let cache = AssertionCache::default();
    let t = now();
    for (sid, aud) in [("s1", "a"), ("s1", "b"), ("s10", "a"), ("s2", "a")] {
        cache.get_or_sign(&s, sid, aud, 0, t, || claims(0)).unwrap();
    }
    assert_eq!(cache.signatures_total(), 4);
    cache.invalidate_session("s1");
    for (sid, aud) in [("s10", "a"), ("s2", "a")] {
        cache.get_or_sign(&s, sid, aud, 0, t, || claims(0)).unwrap();
    }
    assert_eq!(cache.signatures_total(), 4);
    for (sid, aud) in [("s1", "a"), ("s1", "b")] {
        cache.get_or_sign(&s, sid, aud, 0, t, || claims(0)).unwrap();
    }
    assert_eq!(cache.signatures_total(), 6);
}

#[test]
fn failed_signing_is_not_counted_or_cached() {
    let s = AssertionSigner {
        fail: true,
        ..AssertionSigner::from_pem(SEC1).unwrap()
    };
    let cache = AssertionCache::default();
    assert!(matches!(
        cache.get_or_sign(&s, "s", "a", 0, now(), || claims(0)),
        Err(AuthError::Signing(_))
    ));
    assert_eq!(cache.signatures_total(), 0);
}

#[test]
fn assertions_in_use_are_renewed_in_the_background_and_requests_never_wait() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let cache = AssertionCache::default();
    let t = now();
    let first = cache
        .get_or_sign(&s, "busy", "app.example.com", 0, t, || claims(0))
        .unwrap();
    cache
        .get_or_sign(&s, "idle", "app.example.com", 0, t, || claims(0))
        .unwrap();
    assert_eq!(cache.signatures_on_request_path(), 2);
    // Nothing is due while more than the renewal lead is left.
    let due = t + ASSERTION_LIFETIME_SECS - ASSERTION_RENEW_AHEAD_SECS;
    assert_eq!(renew_at_once(&cache, &s, due - 1), 0);
    // "busy" keeps sending requests; "idle" sent its last one at `t`.
    for at in (t..due).step_by(30) {
        cache
            .get_or_sign(&s, "busy", "app.example.com", 0, at, || claims(0))
            .unwrap();
    }
    assert_eq!(
        renew_at_once(&cache, &s, due),
        2,
        "both were used within a lifetime"
    );
    // Hours of steady requests, with the renewal running every interval: no request waits.
    let mut at = due;
    let step = ASSERTION_RENEW_INTERVAL.as_secs() as i64;
    let mut renewed = 0;
    while at < t + 3 * 3600 {
        at += step;
        renewed += renew_at_once(&cache, &s, at);
        let jwt = cache
            .get_or_sign(&s, "busy", "app.example.com", 0, at, || claims(0))
            .unwrap();
        let c = verify(&s, jwt.to_str().unwrap());
        assert!(
            c.exp - at > ASSERTION_REUSE_MARGIN_SECS,
            "valid for its use"
        );
        // A renewal signs the session's claims as `renew_due` was given them: all but the
        // dates and the id as first signed.
        let unstamped = |c: IdentityClaims| IdentityClaims {
            iat: 0,
            exp: 0,
            jti: String::new(),
            ..c
        };
        assert_eq!(unstamped(c), unstamped(claims(0)));
        assert_ne!(jwt, first);
    }
    assert_eq!(cache.signatures_on_request_path(), 2);
    assert!(renewed >= 3 * 3600 / 200, "renewed {renewed} times");
    // "idle" went unused for a lifetime: no longer kept.
    assert_eq!(cache.len(), 1, "only the busy session's assertion is kept");
    // "idle" stopped being renewed once it went unused for a lifetime, so its next request
    // signs (on the request path) — and gets a valid one.
    let jwt = cache
        .get_or_sign(&s, "idle", "app.example.com", 0, at, || claims(0))
        .unwrap();
    assert!(verify(&s, jwt.to_str().unwrap()).exp > at);
    assert_eq!(cache.signatures_on_request_path(), 3);
    assert_eq!(
        cache.signatures_total(),
        cache.signatures_on_request_path() + renewed as u64 + 2
    );
}

#[test]
fn the_cache_is_bounded_and_a_full_shard_makes_room() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    // 16 shards of 2 sessions each.
    let cache = AssertionCache::new(32);
    let t = now();
    for i in 0..200 {
        cache
            .get_or_sign(&s, &format!("sess-{i}"), "app", 0, t, || claims(0))
            .unwrap();
        assert!(cache.len() <= 32, "{} assertions kept", cache.len());
    }
    assert_eq!(cache.signatures_total(), 200);
    // The last one is still cached: it was put in after the room was made.
    cache
        .get_or_sign(&s, "sess-199", "app", 0, t, || claims(0))
        .unwrap();
    // A shard full of sessions idle for a lifetime loses only the idle ones.
    let used = t + ASSERTION_LIFETIME_SECS - ASSERTION_RENEW_AHEAD_SECS;
    cache
        .get_or_sign(&s, "sess-199", "app", 0, used, || claims(0))
        .unwrap();
    let later = t + ASSERTION_LIFETIME_SECS + 1;
    assert_eq!(
        renew_at_once(&cache, &s, later),
        1,
        "sess-199 is due and in use"
    );
    assert_eq!(cache.len(), 1, "every idle session went");
}

#[test]
fn a_kept_assertion_answers_before_any_lookup_and_stays_renewed() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let cache = AssertionCache::default();
    let slot = AssertionSlot::default();
    let t = now();
    let aud = "app.example.com";
    let first = cache
        .get_or_sign_kept(&slot, &s, &"busy".into(), aud, 0, t, || claims(0))
        .unwrap();
    // The slot is the session's own and answers before the cache is asked: an id the cache
    // has never seen gets the kept assertion, with nothing signed.
    let kept = cache
        .get_or_sign_kept(&slot, &s, &"never-seen".into(), aud, 0, t + 1, || claims(0))
        .unwrap();
    assert_eq!(kept, first);
    assert_eq!(cache.signatures_on_request_path(), 1);
    // Requests answered from the slot alone keep the entry in use, so the background renews
    // it, and hours of them never wait for a signature.
    let mut at = t;
    let mut renewed = 0;
    while at < t + 3 * 3600 {
        at += ASSERTION_RENEW_INTERVAL.as_secs() as i64;
        renewed += renew_at_once(&cache, &s, at);
        let jwt = cache
            .get_or_sign_kept(&slot, &s, &"busy".into(), aud, 0, at, || claims(0))
            .unwrap();
        let c = verify(&s, jwt.to_str().unwrap());
        assert!(
            c.exp - at > ASSERTION_REUSE_MARGIN_SECS,
            "valid for its use"
        );
    }
    assert!(renewed >= 3 * 3600 / 200, "renewed {renewed} times");
    assert_eq!(cache.signatures_on_request_path(), 1);
}

#[test]
fn a_kept_assertion_answers_only_what_the_cache_would() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let cache = AssertionCache::default();
    let slot = AssertionSlot::default();
    let t = now();
    let aud = "app.example.com";
    let signed = |at: i64, content: u64, aud: &str| {
        let before = cache.signatures_on_request_path();
        let jwt = cache
            .get_or_sign_kept(&slot, &s, &"sess-1".into(), aud, content, at, || claims(0))
            .unwrap();
        (jwt, cache.signatures_on_request_path() - before)
    };
    let (first, n) = signed(t, 0, aud);
    assert_eq!(n, 1);
    assert_eq!(signed(t, 0, aud), (first.clone(), 0));

    // Signed out: the cache dropped the session's assertions, and the slot does not answer
    // with what it kept; it did not keep it alive either.
    assert!(format!("{slot:?}").contains("\"app.example.com\""));
    cache.invalidate_session("sess-1");
    assert!(format!("{slot:?}").contains("audience: None"), "{slot:?}");
    let (after_sign_out, n) = signed(t, 0, aud);
    assert_eq!(n, 1);
    assert_ne!(after_sign_out, first);
    // The same after the cache dropped everything.
    cache.invalidate_all();
    let (after_all, n) = signed(t, 0, aud);
    assert_eq!(n, 1);
    assert_ne!(after_all, after_sign_out);

    // Another host: its own assertion, and the slot keeps that one from now on.
    let (other, n) = signed(t, 0, "other.example.com");
    assert_eq!(n, 1);
    assert_ne!(other, after_all);
    assert_eq!(signed(t, 0, "other.example.com"), (other, 0));
    // Back on the first host: the cache still has its assertion.
    assert_eq!(signed(t, 0, aud), (after_all.clone(), 0));

    // The session changed: a new assertion, which replaces the old one in the cache.
    let (changed, n) = signed(t, 1, aud);
    assert_eq!(n, 1);
    assert_ne!(changed, after_all);
    assert_eq!(signed(t, 1, aud), (changed.clone(), 0));

    // Within the reuse margin of its expiry, with no renewal run: signed again.
    let late = t + ASSERTION_LIFETIME_SECS - ASSERTION_REUSE_MARGIN_SECS;
    let (renewed, n) = signed(late, 1, aud);
    assert_eq!(n, 1);
    assert!(verify(&s, renewed.to_str().unwrap()).exp > late + ASSERTION_REUSE_MARGIN_SECS);
}

#[test]
fn a_kept_assertion_the_full_cache_dropped_is_not_answered() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    // 16 shards of one session each: the 17th session empties a shard.
    let cache = AssertionCache::new(16);
    let t = now();
    let slots: Vec<AssertionSlot> = (0..64).map(|_| AssertionSlot::default()).collect();
    let mut first = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        let id: Arc<str> = format!("sess-{i}").into();
        first.push(
            cache
                .get_or_sign_kept(slot, &s, &id, "app", 0, t, || claims(0))
                .unwrap(),
        );
    }
    assert!(cache.len() <= 16 * 2);
    let before = cache.signatures_on_request_path();
    let mut signed_again = 0;
    for (i, slot) in slots.iter().enumerate() {
        let id: Arc<str> = format!("sess-{i}").into();
        let jwt = cache
            .get_or_sign_kept(slot, &s, &id, "app", 0, t, || claims(0))
            .unwrap();
        if jwt != first[i] {
            signed_again += 1;
        }
    }
    // Every session the cache let go was signed again, none answered from its slot.
    assert_eq!(
        cache.signatures_on_request_path() - before,
        signed_again as u64
    );
    assert!(signed_again >= 64 - 32, "{signed_again}");
}

#[test]
fn a_crowd_that_comes_due_together_is_renewed_spread_out_soonest_first() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let cache = AssertionCache::default();
    let t = now();
    // A crowd signs in at `t`, a few more five seconds later.
    let sign = |id: String, at: i64| {
        cache
            .get_or_sign(&s, &id, "app", 0, at, || claims(at))
            .unwrap()
    };
    let crowd: Vec<_> = (0..20).map(|i| sign(format!("crowd-{i}"), t)).collect();
    let later: Vec<_> = (0..10).map(|i| sign(format!("later-{i}"), t + 5)).collect();
    let current = |id: String, at: i64| {
        cache
            .get_or_sign(&s, &id, "app", 0, at, || claims(at))
            .unwrap()
    };
    // All thirty are due; a run told to stop after twenty signed the crowd, which expires
    // first, and left the others.
    let due = t + 5 + ASSERTION_LIFETIME_SECS - ASSERTION_RENEW_AHEAD_SECS;
    let asked = std::sync::atomic::AtomicUsize::new(0);
    let stop_after_twenty = || asked.fetch_add(1, Ordering::Relaxed) >= 20;
    assert_eq!(
        cache.renew_due(&s, due, Duration::ZERO, &stop_after_twenty, &same_claims),
        20
    );
    for (i, before) in crowd.iter().enumerate() {
        assert_ne!(
            &current(format!("crowd-{i}"), due),
            before,
            "crowd-{i} renewed"
        );
    }
    for (i, before) in later.iter().enumerate() {
        assert_eq!(
            &current(format!("later-{i}"), due),
            before,
            "later-{i} left for later"
        );
    }
    // The next run signs the other ten, spread over the time it is given: the last one's turn
    // comes at 9/10 of it. Signing ten at once takes a few milliseconds.
    let spread = Duration::from_millis(400);
    let began = Instant::now();
    assert_eq!(
        cache.renew_due(&s, due, spread, &|| false, &same_claims),
        10
    );
    let took = began.elapsed();
    assert!(
        took >= spread * 9 / 10,
        "ten signatures in {took:?}, not spread over {spread:?}"
    );
    for (i, before) in later.iter().enumerate() {
        let jwt = current(format!("later-{i}"), due);
        assert_ne!(&jwt, before, "later-{i} renewed");
        assert!(verify(&s, jwt.to_str().unwrap()).exp - due > ASSERTION_REUSE_MARGIN_SECS);
    }
    assert_eq!(cache.signatures_on_request_path(), 30);
}

#[test]
fn a_stop_ends_a_spread_run_without_waiting_out_the_spread() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let cache = AssertionCache::default();
    let t = now();
    for id in ["first", "second"] {
        cache
            .get_or_sign(&s, id, "app", 0, t, || claims(t))
            .unwrap();
    }
    let due = t + ASSERTION_LIFETIME_SECS - ASSERTION_RENEW_AHEAD_SECS;
    // Two signatures over a minute: the second's turn is thirty seconds off. A shutdown a
    // moment in ends the run within a check interval, with only the first signed.
    let began = Instant::now();
    let stopped = || began.elapsed() > Duration::from_millis(50);
    assert_eq!(
        cache.renew_due(&s, due, Duration::from_secs(60), &stopped, &same_claims),
        1
    );
    let took = began.elapsed();
    assert!(took < Duration::from_secs(5), "the stop waited {took:?}");
}

#[test]
fn an_entry_keeps_a_signature_and_not_the_jwt() {
    // A cached assertion is one per active session: what it holds is paid 100,000 times over.
    // Its signature and dates in the entry, the audience its one allocation besides the JWT,
    // which (about 600 bytes) is kept only while in use. The session id is its session's,
    // shared: a pointer, not a copy.
    assert!(
        std::mem::size_of::<Entry>() <= 200,
        "{} bytes",
        std::mem::size_of::<Entry>()
    );
}

#[test]
fn a_jwt_is_kept_from_its_second_request_until_unused_for_a_while() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let cache = AssertionCache::default();
    let t = now();
    let kept_jwt = |id: &str| keeps_jwt(&cache, id);
    let get = |id: &str, at: i64| {
        cache
            .get_or_sign(&s, id, "app.example.com", 0, at, || claims(0))
            .unwrap()
    };
    let idle = get("idle", t);
    let busy = get("busy", t);
    assert!(
        !kept_jwt("idle") && !kept_jwt("busy"),
        "asked for once: only the signature"
    );
    // The second request gets the same JWT, made again from the signature, and keeps it.
    assert_eq!(get("idle", t), idle);
    assert_eq!(get("busy", t), busy);
    assert!(kept_jwt("idle") && kept_jwt("busy"));
    // "busy" asked again just now, "idle" not since `t`.
    let later = t + ASSERTION_KEEP_JWT_SECS;
    assert_eq!(get("busy", later - 1), busy);
    assert_eq!(renew_at_once(&cache, &s, later), 0, "nothing is due yet");
    assert!(
        !kept_jwt("idle"),
        "unused for ASSERTION_KEEP_JWT_SECS: only the signature"
    );
    assert!(kept_jwt("busy"));
    // Its next request gets the same JWT, made again with no signature, and kept again.
    assert_eq!(get("idle", later + 1), idle);
    assert!(kept_jwt("idle"));
    assert_eq!(cache.signatures_total(), 2);
    verify(&s, idle.to_str().unwrap());
}

#[test]
fn a_new_signature_keeps_its_jwt_where_the_old_one_was_kept_or_a_request_waits_for_it() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let cache = AssertionCache::default();
    let t = now();
    let get = |id: &str, at: i64| {
        cache
            .get_or_sign(&s, id, "app.example.com", 0, at, || claims(0))
            .unwrap()
    };
    let due = t + ASSERTION_LIFETIME_SECS - ASSERTION_RENEW_AHEAD_SECS;
    get("once", t);
    get("twice", t);
    // Asked again within the keep window before the run: its JWT is kept then.
    get("twice", due - 1);
    assert!(!keeps_jwt(&cache, "once") && keeps_jwt(&cache, "twice"));
    assert_eq!(renew_at_once(&cache, &s, due), 2);
    // The background renewal keeps a new JWT only where the old one was kept.
    assert!(
        !keeps_jwt(&cache, "once"),
        "renewed: still only the signature"
    );
    assert!(keeps_jwt(&cache, "twice"), "renewed: ready to send");
    let jwt = get("twice", due);
    assert!(verify(&s, jwt.to_str().unwrap()).iat >= due);
    // A request that finds its assertion past the reuse margin signs it itself, sends it and
    // keeps it: that session is in use.
    let late = due + ASSERTION_LIFETIME_SECS - ASSERTION_REUSE_MARGIN_SECS;
    let before = cache.signatures_on_request_path();
    get("once", late);
    assert_eq!(cache.signatures_on_request_path(), before + 1);
    assert!(keeps_jwt(&cache, "once"), "signed for a request: kept");
}

#[test]
fn a_renewal_skips_sessions_it_does_not_know_or_that_changed() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let cache = AssertionCache::default();
    let t = now();
    for id in ["known", "changed", "gone"] {
        cache
            .get_or_sign(&s, id, "app.example.com", 7, t, || claims(0))
            .unwrap();
    }
    let due = t + ASSERTION_LIFETIME_SECS - ASSERTION_RENEW_AHEAD_SECS;
    let asked = std::sync::Mutex::new(Vec::new());
    let sessions = |id: &str, audience: &str| {
        asked.lock().unwrap().push(format!("{id}@{audience}"));
        match id {
            "known" => Some((7, claims(0))),
            "changed" => Some((8, claims(0))),
            _ => None,
        }
    };
    assert_eq!(
        cache.renew_due(&s, due, Duration::ZERO, &|| false, &sessions),
        1
    );
    let mut asked = asked.into_inner().unwrap();
    asked.sort();
    assert_eq!(
        asked,
        [
            "changed@app.example.com",
            "gone@app.example.com",
            "known@app.example.com"
        ]
    );
    // The renewed one answers with a fresh JWT of the claims it was given; the others are
    // signed at their next request, from what that request's session says.
    let before = cache.signatures_on_request_path();
    let jwt = cache
        .get_or_sign(&s, "known", "app.example.com", 7, due, || claims(0))
        .unwrap();
    assert!(verify(&s, jwt.to_str().unwrap()).iat >= due);
    assert_eq!(cache.signatures_on_request_path(), before);
    let late = t + ASSERTION_LIFETIME_SECS - ASSERTION_REUSE_MARGIN_SECS;
    cache
        .get_or_sign(&s, "gone", "app.example.com", 7, late, || claims(0))
        .unwrap();
    assert_eq!(cache.signatures_on_request_path(), before + 1);
}

#[test]
fn a_jwt_made_again_from_its_signature_verifies_and_carries_the_callers_claims() {
    let s = AssertionSigner::from_pem(SEC1).unwrap();
    let cache = AssertionCache::default();
    let t = now();
    let first = cache
        .get_or_sign(&s, "sess-1", "app.example.com", 0, t, || claims(0))
        .unwrap();
    let again = cache
        .get_or_sign(&s, "sess-1", "app.example.com", 0, t + 30, || claims(0))
        .unwrap();
    assert_eq!(again, first);
    let c = verify(&s, again.to_str().unwrap());
    assert_eq!((c.iat, c.exp), (t, t + ASSERTION_LIFETIME_SECS));
    assert_eq!(c.jti.len(), 22, "16 random bytes in base64url");
    assert_eq!(c.email, "alice@example.com");
    // Claims other than the ones signed (a caller's bug: the content fingerprint must cover
    // what the claims say) make a JWT that does not verify: never one signed for them. (Once
    // the kept JWT went: until then it is what is sent.)
    let later = t + 30 + ASSERTION_KEEP_JWT_SECS;
    assert_eq!(renew_at_once(&cache, &s, later), 0);
    let other = cache
        .get_or_sign(&s, "sess-1", "app.example.com", 0, later, || {
            IdentityClaims {
                email: "mallory@example.com".into(),
                ..claims(0)
            }
        })
        .unwrap();
    let set: JwkSet = serde_json::from_str(s.jwks_json()).unwrap();
    let key = DecodingKey::from_jwk(set.find(s.kid()).unwrap()).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["app.example.com"]);
    assert!(jsonwebtoken::decode::<IdentityClaims>(other.to_str().unwrap(), &key, &v).is_err());
}
