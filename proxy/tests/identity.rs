//! End-to-end tests of identity and sessions: the real proxy binary, a real OpenID Connect
//! provider and a recording upstream, all on loopback (see `portcullis-harness`).

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_auth::{Cipher, Secret, SessionCookie};
use portcullis_harness::{
    free_port, location, metric, query_param, set_cookies, unix_now, TestEnv, COOKIE, JSON,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const JWT_HEADER: &str = "x-portcullis-jwt-assertion";

async fn jwks(env: &TestEnv, url: &str) -> JwkSet {
    let resp = env.browser().get(url).await;
    assert_eq!(resp.status(), 200, "GET {url}");
    resp.json().await.expect("JWKS is JSON")
}

/// Verifies `jwt` against `set` for audience `host` and returns its header kid and claims.
fn verify(set: &JwkSet, jwt: &str, host: &str) -> (String, Value) {
    let header = jsonwebtoken::decode_header(jwt).expect("JWT header");
    assert_eq!(header.alg, Algorithm::ES256);
    let kid = header.kid.expect("JWT header has a kid");
    let jwk = set.find(&kid).expect("the kid is in the JWKS");
    assert_eq!(jwk.common.key_id.as_deref(), Some(kid.as_str()));
    let key = DecodingKey::from_jwk(jwk).expect("JWK is a usable key");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[host]);
    validation.set_issuer(&[host]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .unwrap_or_else(|e| panic!("JWT does not verify: {e}"));
    (kid, data.claims)
}

/// A cookie sealed with `cookie_secret` for `session_id`, on the host whose scope is `scope`
/// (`host:port`).
fn seal(cookie_secret: &str, scope: &str, session_id: &str, expires_in: i64) -> String {
    let now = unix_now();
    let cipher = Cipher::new(&Secret::from_base64(cookie_secret).unwrap());
    SessionCookie {
        session_id: session_id.to_owned(),
        scope: scope.to_owned(),
        issued_at: now - 10,
        expires_at: now + expires_in,
    }
    .seal(&cipher)
}

// 1. The identity JWT and claim headers.
#[tokio::test]
async fn identity_jwt_reaches_upstream_and_verifies() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let b = env.browser();
    let resp = b.sign_in(&env.url("app", "/hello"), "alice").await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    let req = env.upstream.last().expect("the upstream was reached");
    assert_eq!(req.path(), "/hello");
    let jwt = req
        .header(JWT_HEADER)
        .expect("identity JWT sent upstream")
        .to_owned();

    let set = jwks(&env, &env.url("app", "/.well-known/portcullis/jwks.json")).await;
    let auth_set = jwks(
        &env,
        &format!(
            "{}/.well-known/portcullis/jwks.json",
            env.authenticate_url()
        ),
    )
    .await;
    assert_eq!(
        set, auth_set,
        "route host and authenticate host serve one JWKS"
    );

    let (_kid, claims) = verify(&set, &jwt, "app.localhost");
    assert_eq!(claims["iss"], "app.localhost");
    assert_eq!(claims["aud"], "app.localhost");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["user"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["groups"], serde_json::json!(["admins", "users"]));
    assert!(claims["name"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(claims["sid"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(claims["jti"].as_str().is_some_and(|s| !s.is_empty()));
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(exp > iat && exp - iat <= 300, "iat {iat} exp {exp}");

    // The same JWT must not verify for another audience.
    let mut other = Validation::new(Algorithm::ES256);
    other.set_audience(&["admin.localhost"]);
    let key = DecodingKey::from_jwk(&set.keys[0]).unwrap();
    assert!(jsonwebtoken::decode::<Value>(&jwt, &key, &other).is_err());

    assert_eq!(req.header("x-email"), Some("alice@example.com"));
    assert_eq!(req.header("x-groups"), Some("admins,users"));

    // Cached: the next requests carry the same JWT, and only one was ever signed.
    for i in 0..4 {
        let resp = b.get(&env.url("app", &format!("/again/{i}"))).await;
        assert_eq!(resp.status(), 200);
        let req = env.upstream.last().unwrap();
        assert_eq!(req.path(), format!("/again/{i}"));
        assert_eq!(req.header(JWT_HEADER), Some(jwt.as_str()));
    }
    let metrics = env.proxy.metrics().await;
    assert_eq!(
        metric(&metrics, "portcullis_identity_jwt_signatures_total"),
        Some(1.0),
        "{metrics}"
    );
}

// 2. Nothing a client sends may pose as Portcullis or as the forwarding chain.
#[tokio::test]
async fn spoofed_identity_and_forwarding_headers_are_replaced() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let b = env.signed_in("app", "alice").await;
    let spoofed = [
        ("X-Portcullis-Jwt-Assertion", "forged"),
        ("X-Portcullis-Anything", "x"),
        ("X-Email", "evil@x"),
        ("X-Groups", "admins"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Host", "evil"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=6.6.6.6"),
    ];
    let check = |host: &str, signed_in: bool| {
        let req = env.upstream.last().expect("the upstream was reached");
        let jwt = req.header_all(JWT_HEADER);
        if signed_in {
            assert_eq!(jwt.len(), 1, "{host}: {jwt:?}");
            assert!(jwt[0].starts_with("eyJ"), "{host}: {jwt:?}");
            assert_eq!(req.header_all("x-email"), vec!["alice@example.com"]);
            assert_eq!(req.header_all("x-groups"), vec!["admins,users"]);
        } else {
            assert!(jwt.is_empty(), "{host}: {jwt:?}");
            assert!(req.header_all("x-email").is_empty(), "{host}");
            assert!(req.header_all("x-groups").is_empty(), "{host}");
        }
        assert!(req.header("x-portcullis-anything").is_none(), "{host}");
        assert_eq!(
            req.header_all("x-forwarded-for"),
            vec!["127.0.0.1"],
            "{host}"
        );
        assert_eq!(
            req.header_all("x-forwarded-host"),
            vec![format!("{host}:{}", env.port)],
            "{host}"
        );
        assert_eq!(req.header_all("x-forwarded-proto"), vec!["http"], "{host}");
        assert!(req.header("forwarded").is_none(), "{host}");
        for (_, v) in &req.headers {
            assert!(
                !v.contains("6.6.6.6") && v != "forged" && v != "evil@x" && v != "evil",
                "{host}: client value reached the upstream: {:?}",
                req.headers
            );
        }
    };

    let resp = b.get_with(&env.url("app", "/spoof"), &spoofed).await;
    assert_eq!(resp.status(), 200);
    check("app.localhost", true);

    // A public route strips them too, without any session.
    let anonymous = env.browser();
    let resp = anonymous
        .get_with(&env.url("public", "/spoof"), &spoofed)
        .await;
    assert_eq!(resp.status(), 200);
    check("public.localhost", false);
}

// 3. The session cookie stays at the proxy; the application's own cookies pass.
#[tokio::test]
async fn session_cookie_is_stripped_other_cookies_pass() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let b = env.signed_in("app", "alice").await;
    let cookie = env.session_cookie(&b, "app");

    // Only the session cookie: no Cookie header at all upstream.
    let req = env.upstream.last().unwrap();
    for v in req.header_all("cookie") {
        assert!(
            !v.contains(COOKIE),
            "session cookie reached the upstream: {v}"
        );
    }

    // Session cookie between others, and a second Cookie header.
    let fresh = env.browser();
    let header = format!("theme=dark; {COOKIE}={cookie}; lang=en");
    let resp = fresh
        .get_with(
            &env.url("app", "/cookies"),
            &[("cookie", header.as_str()), ("cookie", "extra=1")],
        )
        .await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    let req = env.upstream.last().unwrap();
    assert_eq!(req.path(), "/cookies");
    let sent = req.header_all("cookie").join("; ");
    assert!(
        !sent.contains(COOKIE),
        "session cookie reached the upstream: {sent}"
    );
    assert!(
        !sent.contains(&cookie),
        "session cookie value reached the upstream"
    );
    for kept in ["theme=dark", "lang=en", "extra=1"] {
        assert!(sent.contains(kept), "{kept} missing upstream: {sent}");
    }

    // The browser's own jar: a cookie of the application next to the session cookie.
    b.set_cookie(&env.url("app", "/"), "theme=dark; Path=/");
    let resp = b.get(&env.url("app", "/jar")).await;
    assert_eq!(resp.status(), 200);
    let sent = env.upstream.last().unwrap().header_all("cookie").join("; ");
    assert_eq!(sent, "theme=dark");
}

// 4. A tampered or foreign cookie is never a session.
#[tokio::test]
async fn tampered_cookies_are_refused() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let b = env.signed_in("app", "alice").await;
    let good = env.session_cookie(&b, "app");
    let me: Value = b
        .get_with(&env.url("app", "/.portcullis/"), &[JSON])
        .await
        .json()
        .await
        .unwrap();
    let session_id = me["session_id"].as_str().expect("session_id").to_owned();

    // A handoff token minted for another route host (admin), captured before use.
    let admin_browser = env.browser();
    let (_, visited) = admin_browser
        .sign_in_until(&env.url("admin", "/"), "alice", |u| {
            u.contains("portcullis_handoff=")
        })
        .await;
    let handoff = query_param(visited.last().unwrap(), "portcullis_handoff")
        .expect("a handoff to the admin host");

    // Control: a cookie sealed with the right secret for the live session is accepted, so
    // the refusals below are about the cookie, not the way it is sent.
    let app_scope = format!("app.localhost:{}", env.port);
    let control = seal(env.cookie_secret(), &app_scope, &session_id, 3600);
    let resp = env
        .browser()
        .get_with(
            &env.url("app", "/control"),
            &[("cookie", &format!("{COOKIE}={control}"))],
        )
        .await;
    assert_eq!(resp.status(), 200, "control cookie refused");

    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let flip = |pos: usize| {
        let mut bytes = good.clone().into_bytes();
        let i = ALPHABET.iter().position(|c| *c == bytes[pos]).unwrap_or(0);
        // +32 flips the highest of the six bits, which always carries data.
        bytes[pos] = ALPHABET[(i + 32) % 64];
        String::from_utf8(bytes).unwrap()
    };
    let n = good.len();
    let mut cases: Vec<(String, String)> = [0, 1, n / 3, n / 2, n - 2, n - 1]
        .into_iter()
        .map(|p| (format!("flipped at {p}"), flip(p)))
        .collect();
    cases.extend([
        ("truncated by one".into(), good[..n - 1].to_owned()),
        ("truncated by half".into(), good[..n / 2].to_owned()),
        ("appended".into(), format!("{good}A")),
        ("doubled".into(), format!("{good}{good}")),
        ("empty".into(), String::new()),
        (
            "sealed with another cookie_secret".into(),
            seal(
                &portcullis_harness::random_secret(),
                &app_scope,
                &session_id,
                3600,
            ),
        ),
        (
            "sealed with the shared_secret".into(),
            seal(env.shared_secret(), &app_scope, &session_id, 3600),
        ),
        (
            "expired".into(),
            seal(env.cookie_secret(), &app_scope, &session_id, -1),
        ),
        (
            "unknown session id".into(),
            seal(env.cookie_secret(), &app_scope, "no-such-session", 3600),
        ),
        (
            "sealed for the admin host".into(),
            seal(
                env.cookie_secret(),
                &format!("admin.localhost:{}", env.port),
                &session_id,
                3600,
            ),
        ),
        ("another host's handoff token".into(), handoff),
    ]);

    let before = env.upstream.requests().len();
    for (what, value) in &cases {
        let cookie = format!("{COOKIE}={value}");
        let resp = env
            .browser()
            .get_with(&env.url("app", "/secret"), &[("cookie", &cookie)])
            .await;
        env.assert_sign_in_redirect(&resp, what);
        let resp = env
            .browser()
            .get_with(&env.url("app", "/secret"), &[("cookie", &cookie), JSON])
            .await;
        assert_eq!(resp.status(), 401, "{what}: JSON client");
        // The same value as a bearer token is no better.
        if !value.is_empty() {
            let bearer = format!("Bearer Portcullis-{value}");
            let resp = env
                .browser()
                .get_with(
                    &env.url("app", "/secret"),
                    &[("authorization", bearer.as_str())],
                )
                .await;
            assert_eq!(resp.status(), 401, "{what}: bearer");
        }
    }
    assert_eq!(
        env.upstream.requests().len(),
        before,
        "a refused request reached the upstream"
    );
}

// 5. Sign-out ends the session everywhere.
#[tokio::test]
async fn sign_out_ends_the_session_on_every_host() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let b = env.signed_in("app", "alice").await;
    let (resp, visited) = b.sign_in_visited(&env.url("admin", "/"), "alice").await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    // The second host gets the same session, without another trip to the IdP.
    assert!(
        visited.iter().all(|u| !u.starts_with(env.idp.issuer())),
        "{visited:#?}"
    );
    let mut ids = Vec::new();
    for host in ["app", "admin"] {
        let me: Value = b
            .get_with(&env.url(host, "/.portcullis/"), &[JSON])
            .await
            .json()
            .await
            .unwrap();
        ids.push(me["session_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids[0], ids[1], "one session for both hosts");
    let app_cookie = env.session_cookie(&b, "app");
    let admin_cookie = env.session_cookie(&b, "admin");

    // Both work before.
    for (host, cookie) in [("app", &app_cookie), ("admin", &admin_cookie)] {
        let resp = env
            .browser()
            .get_with(
                &env.url(host, "/before"),
                &[("cookie", &format!("{COOKIE}={cookie}"))],
            )
            .await;
        assert_eq!(resp.status(), 200, "{host} before sign-out");
    }

    // A same-origin POST, as the sign-out page's button sends it.
    let origin = env.url("app", "/").trim_end_matches('/').to_owned();
    let resp = b
        .request(
            reqwest::Method::POST,
            &env.url("app", "/.portcullis/sign_out"),
            &[("origin", &origin)],
            None,
        )
        .await;
    assert_eq!(resp.status(), 302);
    let loc = location(&resp);
    assert!(
        loc.starts_with(env.idp.issuer()),
        "sign-out goes to the IdP's end-session endpoint, not {loc}"
    );
    let cleared = set_cookies(&resp);
    assert!(
        cleared.iter().any(|c| c.starts_with(&format!("{COOKIE}="))
            && c.to_ascii_lowercase().contains("max-age=0")),
        "session cookie not cleared: {cleared:?}"
    );
    assert!(b.cookie(&env.url("app", "/"), COOKIE).is_none());

    // The old values, replayed, are dead on both hosts at once.
    let before = env.upstream.requests().len();
    for (host, cookie) in [("app", &app_cookie), ("admin", &admin_cookie)] {
        let cookie = format!("{COOKIE}={cookie}");
        let resp = env
            .browser()
            .get_with(&env.url(host, "/after"), &[("cookie", &cookie)])
            .await;
        env.assert_sign_in_redirect(&resp, &format!("{host} after sign-out"));
        let resp = env
            .browser()
            .get_with(&env.url(host, "/after"), &[("cookie", &cookie), JSON])
            .await;
        assert_eq!(resp.status(), 401, "{host} after sign-out (JSON)");
        let resp = env
            .browser()
            .get_with(
                &env.url(host, "/.portcullis/"),
                &[("cookie", &cookie), JSON],
            )
            .await;
        assert_eq!(resp.status(), 401, "{host} user page after sign-out");
    }
    assert_eq!(env.upstream.requests().len(), before);

    // The browser, following the sign-out through the IdP, ends signed out.
    let (_, visited) = b.sign_out(&env.url("admin", "/.portcullis/sign_out")).await;
    assert!(visited.len() > 1, "{visited:?}");
    let resp = b.get(&env.url("admin", "/x")).await;
    env.assert_sign_in_redirect(&resp, "admin after following sign-out");
}

// 6. The user page.
#[tokio::test]
async fn user_page_shows_identity_but_no_token() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let b = env.signed_in("app", "alice").await;

    let resp = b.get(&env.url("app", "/.portcullis/")).await;
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/html"), "{ct}");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let html = resp.text().await.unwrap();
    for want in ["alice@example.com", "admins", "users"] {
        assert!(html.contains(want), "user page lacks {want}");
    }
    assert_no_token(&html);

    let resp = b.get_with(&env.url("app", "/.portcullis/"), &[JSON]).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let text = resp.text().await.unwrap();
    assert_no_token(&text);
    let me: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["groups"], serde_json::json!(["admins", "users"]));
    assert!(me["claims"].is_object(), "{me}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expires = me["expires_at"].as_i64().expect("expires_at");
    assert!(expires > now, "{me}");

    // Anonymous.
    let anon = env.browser();
    let resp = anon.get(&env.url("app", "/.portcullis/")).await;
    env.assert_sign_in_redirect(&resp, "anonymous user page");
    let resp = anon
        .get_with(&env.url("app", "/.portcullis/"), &[JSON])
        .await;
    assert_eq!(resp.status(), 401);
}

fn assert_no_token(text: &str) {
    assert!(!text.contains("eyJ"), "a JWT is shown: {text}");
    let lower = text.to_ascii_lowercase();
    for word in [
        "refresh_token",
        "access_token",
        "id_token",
        "refresh token",
        "access token",
    ] {
        assert!(!lower.contains(word), "{word} is shown: {text}");
    }
}

// 7. Denied by policy.
#[tokio::test]
async fn policy_denial_is_403_naming_the_request_id() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let before = env.upstream.requests().len();
    let bob = env.browser();
    let resp = bob.sign_in(&env.url("admin", "/"), "bob").await;
    assert_eq!(resp.status(), 403);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = resp.text().await.unwrap();
    assert_no_token(&html);
    let page_id = request_id_on_page(&html).expect("the deny page names a request id");
    // The id on the page is the one the access log recorded for this 403 (the log line is
    // written just after the response, so give it a moment).
    let mut logged = false;
    for _ in 0..50 {
        logged = env.proxy.json_logs().into_iter().any(|l| {
            let fields = l.get("fields").unwrap_or(&l);
            fields["request_id"] == page_id.as_str() && fields["status"] == 403
        });
        if logged {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        logged,
        "request id {page_id} not in the access log as a 403"
    );

    let resp = bob.get_with(&env.url("admin", "/x"), &[JSON]).await;
    assert_eq!(resp.status(), 403);
    let text = resp.text().await.unwrap();
    assert_no_token(&text);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], 403);
    assert!(
        body["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    assert_ne!(body["request_id"].as_str(), Some(page_id.as_str()));
    assert_eq!(
        env.upstream.requests().len(),
        before,
        "a denied request reached the upstream"
    );

    // bob may use the app route; alice may use the admin one.
    assert_eq!(bob.sign_in(&env.url("app", "/"), "bob").await.status(), 200);
    let alice = env.signed_in("admin", "alice").await;
    assert_eq!(alice.get(&env.url("admin", "/y")).await.status(), 200);
    assert_eq!(env.upstream.last().unwrap().path(), "/y");
}

/// The 16-hex-digit id in `<code>…</code>` after "Request id".
fn request_id_on_page(html: &str) -> Option<String> {
    let at = html.find("Request id")?;
    let rest = &html[at..];
    let start = rest.find("<code>")? + "<code>".len();
    let end = rest[start..].find("</code>")? + start;
    let id = &rest[start..end];
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

// 8. Handoff tokens: single use, one host.
#[tokio::test]
async fn handoff_is_single_use_and_bound_to_its_host() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let b = env.browser();
    let (resp, visited) = b
        .sign_in_until(&env.url("app", "/landing"), "alice", |u| {
            u.contains("portcullis_handoff=")
        })
        .await;
    assert_eq!(resp.status(), 302);
    let callback = visited.last().unwrap().clone();
    assert!(
        callback.starts_with(&env.url("app", "/.portcullis/callback/?portcullis_handoff=")),
        "{callback}"
    );
    let token = query_param(&callback, "portcullis_handoff").unwrap();

    // Another route host refuses it (and does not use it up).
    let thief = env.browser();
    let elsewhere = format!(
        "{}?portcullis_handoff={}",
        env.url("admin", "/.portcullis/callback/"),
        token
    );
    let resp = thief.get(&elsewhere).await;
    assert_eq!(resp.status(), 400);
    assert!(set_cookies(&resp).iter().all(|c| !c.starts_with(COOKIE)));

    // Its own host takes it once.
    let resp = b.get(&callback).await;
    assert_eq!(resp.status(), 302, "{}", env.logs());
    assert_eq!(location(&resp), env.url("app", "/landing"));
    assert!(set_cookies(&resp)
        .iter()
        .any(|c| c.starts_with(&format!("{COOKIE}="))));
    assert_eq!(b.get(&env.url("app", "/landing")).await.status(), 200);

    // A second time, from anywhere: 400.
    for who in [env.browser(), b.clone()] {
        let resp = who.get(&callback).await;
        assert_eq!(resp.status(), 400, "replayed handoff");
        assert!(set_cookies(&resp).iter().all(|c| !c.starts_with(COOKIE)));
    }

    // Garbage.
    for garbage in ["garbage", "", "eyJhbGciOiJub25lIn0.e30."] {
        let url = format!(
            "{}?portcullis_handoff={garbage}",
            env.url("app", "/.portcullis/callback/")
        );
        assert_eq!(env.browser().get(&url).await.status(), 400, "{garbage:?}");
    }
    let resp = env
        .browser()
        .get(&env.url("app", "/.portcullis/callback/"))
        .await;
    assert_eq!(resp.status(), 400, "no token");
}

// 9. Programmatic login for command-line clients.
#[tokio::test]
async fn programmatic_login_yields_a_bearer_token() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let port = free_port();
    let cb = format!("http://127.0.0.1:{port}/cb");
    // Asked on the route host the token is for, as Pomerium's CLI does.
    let api = env.url("app", "/.portcullis/api/v1/login");
    let resp = env
        .browser()
        .get(&format!("{api}?portcullis_redirect_uri={cb}"))
        .await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let link = resp.text().await.unwrap().trim().to_owned();
    assert!(
        link.starts_with(&format!("{}/.portcullis/sign_in?", env.authenticate_url())),
        "{link}"
    );

    // The link is signed: pointing it elsewhere breaks it.
    let tampered = link.replace(&port.to_string(), &(port ^ 1).to_string());
    assert_ne!(tampered, link);
    assert_eq!(env.browser().get(&tampered).await.status(), 400);

    let b = env.browser();
    let prefix = format!("http://127.0.0.1:{port}/");
    let (resp, visited) = b
        .sign_in_until(&link, "alice", |u| u.starts_with(&prefix))
        .await;
    assert_eq!(resp.status(), 302, "{visited:#?}\n{}", env.logs());
    let back = location(&resp);
    assert!(back.starts_with(&cb), "{back}");
    let token = query_param(&back, "portcullis_token").expect("portcullis_token");
    assert!(!token.is_empty());

    let bearer = format!("Bearer Portcullis-{token}");
    let cli = env.browser();
    let resp = cli
        .get_with(&env.url("app", "/api"), &[("authorization", &bearer)])
        .await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    let req = env.upstream.last().unwrap();
    assert_eq!(req.path(), "/api");
    assert!(
        req.header("authorization").is_none(),
        "the Authorization header reached the upstream"
    );
    assert!(req.headers.iter().all(|(_, v)| !v.contains(&token)));
    assert_eq!(req.header("x-email"), Some("alice@example.com"));

    let resp = cli
        .get_with(
            &env.url("app", "/.portcullis/"),
            &[("authorization", &bearer), JSON],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let me: Value = resp.json().await.unwrap();
    assert_eq!(me["email"], "alice@example.com");

    // A wrong token is a 401 (an API client is never sent to sign in).
    let resp = cli
        .get_with(
            &env.url("app", "/api"),
            &[("authorization", "Bearer Portcullis-nope")],
        )
        .await;
    assert_eq!(resp.status(), 401);

    // The token is app's: on the admin host it is no credential at all.
    let resp = cli
        .get_with(&env.url("admin", "/api"), &[("authorization", &bearer)])
        .await;
    assert_eq!(resp.status(), 401, "{}", env.logs());

    // The authenticate host's own endpoint keeps answering.
    let own = format!(
        "{}/.portcullis/api/v1/login?portcullis_redirect_uri={cb}",
        env.authenticate_url()
    );
    let resp = env.browser().get(&own).await;
    assert_eq!(resp.status(), 200, "{}", env.logs());

    // Only loopback return addresses.
    for bad in [
        "https://evil.example/cb",
        "http://evil.example/cb",
        "http://localhost.evil.example/cb",
        "http://127.0.0.1.evil.example/cb",
        "//evil.example/cb",
        "javascript:alert(1)",
    ] {
        let url = url::Url::parse_with_params(&api, &[("portcullis_redirect_uri", bad)]).unwrap();
        let resp = env.browser().get(url.as_str()).await;
        assert_eq!(resp.status(), 400, "{bad}");
    }
}

// 10. The IdP callback.
#[tokio::test]
async fn oauth_callback_needs_its_state_cookie() {
    let env = TestEnv::app_admin_public(BIN).start().await;
    let callback = format!("{}/oauth2/callback", env.authenticate_url());

    // No state cookie, or a forged one, or another sealed token in its place.
    let session_sealed = seal(
        env.cookie_secret(),
        "authenticate.localhost:1",
        "whatever",
        3600,
    );
    for cookie in [
        None,
        Some("_portcullis_login=forged".to_owned()),
        Some("_portcullis_login=".to_owned()),
        Some(format!("_portcullis_login={session_sealed}")),
    ] {
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
        let resp = env
            .browser()
            .get_with(&format!("{callback}?code=abc&state=xyz"), &headers)
            .await;
        assert_eq!(resp.status(), 400, "{cookie:?}");
        assert!(set_cookies(&resp)
            .iter()
            .all(|c| !c.starts_with(&format!("{COOKIE}="))));
    }

    // A real flow started, then refused by the IdP.
    let b = env.browser();
    let resp = b.get(&env.url("app", "/start")).await;
    env.assert_sign_in_redirect(&resp, "protected route");
    let resp = b.get(&location(&resp)).await;
    assert_eq!(resp.status(), 302);
    let authorize = location(&resp);
    assert!(authorize.starts_with(env.idp.issuer()), "{authorize}");
    let state = query_param(&authorize, "state").expect("state");
    assert!(b
        .cookie(&env.authenticate_url(), "_portcullis_login")
        .is_some());

    // The state cookie belongs to this browser: another browser with the right state is refused.
    let url = format!("{callback}?error=access_denied&state={state}");
    assert_eq!(env.browser().get(&url).await.status(), 400);

    let url =
        format!("{callback}?error=access_denied&error_description=user%20said%20no&state={state}");
    let resp = b.get(&url).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(set_cookies(&resp)
        .iter()
        .all(|c| !c.starts_with(&format!("{COOKIE}="))));
    let html = resp.text().await.unwrap();
    assert!(html.contains("access_denied"), "{html}");
    env.assert_sign_in_redirect(&b.get(&env.url("app", "/start")).await, "still signed out");

    // A made-up code with the right state cookie does not sign anyone in either.
    let resp = b.get(&env.url("app", "/start")).await;
    let resp = b.get(&location(&resp)).await;
    let state = query_param(&location(&resp), "state").unwrap();
    let resp = b
        .get(&format!("{callback}?code=made-up&state={state}"))
        .await;
    assert!(
        matches!(resp.status().as_u16(), 400 | 401),
        "{}",
        resp.status()
    );
    assert!(set_cookies(&resp)
        .iter()
        .all(|c| !c.starts_with(&format!("{COOKIE}="))));
}
