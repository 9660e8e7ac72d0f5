//! The test IdP, driven by hand through a full authorization-code flow, before any proxy is
//! involved: proves that `idp/server.mjs` is configured the way the proxy's tests rely on.

use base64::Engine as _;
use portcullis_harness::{demo::jwt_payload, Browser, Idp, IdpOptions, Upstream};
use serde_json::Value;
use sha2::Digest as _;

const VERIFIER: &str = "harness-test-code-verifier-0123456789-abcdefghijklmnop";

/// An IdP whose client redirects to `rp.localhost:<upstream port>/cb`, served by `upstream`.
async fn setup() -> (Idp, Upstream, String) {
    let upstream = Upstream::start().await;
    let redirect_uri = format!("http://rp.localhost:{}/cb", upstream.port());
    let idp = Idp::start(IdpOptions {
        redirect_uris: vec![redirect_uri.clone()],
        post_logout_redirect_uris: vec![format!("http://rp.localhost:{}", upstream.port())],
        ..IdpOptions::default()
    })
    .await;
    (idp, upstream, redirect_uri)
}

fn browser(idp: &Idp) -> Browser {
    Browser::new(&["rp.localhost"], 0).with_idp(idp.issuer())
}

fn authorize_url(idp: &Idp, redirect_uri: &str, scope: &str, prompt: Option<&str>) -> String {
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(VERIFIER.as_bytes()));
    let mut url = url::Url::parse(&format!("{}/auth", idp.issuer())).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", idp.client_id())
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", scope)
        .append_pair("state", "st4te")
        .append_pair("nonce", "n0nce")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    if let Some(prompt) = prompt {
        url.query_pairs_mut().append_pair("prompt", prompt);
    }
    url.into()
}

fn query(uri: &str) -> std::collections::HashMap<String, String> {
    let url = url::Url::parse(&format!("http://x{uri}")).unwrap();
    url.query_pairs().into_owned().collect()
}

