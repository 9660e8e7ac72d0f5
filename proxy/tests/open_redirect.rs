//! End to end: the open-redirect corpus (`auth/tests/data/open_redirect_payloads.txt`) offered
//! to every parameter of the live proxy that takes a URL to send a browser to, on one proxy.
//! No answer's `Location`, and no link on an answered page, may lead to an authority (host and
//! port) that is not configured (a route host or the authenticate host on a port they serve,
//! or the IdP); the programmatic login's return address may only be a loopback one.
//!
//! The parameters: `portcullis_redirect_uri` of `/.portcullis/sign_in` (signed, browser and
//! programmatic), of `/.portcullis/api/v1/login` (authenticate and route host), what a
//! sign-out is offered (`portcullis_redirect_uri`, `redirect_uri`), which it must ignore, and
//! the return address a handoff carries to `/.portcullis/callback/`.

use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_auth::{BrowserBinding, Cipher, Handoff, Secret, UrlSigner};
use portcullis_harness::{open_redirect_payloads, Browser, TestEnv};
use url::Url;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The corpus with `app.localhost` on the proxy's port as the allowed host.
fn payloads(env: &TestEnv) -> Vec<String> {
    let port = env.port.to_string();
    open_redirect_payloads("app.localhost", &format!("app.localhost:{port}"), &port)
}

/// Checks one answer to `request`: its `Location` and the links of its page lead only to
/// `allowed` authorities (`host:port`). Returns where `Location` leads, resolved as a browser
/// would.
async fn check(
    resp: reqwest::Response,
    request: &Url,
    allowed: &[String],
    what: &str,
) -> Option<Url> {
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().expect("an ASCII Location").to_owned());
    let body = resp.text().await.unwrap_or_default();
    let leads_to = |link: &str| {
        let target = request
            .join(link)
            .unwrap_or_else(|e| panic!("{what}: unparsable link {link:?}: {e}"));
        let authority = format!(
            "{}:{}",
            target.host_str().unwrap_or_default(),
            target.port_or_known_default().unwrap_or_default()
        );
        assert!(
            matches!(target.scheme(), "http" | "https") && allowed.contains(&authority),
            "{what}: {status} leads to {target}"
        );
        target
    };
    assert!(
        matches!(status, 200 | 302 | 303 | 400),
        "{what}: unexpected {status}"
    );
    for link in body.split("href=\"").skip(1) {
        let link = link.split('"').next().unwrap_or_default();
        leads_to(&link.replace("&amp;", "&"));
    }
    location.map(|l| leads_to(&l))
}

fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn no_url_parameter_leads_off_the_configured_hosts() {
    let env = TestEnv::builder(env!("CARGO_BIN_EXE_portcullis"))
        .route(
            "from = \"http://app.localhost\"\nto = \"{upstream}\"\nallow_any_authenticated_user = true",
        )
        .start()
        .await;
    let payloads = payloads(&env);
    assert!(payloads.len() >= 300);

    let signer = UrlSigner::new(&Secret::from_base64(env.shared_secret()).unwrap());
    let idp = Url::parse(env.idp.issuer()).unwrap();
    let idp_host = idp.host_str().unwrap().to_owned();
    let idp_authority = format!(
        "{idp_host}:{}",
        idp.port_or_known_default().unwrap_or_default()
    );
    // Route and authenticate hosts without a port in their URL: the listener's port and the
    // scheme's default.
    let configured = [
        format!("app.localhost:{}", env.port),
        "app.localhost:80".to_owned(),
        format!("authenticate.localhost:{}", env.port),
        "authenticate.localhost:80".to_owned(),
        idp_authority,
    ];
    let loopback = ["localhost", "127.0.0.1", "[::1]"];
    let auth = env.authenticate_url();
    let app = env.url("app", "/");

    // Signed in on the authenticate host, so that a sign-in link answers at once with the
    // handoff to where it returns, instead of a trip through the IdP.
    let browser: Browser = env.signed_in("app", "alice").await;
    let anonymous = env.browser();
    let binding = BrowserBinding::new();

    let mut returned = 0;
    for raw in &payloads {
        // 1. The signed sign-in link, browser flow: refused, or a handoff to a route host.
        let mut url = Url::parse(&format!("{auth}/.portcullis/sign_in")).unwrap();
        // With a binding digest, as a route host's link carries (required for route hosts).
        url.query_pairs_mut()
            .append_pair("portcullis_redirect_uri", raw)
            .append_pair("portcullis_binding", binding.digest().as_str());
        let signed = signer.sign(&url, now(), 300);
        let what = format!("sign_in {raw:?}");
        let resp = browser.get(signed.as_str()).await;
        if let Some(to) = check(resp, &signed, &configured, &what).await {
            returned += 1;
            assert_eq!(to.path(), "/.portcullis/callback/", "{what}: {to}");
        }

        // 2. The same, programmatic: refused, or off to the IdP (the return is checked at 3).
        url.query_pairs_mut()
            .append_pair("portcullis_programmatic", "true")
            .append_pair("portcullis_scope", "app.localhost:80");
        let signed = signer.sign(&url, now(), 300);
        let what = format!("programmatic sign_in {raw:?}");
        let resp = anonymous.get(signed.as_str()).await;
        if let Some(to) = check(resp, &signed, &configured, &what).await {
            assert_eq!(to.host_str(), Some(idp_host.as_str()), "{what}: {to}");
        }

        // 3. The programmatic login API, on both hosts: a link whose return is loopback only.
        for base in [auth.as_str(), app.trim_end_matches('/')] {
            let mut url = Url::parse(&format!("{base}/.portcullis/api/v1/login")).unwrap();
            url.query_pairs_mut()
                .append_pair("portcullis_redirect_uri", raw);
            let what = format!("login API on {base} {raw:?}");
            let resp = anonymous.get(url.as_str()).await;
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            if status == 200 {
                let link = Url::parse(body.trim()).unwrap_or_else(|e| panic!("{what}: {e}"));
                let back = query_param(&link, "portcullis_redirect_uri").unwrap_or_default();
                let back = Url::parse(&back).unwrap_or_else(|e| panic!("{what}: {back}: {e}"));
                assert!(
                    matches!(back.scheme(), "http" | "https")
                        && loopback.contains(&back.host_str().unwrap_or_default()),
                    "{what}: returns to {back}"
                );
            } else {
                assert!(matches!(status, 400 | 404), "{what}: {status}");
            }
        }

        // 4. Sign-out takes no return address: whatever it is offered, it goes nowhere else.
        for base in [auth.as_str(), app.trim_end_matches('/')] {
            for param in ["portcullis_redirect_uri", "redirect_uri"] {
                let mut url = Url::parse(&format!("{base}/.portcullis/sign_out")).unwrap();
                url.query_pairs_mut().append_pair(param, raw);
                // The GET shows the page; the POST (its button) is what redirects.
                for method in [reqwest::Method::GET, reqwest::Method::POST] {
                    let what = format!("{method} sign_out on {base} {param}={raw:?}");
                    let resp = anonymous.request(method, url.as_str(), &[], None).await;
                    check(resp, &url, &configured, &what).await;
                }
            }
        }
    }
    // The corpus holds a few addresses on the allowed host: they do come back, so the
    // sign-in checks above were not all refusals for another reason.
    assert!(returned > 0, "{}", env.logs());
}

/// A handoff carries its return address sealed, validated when the authenticate host minted
/// it; the route host's callback checks it again (defence in depth: a key leak or a bug at
/// issuance must not turn the callback into an open redirect or a `javascript:` sink). Each
/// payload is sealed into a handoff as the authenticate host would, and presented.
#[tokio::test]
async fn a_handoff_returns_only_to_its_own_host_over_http() {
    let env = TestEnv::builder(env!("CARGO_BIN_EXE_portcullis"))
        .route(
            "from = \"http://app.localhost\"\nto = \"{upstream}\"\nallow_any_authenticated_user = true",
        )
        .start()
        .await;
    let cipher = Cipher::new(&Secret::from_base64(env.cookie_secret()).unwrap());
    let app = env.url("app", "/");
    let anonymous = env.browser();
    let mut returned = 0;
    for raw in &payloads(&env) {
        // Sealed for this host and for this browser's binding cookie, as a real one is.
        let binding = BrowserBinding::new();
        let authority = format!("app.localhost:{}", env.port);
        let handoff = Handoff::new(
            "s-open-redirect",
            raw.as_str(),
            authority,
            binding.digest(),
            now(),
        )
        .seal(&cipher);
        let binding_cookie = format!("_portcullis_csrf={}", binding.cookie_value());
        let mut url = Url::parse(&format!("{app}.portcullis/callback/")).unwrap();
        url.query_pairs_mut()
            .append_pair("portcullis_handoff", &handoff);
        let what = format!("callback {raw:?}");
        let resp = anonymous
            .get_with(url.as_str(), &[("cookie", &binding_cookie)])
            .await;
        let allowed = [format!("app.localhost:{}", env.port)];
        if let Some(to) = check(resp, &url, &allowed, &what).await {
            assert_eq!(to.port(), Some(env.port), "{what}: {to}");
            returned += 1;
        }
    }
    assert!(returned > 0, "{}", env.logs());
}
