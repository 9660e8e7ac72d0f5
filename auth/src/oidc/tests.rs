//! Sans-IO tests of the OIDC flow's checks; the network parts are covered by the proxy's
//! end-to-end tests against a real IdP.

use super::*;
use serde_json::json;

const ISSUER: &str = "http://127.0.0.1:9000";

fn login(now: i64) -> LoginState {
    LoginState {
        csrf_state: "state-abc".into(),
        nonce: "nonce-xyz".into(),
        pkce_verifier: "verifier-secret".into(),
        redirect_uri: "https://app.example.com/".into(),
        expires_at: now + LOGIN_STATE_TTL_SECS,
    }
}

#[test]
fn callback_accepts_matching_state_and_issuer() {
    let l = login(1_000);
    check_callback("state-abc", Some(ISSUER), &l, 1_000, ISSUER, true).unwrap();
    check_callback("state-abc", None, &l, 1_000, ISSUER, false).unwrap();
}

#[test]
fn callback_rejects_wrong_state() {
    let l = login(1_000);
    for bad in ["", "state-ab", "state-abcd", "STATE-ABC", "nonce-xyz"] {
        assert_eq!(
            check_callback(bad, Some(ISSUER), &l, 1_000, ISSUER, false),
            Err(AuthError::StateMismatch),
            "{bad}"
        );
    }
    let empty = LoginState {
        csrf_state: String::new(),
        ..login(1_000)
    };
    assert_eq!(
        check_callback("", None, &empty, 1_000, ISSUER, false),
        Err(AuthError::StateMismatch)
    );
}

#[test]
fn callback_rejects_wrong_or_missing_issuer() {
    let l = login(1_000);
    for bad in [
        "http://127.0.0.1:9001",
        "http://127.0.0.1:9000/",
        "https://127.0.0.1:9000",
        "",
    ] {
        assert_eq!(
            check_callback("state-abc", Some(bad), &l, 1_000, ISSUER, false),
            Err(AuthError::IssuerMismatch)
        );
    }
    assert_eq!(
        check_callback("state-abc", None, &l, 1_000, ISSUER, true),
        Err(AuthError::IssuerMismatch)
    );
}

#[test]
fn callback_rejects_expired_login() {
    let l = login(1_000);
    assert_eq!(
        check_callback(
            "state-abc",
            Some(ISSUER),
            &l,
            1_000 + LOGIN_STATE_TTL_SECS,
            ISSUER,
            false
        ),
        Err(AuthError::LoginStateExpired)
    );
}

#[test]
fn login_state_seals_and_debug_hides_secrets() {
    let c = crate::Cipher::new(&crate::Secret::from_bytes([1; 32]));
    let l = login(1_000);
    let sealed = c.seal_json(crate::cookie::LOGIN_STATE_PURPOSE, &l).unwrap();
    let back: LoginState = c
        .open_json(crate::cookie::LOGIN_STATE_PURPOSE, &sealed)
        .unwrap();
    assert!(back == l);
    assert!(c
        .open_json::<LoginState>(crate::cookie::SESSION_PURPOSE, &sealed)
        .is_none());
    let d = format!("{l:?}");
    for secret in ["state-abc", "nonce-xyz", "verifier-secret"] {
        assert!(!d.contains(secret), "{d}");
    }
}

fn claims(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

#[test]
fn profile_splits_claims() {
    let all = claims(json!({
        "iss": ISSUER, "sub": "u1", "aud": "client", "exp": 2, "iat": 1, "nonce": "n",
        "at_hash": "h", "azp": "client", "auth_time": 1, "jti": "j", "nbf": 1,
        "email": "alice@example.com", "name": "Alice", "groups": ["admins", 7, "devs"],
        "department": "eng", "email_verified": true
    }));
    let p = Profile::from_claims(&all);
    assert_eq!(p.email, "alice@example.com");
    assert_eq!(p.name, "Alice");
    assert_eq!(p.groups, vec!["admins", "devs"]);
    let mut keys: Vec<&str> = p.claims.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec!["department", "email", "email_verified", "groups", "name"]
    );
}

#[test]
fn profile_defaults() {
    let p = Profile::from_claims(&claims(json!({"sub": "u1", "email": 5})));
    assert_eq!(p.email, "");
    assert_eq!(p.name, "");
    assert!(p.groups.is_empty());
    let p = Profile::from_claims(&claims(json!({"groups": "solo"})));
    assert_eq!(p.groups, vec!["solo"]);
    let p = Profile::from_claims(&claims(json!({"groups": null})));
    assert!(p.groups.is_empty());
}

#[test]
fn userinfo_fills_only_missing_claims() {
    let mut c = claims(json!({"sub": "u1", "name": "From ID token"}));
    merge_missing(
        &mut c,
        claims(json!({"sub": "other", "name": "From userinfo", "email": "a@b.c"})),
    );
    assert_eq!(c["sub"], "u1");
    assert_eq!(c["name"], "From ID token");
    assert_eq!(c["email"], "a@b.c");
}

#[test]
fn jwt_payload_decodes_middle_part() {
    let payload = crate::b64url(br#"{"sub":"u1","groups":["a"]}"#);
    let m = jwt_payload(&format!("e30.{payload}.sig")).unwrap();
    assert_eq!(m["sub"], "u1");
    assert!(jwt_payload("e30").is_none());
    assert!(jwt_payload("e30.!!!.sig").is_none());
    assert!(jwt_payload(&format!("e30.{}.sig", crate::b64url(b"[1]"))).is_none());
}

fn server_error(code: CoreErrorResponseType, desc: Option<&str>) -> TokenError {
    RequestTokenError::ServerResponse(StandardErrorResponse::new(
        code,
        desc.map(str::to_owned),
        None,
    ))
}

#[test]
fn token_errors_distinguish_invalid_grant() {
    assert_eq!(
        token_error(server_error(
            CoreErrorResponseType::InvalidGrant,
            Some("gone")
        )),
        AuthError::InvalidGrant
    );
    let e = token_error(server_error(
        CoreErrorResponseType::InvalidClient,
        Some("bad client"),
    ));
    assert_eq!(
        e,
        AuthError::TokenEndpoint("invalid_client: bad client".into())
    );
    assert!(!e.is_transient());
    let e = token_error(RequestTokenError::Other("body with refresh-secret".into()));
    assert!(e.is_transient());
    assert!(!e.to_string().contains("refresh-secret"));
}

#[test]
fn parse_errors_never_echo_the_body() {
    let body = br#"{"access_token": 12, "token_type": "refresh-secret"}"#.to_vec();
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let err = serde_path_to_error::deserialize::<_, openidconnect::core::CoreTokenResponse>(de)
        .err()
        .unwrap();
    let e = token_error(RequestTokenError::Parse(err, body));
    assert!(!format!("{e} {e:?}").contains("refresh-secret"));
}

#[test]
fn refreshed_tokens_debug_redacts() {
    let r = RefreshedTokens {
        access_token: "at-secret".into(),
        refresh_token: Some("rt-secret".into()),
        id_token: Some("idt-secret".into()),
        expires_in: None,
        subject: Some("u1".into()),
        claims: None,
    };
    let d = format!("{r:?}");
    for s in ["at-secret", "rt-secret", "idt-secret"] {
        assert!(!d.contains(s));
    }
}