async fn token(idp: &Idp, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/token", idp.issuer()))
        .basic_auth(idp.client_id(), Some(idp.client_secret()))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Signs in through the browser and redeems the code; returns the token response.
async fn sign_in_and_redeem(
    idp: &Idp,
    upstream: &Upstream,
    redirect_uri: &str,
    login: &str,
    scope: &str,
    prompt: Option<&str>,
) -> Value {
    let b = browser(idp);
    let (resp, visited) = b
        .sign_in_visited(&authorize_url(idp, redirect_uri, scope, prompt), login)
        .await;
    assert_eq!(resp.status(), 200, "visited {visited:#?}\n{}", idp.logs());
    let cb = upstream.last().expect("the callback reached the RP");
    assert_eq!(cb.path(), "/cb");
    let q = query(&cb.uri);
    assert_eq!(q.get("state").map(String::as_str), Some("st4te"), "{q:?}");
    // RFC 9207: the issuer comes back with the code.
    assert_eq!(
        q.get("iss").map(String::as_str),
        Some(idp.issuer()),
        "{q:?}"
    );
    let code = q.get("code").expect("code in the callback");

    let (status, tokens) = token(
        idp,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    tokens
}

#[tokio::test]
async fn discovery_is_served() {
    let (idp, _up, _) = setup().await;
    let doc: Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/.well-known/openid-configuration", idp.issuer()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], idp.issuer());
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    assert!(doc["end_session_endpoint"].is_string());
    assert_eq!(
        doc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    for scope in ["openid", "email", "profile", "offline_access"] {
        assert!(
            doc["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&Value::from(scope)),
            "{scope}"
        );
    }
    assert!(doc["claims_supported"]
        .as_array()
        .unwrap()
        .contains(&Value::from("groups")));
}

#[tokio::test]
async fn authorization_code_flow_with_refresh() {
    let (idp, upstream, redirect_uri) = setup().await;
    let tokens = sign_in_and_redeem(
        &idp,
        &upstream,
        &redirect_uri,
        "alice",
        "openid email profile offline_access",
        Some("consent"),
    )
    .await;

    let claims = jwt_payload(tokens["id_token"].as_str().expect("id_token")).unwrap();
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["aud"], idp.client_id());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["nonce"], "n0nce");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["name"], "Alice Adams");
    assert_eq!(claims["groups"], serde_json::json!(["admins", "users"]));
    // No `sid`: oidc-provider puts it in ID tokens only for clients registered for front- or
    // back-channel logout with `*_session_required`.
    assert!(tokens["access_token"].is_string());
    assert_eq!(tokens["expires_in"], 3600);
    let refresh = tokens["refresh_token"]
        .as_str()
        .expect("a refresh token with offline_access + prompt=consent")
        .to_owned();

    // Refresh: new tokens, and a rotated refresh token.
    let (status, refreshed) = token(
        &idp,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let again = jwt_payload(refreshed["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(again["email"], "alice@example.com");
    assert_eq!(again["groups"], serde_json::json!(["admins", "users"]));
    let rotated = refreshed["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, refresh);
    assert_eq!(idp.token_grants("refresh_token").await, 1);
    assert_eq!(idp.token_grants("authorization_code").await, 1);

    // Changed claims show up at the next refresh.
    idp.set_account("alice", serde_json::json!({"groups": ["users"]}))
        .await;
    let (status, changed) = token(
        &idp,
        &[("grant_type", "refresh_token"), ("refresh_token", &rotated)],
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    let changed_claims = jwt_payload(changed["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(changed_claims["groups"], serde_json::json!(["users"]));
    let latest = changed["refresh_token"].as_str().unwrap().to_owned();

    // Revocation ends the grant: the refresh token stops working.
    let revoked = idp.revoke("alice").await;
    assert_eq!(revoked["grants"], 1, "{revoked}");
    let (status, err) = token(
        &idp,
        &[("grant_type", "refresh_token"), ("refresh_token", &latest)],
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"], "invalid_grant");
}

#[tokio::test]
async fn fixtures_and_defaults() {
    let (idp, upstream, redirect_uri) = setup().await;
    // Without offline_access there is no refresh token; claims still land in the ID token.
    for (login, email, name, groups) in [
        (
            "bob",
            "bob@example.com",
            "Bob Brown",
            serde_json::json!(["users"]),
        ),
        (
            "carol",
            "carol@example.org",
            "Carol Clark",
            serde_json::json!(["contractors"]),
        ),
        ("zed", "zed@example.com", "zed", serde_json::json!([])),
    ] {
        let tokens = sign_in_and_redeem(
            &idp,
            &upstream,
            &redirect_uri,
            login,
            "openid email profile",
            None,
        )
        .await;
        assert!(tokens.get("refresh_token").is_none(), "{tokens}");
        let claims = jwt_payload(tokens["id_token"].as_str().unwrap()).unwrap();
        assert_eq!(claims["sub"], login);
        assert_eq!(claims["email"], email);
        assert_eq!(claims["name"], name);
        assert_eq!(claims["groups"], groups);
    }
    // offline_access without prompt=consent is dropped by oidc-provider: no refresh token.
    let tokens = sign_in_and_redeem(
        &idp,
        &upstream,
        &redirect_uri,
        "bob",
        "openid email profile offline_access",
        None,
    )
    .await;
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
}

#[tokio::test]
async fn second_sign_in_reuses_the_idp_session() {
    let (idp, upstream, redirect_uri) = setup().await;
    let b = browser(&idp);
    let url = authorize_url(&idp, &redirect_uri, "openid email profile", None);
    let (resp, first) = b.sign_in_visited(&url, "alice").await;
    assert_eq!(resp.status(), 200);
    assert!(
        first.iter().any(|u| u.contains("/interaction/")),
        "{first:#?}"
    );
    // Same browser: no login form, no consent (the grant exists), straight back.
    let (resp, second) = b.follow(&url).await;
    assert_eq!(resp.status(), 200, "{second:#?}");
    assert!(
        second.last().unwrap().starts_with(&redirect_uri),
        "{second:#?}"
    );
    assert!(query(&upstream.last().unwrap().uri).contains_key("code"));
}

#[tokio::test]
async fn rp_initiated_logout() {
    let (idp, upstream, redirect_uri) = setup().await;
    let tokens = sign_in_and_redeem(
        &idp,
        &upstream,
        &redirect_uri,
        "alice",
        "openid email profile",
        None,
    )
    .await;
    let b = browser(&idp);
    // The browser that signed in is gone with `sign_in_and_redeem`; a fresh one still gets the
    // logout confirmation and the redirect (a path on a registered origin is accepted).
    let mut end = url::Url::parse(&format!("{}/session/end", idp.issuer())).unwrap();
    let after = format!("http://rp.localhost:{}/signed-out?x=1", upstream.port());
    end.query_pairs_mut()
        .append_pair("id_token_hint", tokens["id_token"].as_str().unwrap())
        .append_pair("post_logout_redirect_uri", &after)
        .append_pair("state", "bye");
    let (resp, visited) = b.sign_out(end.as_str()).await;
    assert_eq!(resp.status(), 200, "{visited:#?}\n{}", idp.logs());
    let last = upstream.last().unwrap();
    assert_eq!(last.path(), "/signed-out", "{visited:#?}");
    assert_eq!(
        query(&last.uri).get("state").map(String::as_str),
        Some("bye")
    );
    assert_eq!(idp.stats().await["end_session"], 1);
}

#[tokio::test]
async fn restart_keeps_grants_and_outage_is_simulated() {
    let (mut idp, upstream, redirect_uri) = setup().await;
    let tokens = sign_in_and_redeem(
        &idp,
        &upstream,
        &redirect_uri,
        "alice",
        "openid email profile offline_access",
        Some("consent"),
    )
    .await;
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let discovery = format!("{}/.well-known/openid-configuration", idp.issuer());

    idp.outage(503).await;
    assert_eq!(client.get(&discovery).send().await.unwrap().status(), 503);
    idp.end_outage().await;
    assert_eq!(client.get(&discovery).send().await.unwrap().status(), 200);

    idp.stop().await;
    assert!(!idp.is_running());
    assert!(client.get(&discovery).send().await.is_err());
    idp.restart().await;
    assert!(idp.is_running());
    let (status, refreshed) = token(
        &idp,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(status, 200, "{refreshed}\n{}", idp.logs());
    assert!(refreshed["id_token"].is_string());
}

/// The `kid` in a compact JWS's header.
fn jwt_kid(jwt: &str) -> String {
    let header = jwt.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn rotate_signing_key_publishes_only_a_new_key() {
    let (mut idp, upstream, redirect_uri) = setup().await;
    let before = idp.signing_kids().await;
    assert_eq!(before.len(), 1, "{before:?}");
    let tokens = sign_in_and_redeem(
        &idp,
        &upstream,
        &redirect_uri,
        "alice",
        "openid email profile offline_access",
        Some("consent"),
    )
    .await;
    assert_eq!(jwt_kid(tokens["id_token"].as_str().unwrap()), before[0]);

    // A restart keeps the key; a rotation replaces it.
    idp.restart().await;
    assert_eq!(idp.signing_kids().await, before);
    idp.rotate_signing_key().await;
    let after = idp.signing_kids().await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before);

    // Grants survive the rotation; new ID tokens are signed with the new key.
    let (status, refreshed) = token(
        &idp,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{refreshed}\n{}", idp.logs());
    assert_eq!(jwt_kid(refreshed["id_token"].as_str().unwrap()), after[0]);
}
