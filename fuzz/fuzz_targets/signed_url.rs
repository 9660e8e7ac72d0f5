//! Signed-URL verification (`UrlSigner::verify`). An arbitrary URL never verifies; a URL
//! signed now verifies while it is valid; a signed URL changed anywhere before its signature
//! no longer verifies.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis_auth::{Secret, UrlSigner};
use url::Url;

const SIGNATURE: &str = "&portcullis_signature=";

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    url: &'a str,
    now: i32,
    ttl: i16,
    change_at: usize,
    change_to: u8,
}

fuzz_target!(|input: Input<'_>| {
    let signer = UrlSigner::new(&Secret::from_bytes([9; 32]));
    let now = i64::from(input.now);
    let Ok(url) = Url::parse(input.url) else {
        return;
    };
    assert!(signer.verify(&url, now).is_err(), "forged: {url}");
    if !matches!(url.scheme(), "http" | "https") {
        return;
    }

    let ttl = i64::from(input.ttl);
    let signed = signer.sign(&url, now, ttl);
    assert_eq!(
        signer.verify(&signed, now).is_ok(),
        ttl > 0,
        "{url} -> {signed}"
    );
    let Some(cut) = signed.as_str().rfind(SIGNATURE) else {
        panic!("no signature last: {signed}");
    };
    let mut changed = signed.as_str().as_bytes().to_vec();
    changed[input.change_at % cut] = input.change_to;
    let Ok(changed) = String::from_utf8(changed) else {
        return;
    };
    let Ok(changed) = Url::parse(&changed) else {
        return;
    };
    let signed_part = |u: &Url| {
        u.as_str()
            .rfind(SIGNATURE)
            .map(|i| u.as_str()[..i].to_owned())
    };
    if signed_part(&changed).as_deref() != Some(&signed.as_str()[..cut]) {
        assert!(
            signer.verify(&changed, now).is_err(),
            "{signed} changed to {changed}"
        );
    }
});
