//! Sessions bound to their host and handoffs bound to the browser (issue #23): a session
//! cookie or token issued for one route host is no credential on another, and a handoff link
//! opened in a browser other than the one it was minted for signs nobody in.

use portcullis_harness::{location, route, set_cookies, unix_now, Browser, TestEnv, COOKIE, JSON};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Two route hosts any signed-in user may use.
async fn two_hosts() -> TestEnv {
    TestEnv::builder(BIN)
        .route(&route::any_user("app"))
        .route(&route::any_user("admin"))
        .start()
        .await
}

/// Whether a session cookie (not the binding cookie, `_portcullis_csrf`) is set.
fn sets_session_cookie(resp: &reqwest::Response) -> bool {
    set_cookies(resp)
        .iter()
        .any(|c| c.starts_with(&format!("{COOKIE}=")))
}

/// The email of the session `b` has on `host`, or `None` when it has none there.
async fn signed_in_as(env: &TestEnv, b: &Browser, host: &str) -> Option<String> {
    let resp = b.get_with(&env.url(host, "/.portcullis/"), &[JSON]).await;
    if resp.status() != 200 {
        return None;
    }
    let me: Value = resp.json().await.ok()?;
    me["email"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn a_cookie_of_one_host_is_no_session_on_another() {
    let env = two_hosts().await;
    let b = env.signed_in("app", "alice").await;
    let cookie = env.session_cookie(&b, "app");
    let on_admin = env.url("admin", "/reports");
    let by_hand = format!("{COOKIE}={cookie}");

    // Control: the value is a session where it was issued.
    let resp = env
        .browser()
        .get_with(&env.url("app", "/x"), &[("cookie", &by_hand)])
        .await;
    assert_eq!(resp.status(), 200, "{}", env.logs());

    // Sent by hand to the admin host: no session there, the browser is sent to sign in...
    let resp = b.get_with(&on_admin, &[("cookie", &by_hand)]).await;
    env.assert_sign_in_redirect(&resp, "app's cookie on admin");
    let sign_in = location(&resp);
    assert!(env
        .upstream
        .requests()
        .iter()
        .all(|r| r.path() != "/reports"));
    // ...with the binding cookie its handoff will need.
    assert!(
        set_cookies(&resp)
            .iter()
            .any(|c| c.starts_with(&format!("{COOKIE}_csrf="))),
        "{:?}",
        set_cookies(&resp)
    );
    // As an API client, 401.
    let resp = env
        .browser()
        .get_with(&on_admin, &[("cookie", &by_hand), JSON])
        .await;
    assert_eq!(resp.status(), 401);

    // Following the redirect: signed in on the authenticate host already, the browser comes
    // back with admin's own cookie, without a new IdP login.
    let (resp, visited) = b.follow(&sign_in).await;
    assert_eq!(resp.status(), 200, "{visited:#?}\n{}", env.logs());
    assert!(
        visited.iter().all(|u| !u.starts_with(env.idp.issuer())),
        "went to the IdP: {visited:#?}"
    );
    assert_eq!(visited.last().map(String::as_str), Some(on_admin.as_str()));
    let admin_cookie = env.session_cookie(&b, "admin");
    assert_ne!(admin_cookie, cookie);
    // One session, two cookies: each opens only its own host.
    let resp = env
        .browser()
        .get_with(
            &env.url("app", "/x"),
            &[("cookie", &format!("{COOKIE}={admin_cookie}")), JSON],
        )
        .await;
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn a_cookie_value_as_a_bearer_token_works_only_on_its_host() {
    let env = two_hosts().await;
    let b = env.signed_in("app", "alice").await;
    let bearer = format!("Bearer Portcullis-{}", env.session_cookie(&b, "app"));
    let cli = env.browser();

    let resp = cli
        .get_with(&env.url("app", "/api"), &[("authorization", &bearer)])
        .await;
    assert_eq!(resp.status(), 200, "{}", env.logs());

    for form in [
        bearer.clone(),
        bearer.replace("Bearer Portcullis-", "Portcullis "),
    ] {
        let resp = cli
            .get_with(&env.url("admin", "/api"), &[("authorization", &form)])
            .await;
        assert_eq!(resp.status(), 401, "{form}");
    }
    assert_eq!(
        env.upstream
            .requests()
            .iter()
            .filter(|r| r.path() == "/api")
            .count(),
        1,
        "only app's request went through"
    );
}

#[tokio::test]
async fn a_handoff_link_opened_in_another_browser_signs_nobody_in() {
    let env = two_hosts().await;
    let landing = env.url("app", "/landing");

    // Bob's browser signs in; the handoff back to app is captured unused.
    let bob = env.browser();
    let (resp, visited) = bob
        .sign_in_until(&landing, "bob", |u| u.contains("portcullis_handoff="))
        .await;
    assert_eq!(resp.status(), 302, "{visited:#?}\n{}", env.logs());
    let link = visited.last().unwrap().clone();
    assert!(
        link.starts_with(&env.url("app", "/.portcullis/callback/?portcullis_handoff=")),
        "{link}"
    );

    // Opened in a fresh browser (a login-CSRF victim): refused, no session cookie.
    let victim = env.browser();
    let resp = victim.get(&link).await;
    assert_eq!(resp.status(), 400, "{}", env.logs());
    assert!(!sets_session_cookie(&resp));
    assert_eq!(signed_in_as(&env, &victim, "app").await, None);

    // Nor in a browser that has a binding cookie of its own on app.
    let other = env.browser();
    let resp = other.get(&env.url("app", "/.portcullis/")).await;
    assert_eq!(resp.status(), 302);
    assert!(other
        .cookie(&env.url("app", "/.portcullis/"), "_portcullis_csrf")
        .is_some());
    let resp = other.get(&link).await;
    assert_eq!(resp.status(), 400);
    assert!(!sets_session_cookie(&resp));
    assert_eq!(signed_in_as(&env, &other, "app").await, None);

    // Bob's own browser still completes with the same link, and the binding cookie is done.
    let resp = bob.get(&link).await;
    assert_eq!(resp.status(), 302, "{}", env.logs());
    assert_eq!(location(&resp), landing);
    assert!(sets_session_cookie(&resp));
    assert!(
        set_cookies(&resp)
            .iter()
            .any(|c| c.starts_with(&format!("{COOKIE}_csrf=")) && c.contains("Max-Age=0")),
        "{:?}",
        set_cookies(&resp)
    );
    assert_eq!(bob.get(&landing).await.status(), 200);
    assert_eq!(
        signed_in_as(&env, &bob, "app").await.as_deref(),
        Some("bob@example.com")
    );
}

#[tokio::test]
async fn a_sign_in_link_to_a_route_host_needs_a_binding() {
    let env = two_hosts().await;
    let b = env.signed_in("app", "alice").await;
    // The link a route host sends a browser to, stripped of its binding digest and signed
    // again, is refused: no handoff is ever minted unbound.
    let resp = b.get(&env.url("admin", "/")).await;
    env.assert_sign_in_redirect(&resp, "admin without a cookie");
    let link = url::Url::parse(&location(&resp)).unwrap();
    let digest = link
        .query_pairs()
        .find(|(k, _)| k == "portcullis_binding")
        .map(|(_, v)| v.into_owned());
    assert_eq!(digest.map(|d| d.len()), Some(43), "{link}");
    let signer = portcullis_auth::UrlSigner::new(
        &portcullis_auth::Secret::from_base64(env.shared_secret()).unwrap(),
    );
    let mut unbound = link.clone();
    unbound.set_query(None);
    unbound
        .query_pairs_mut()
        .append_pair("portcullis_redirect_uri", &env.url("admin", "/"));
    let resp = b.get(signer.sign(&unbound, unix_now(), 300).as_str()).await;
    assert_eq!(resp.status(), 400, "{}", env.logs());
    assert!(!resp.headers().contains_key("location"));
}
