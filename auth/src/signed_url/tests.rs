use super::*;

const NOW: i64 = 1_700_000_000;

fn signer() -> UrlSigner {
    UrlSigner::new(&Secret::from_bytes([5; 32]))
}

fn sign_in_url() -> Url {
    let mut u = Url::parse("https://authenticate.example/.portcullis/sign_in").unwrap();
    u.query_pairs_mut()
        .append_pair("portcullis_redirect_uri", "https://app.example/a?b=c&d=e");
    u
}

fn signed() -> Url {
    signer().sign(&sign_in_url(), NOW, 300)
}

#[test]
fn sign_then_verify() {
    let s = signed();
    assert!(s.as_str().contains("portcullis_issued=1700000000"));
    assert!(s.as_str().contains("portcullis_expiry=1700000300"));
    signer().verify(&s, NOW).unwrap();
    signer().verify(&s, NOW + 299).unwrap();
    // A reparse of the serialized URL, as the sign-in handler sees it, still verifies.
    signer()
        .verify(&Url::parse(s.as_str()).unwrap(), NOW)
        .unwrap();
}

#[test]
fn url_without_query_round_trips() {
    let u = Url::parse("https://authenticate.example/x").unwrap();
    let s = signer().sign(&u, NOW, 10);
    signer().verify(&s, NOW).unwrap();
}

#[test]
fn expired_and_future() {
    let s = signed();
    assert_eq!(signer().verify(&s, NOW + 300), Err(AuthError::Expired));
    assert_eq!(signer().verify(&s, NOW + 10_000), Err(AuthError::Expired));
    signer().verify(&s, NOW - 60).unwrap();
    assert_eq!(signer().verify(&s, NOW - 61), Err(AuthError::NotYetValid));
}

#[test]
fn wrong_key_fails() {
    let other = UrlSigner::new(&Secret::from_bytes([6; 32]));
    assert_eq!(
        other.verify(&signed(), NOW),
        Err(AuthError::InvalidSignature)
    );
}

fn tampered(f: impl FnOnce(&mut String)) -> Result<(), AuthError> {
    let mut s = signed().to_string();
    f(&mut s);
    let u = Url::parse(&s).unwrap();
    signer().verify(&u, NOW)
}

#[test]
fn any_change_breaks_it() {
    assert!(tampered(|s| *s = s.replace("authenticate.example", "authenticate.evil")).is_err());
    assert!(tampered(|s| *s = s.replace("https://", "http://")).is_err());
    assert!(tampered(|s| *s = s.replace(".example/", ".example:8443/")).is_err());
    assert!(tampered(|s| *s = s.replace("sign_in", "sign_out")).is_err());
    assert!(tampered(|s| *s = s.replace("app.example", "app.evil")).is_err());
    assert!(tampered(|s| *s = s.replace("expiry=1700000300", "expiry=1700009999")).is_err());
    assert!(tampered(|s| *s = s.replace("issued=1700000000", "issued=1700000001")).is_err());
    assert!(tampered(|s| *s = s.replace("?", "?x=1&")).is_err());
    assert!(tampered(|s| *s = s.replace("&portcullis_issued", "&y=2&portcullis_issued")).is_err());
}

#[test]
fn every_signature_char_matters() {
    let s = signed().to_string();
    let at = s.find("portcullis_signature=").unwrap() + "portcullis_signature=".len();
    for i in at..s.len() {
        let mut b = s.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let u = Url::parse(std::str::from_utf8(&b).unwrap()).unwrap();
        assert!(signer().verify(&u, NOW).is_err(), "char {i}");
    }
    // Truncated or extended signature.
    assert!(tampered(|s| {
        s.pop();
    })
    .is_err());
    assert!(tampered(|s| s.push('A')).is_err());
}

#[test]
fn missing_or_duplicated_params() {
    let s = signed().to_string();
    let sig = &s[s.find("&portcullis_signature").unwrap()..];
    // Signature missing.
    let u = Url::parse(&s.replace(sig, "")).unwrap();
    assert!(matches!(
        signer().verify(&u, NOW),
        Err(AuthError::MalformedSignedUrl(_))
    ));
    // Signature duplicated.
    let u = Url::parse(&format!("{s}{sig}")).unwrap();
    assert!(signer().verify(&u, NOW).is_err());
    // Signature not last.
    let u = Url::parse(&format!("{s}&z=1")).unwrap();
    assert!(signer().verify(&u, NOW).is_err());
    // No query at all.
    let u = Url::parse("https://authenticate.example/.portcullis/sign_in").unwrap();
    assert!(signer().verify(&u, NOW).is_err());
}

#[test]
fn duplicated_time_params_rejected_even_if_signed() {
    // A URL that already has an expiry param gets it replaced, never duplicated...
    let mut u = sign_in_url();
    u.query_pairs_mut().append_pair(EXPIRY_PARAM, "99999999999");
    let s = signer().sign(&u, NOW, 300);
    assert_eq!(
        s.query_pairs().filter(|(k, _)| k == EXPIRY_PARAM).count(),
        1
    );
    signer().verify(&s, NOW).unwrap();
    assert_eq!(signer().verify(&s, NOW + 301), Err(AuthError::Expired));
    // ...and a signed URL with a duplicated parameter does not verify.
    let mut raw = sign_in_url();
    raw.query_pairs_mut()
        .append_pair(ISSUED_PARAM, "1")
        .append_pair(EXPIRY_PARAM, "99999999999")
        .append_pair(ISSUED_PARAM, "1")
        .append_pair(EXPIRY_PARAM, "99999999999");
    let sig = b64url(&signer().mac(raw.as_str()));
    raw.query_pairs_mut().append_pair(SIGNATURE_PARAM, &sig);
    assert!(matches!(
        signer().verify(&raw, NOW),
        Err(AuthError::MalformedSignedUrl(_))
    ));
}

#[test]
fn fragment_is_ignored() {
    let mut s = signed();
    s.set_fragment(Some("frag"));
    signer().verify(&s, NOW).unwrap();
}

#[test]
fn debug_hides_key() {
    assert_eq!(format!("{:?}", signer()), "UrlSigner(..)");
}
