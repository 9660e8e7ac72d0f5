//! Handoff opening (`Handoff::open`). Arbitrary tokens never open; a sealed handoff opens
//! exactly while it is fresh, claims no more than its lifetime and is presented on its own
//! authority; it is bound to its browser's cookie and no other value; a changed token opens
//! only as the very same handoff, and never as a session cookie.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis_auth::cipher::MAX_TOKEN_LEN;
use portcullis_auth::handoff::HANDOFF_TTL_SECS;
use portcullis_auth::{BrowserBinding, Cipher, Handoff, Secret, SessionCookie};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    token: &'a str,
    session_id: String,
    redirect_uri: String,
    authority: String,
    presented_on: String,
    binding_cookie: &'a str,
    expires_at: i64,
    nonce: String,
    now: i64,
    flip_at: usize,
    flip_to: u8,
}

fuzz_target!(|input: Input<'_>| {
    let cipher = Cipher::new(&Secret::from_bytes([7; 32]));
    assert_eq!(
        Handoff::open(&cipher, input.token, input.now, &input.authority),
        None
    );

    // A fixed binding: randomness would make runs unrepeatable.
    let binding =
        BrowserBinding::from_cookie("AAAAAAAAAAAAAAAAAAAAAA").expect("a well-formed nonce");
    let handoff = Handoff {
        session_id: input.session_id,
        redirect_uri: input.redirect_uri,
        authority: input.authority,
        binding: binding.digest(),
        expires_at: input.expires_at,
        nonce: input.nonce,
    };
    let sealed = handoff.seal(&cipher);
    let opened = Handoff::open(&cipher, &sealed, input.now, &handoff.authority);
    let fresh = input.now < handoff.expires_at
        && handoff.expires_at <= input.now.saturating_add(HANDOFF_TTL_SECS)
        && !handoff.nonce.is_empty()
        && !handoff.session_id.is_empty()
        && !handoff.authority.is_empty()
        // A token longer than the cipher accepts never opens, however it was made.
        && sealed.len() <= MAX_TOKEN_LEN;
    assert_eq!(opened.as_ref(), fresh.then_some(&handoff));
    if input.presented_on != handoff.authority {
        assert_eq!(
            Handoff::open(&cipher, &sealed, input.now, &input.presented_on),
            None
        );
    }
    assert!(handoff.is_bound_to(binding.cookie_value()));
    if input.binding_cookie != binding.cookie_value() {
        assert!(!handoff.is_bound_to(input.binding_cookie));
    }
    assert!(SessionCookie::open(&cipher, &sealed, input.now, &handoff.authority).is_none());

    let mut tampered = sealed.into_bytes();
    if tampered.is_empty() {
        return;
    }
    let at = input.flip_at % tampered.len();
    tampered[at] = input.flip_to;
    if let Ok(tampered) = String::from_utf8(tampered) {
        if let Some(h) = Handoff::open(&cipher, &tampered, input.now, &handoff.authority) {
            assert_eq!(h, handoff, "a changed token opened as another handoff");
        }
    }
});
