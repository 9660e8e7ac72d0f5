//! Handoff opening (`Handoff::open`). Arbitrary tokens never open; a sealed handoff opens
//! exactly while it is fresh and claims no more than its lifetime; a changed token opens only
//! as the very same handoff, and never as a session cookie.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis_auth::handoff::HANDOFF_TTL_SECS;
use portcullis_auth::{Cipher, Handoff, Secret, SessionCookie};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    token: &'a str,
    session_id: String,
    redirect_uri: String,
    expires_at: i64,
    nonce: String,
    now: i64,
    flip_at: usize,
    flip_to: u8,
}

fuzz_target!(|input: Input<'_>| {
    let cipher = Cipher::new(&Secret::from_bytes([7; 32]));
    assert_eq!(Handoff::open(&cipher, input.token, input.now), None);

    let handoff = Handoff {
        session_id: input.session_id,
        redirect_uri: input.redirect_uri,
        expires_at: input.expires_at,
        nonce: input.nonce,
    };
    let sealed = handoff.seal(&cipher);
    let opened = Handoff::open(&cipher, &sealed, input.now);
    let fresh = input.now < handoff.expires_at
        && handoff.expires_at <= input.now.saturating_add(HANDOFF_TTL_SECS)
        && !handoff.nonce.is_empty()
        && !handoff.session_id.is_empty();
    assert_eq!(opened.as_ref(), fresh.then_some(&handoff));
    assert!(SessionCookie::open(&cipher, &sealed, input.now).is_none());

    let mut tampered = sealed.into_bytes();
    if tampered.is_empty() {
        return;
    }
    let at = input.flip_at % tampered.len();
    tampered[at] = input.flip_to;
    if let Ok(tampered) = String::from_utf8(tampered) {
        if let Some(h) = Handoff::open(&cipher, &tampered, input.now) {
            assert_eq!(h, handoff, "a changed token opened as another handoff");
        }
    }
});
