use super::*;
use crate::Secret;

#[test]
fn a_binding_matches_its_own_digest_only() {
    let b = BrowserBinding::new();
    let d = b.digest();
    assert!(d.matches(b.cookie_value()));
    assert!(!d.matches(BrowserBinding::new().cookie_value()));
    assert!(!d.matches(""));
    assert!(!d.matches(d.as_str()));
    assert!(!d.matches(&b.cookie_value().to_ascii_uppercase()));
}

#[test]
fn nonces_are_random_and_the_digest_hides_them() {
    let a = BrowserBinding::new();
    let b = BrowserBinding::new();
    assert_ne!(a.cookie_value(), b.cookie_value());
    assert_ne!(a.digest(), b.digest());
    assert_eq!(a.cookie_value().len(), NONCE_LEN);
    assert_eq!(a.digest().as_str().len(), DIGEST_LEN);
    assert!(!a.digest().as_str().contains(a.cookie_value()));
    assert_eq!(format!("{a:?}"), "BrowserBinding(..)");
}

#[test]
fn from_cookie_keeps_only_well_formed_nonces() {
    let b = BrowserBinding::new();
    let kept = BrowserBinding::from_cookie(b.cookie_value()).expect("well formed");
    assert_eq!(kept, b);
    assert_eq!(kept.digest(), b.digest());
    let too_long = format!("{}A", b.cookie_value());
    for bad in ["", "short", too_long.as_str(), "!!!!!!!!!!!!!!!!!!!!!!"] {
        assert_eq!(BrowserBinding::from_cookie(bad), None, "{bad:?}");
    }
}

#[test]
fn digests_parse_only_when_well_formed() {
    let d = BrowserBinding::new().digest();
    assert_eq!(BindingDigest::parse(d.as_str()), Some(d.clone()));
    let nonce = BrowserBinding::new();
    for bad in [
        "",
        nonce.cookie_value(),
        &d.as_str()[1..],
        &format!("{}A", d.as_str()),
    ] {
        assert_eq!(BindingDigest::parse(bad), None, "{bad:?}");
    }
}

fn flow(returns: SignInReturn) -> SignInFlow {
    SignInFlow {
        login: LoginState {
            csrf_state: "state".into(),
            nonce: "nonce".into(),
            pkce_verifier: "verifier".into(),
            redirect_uri: String::new(),
            expires_at: 1_600,
        },
        returns,
    }
}

#[test]
fn the_sign_in_flow_round_trips_with_its_binding() {
    let c = Cipher::new(&Secret::from_bytes([5; 32]));
    let b = BrowserBinding::new();
    for returns in [
        SignInReturn::AuthenticateHost {
            redirect_uri: "https://auth.example/.portcullis/".into(),
        },
        SignInReturn::RouteHost {
            redirect_uri: "https://app.example/x".into(),
            authority: "app.example:443".into(),
            binding: b.digest(),
        },
        SignInReturn::Programmatic {
            redirect_uri: "http://127.0.0.1:9999/".into(),
            scope: "app.example:443".into(),
        },
    ] {
        let f = flow(returns);
        let opened = SignInFlow::open(&c, &f.seal(&c)).expect("opens");
        assert!(opened == f);
        assert_eq!(opened.returns.redirect_uri(), f.returns.redirect_uri());
    }
}

#[test]
fn a_login_state_of_the_earlier_form_is_no_flow() {
    let c = Cipher::new(&Secret::from_bytes([5; 32]));
    let f = flow(SignInReturn::AuthenticateHost {
        redirect_uri: "/".into(),
    });
    // The bare LoginState under the first purpose, and the new flow under it: neither opens.
    let bare = c
        .seal_json(crate::cookie::LOGIN_STATE_PURPOSE, &f.login)
        .unwrap();
    assert!(SignInFlow::open(&c, &bare).is_none());
    let wrong_purpose = c.seal_json(crate::cookie::LOGIN_STATE_PURPOSE, &f).unwrap();
    assert!(SignInFlow::open(&c, &wrong_purpose).is_none());
    let bare_new_purpose = c.seal_json(SIGN_IN_FLOW_PURPOSE, &f.login).unwrap();
    assert!(SignInFlow::open(&c, &bare_new_purpose).is_none());
}
