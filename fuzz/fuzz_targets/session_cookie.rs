//! Session cookie opening (`SessionCookie::open`). Arbitrary values never open (a forgery is a
//! crash); a sealed cookie opens exactly while it is valid and only for its own scope; a value
//! changed anywhere opens only as the very same cookie, and never as a handoff.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis_auth::cipher::MAX_TOKEN_LEN;
use portcullis_auth::{Cipher, Handoff, Secret, SessionCookie};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    value: &'a str,
    session_id: String,
    scope: String,
    presented_for: String,
    issued_at: i64,
    expires_at: i64,
    now: i64,
    flip_at: usize,
    flip_to: u8,
}

fuzz_target!(|input: Input<'_>| {
    let cipher = Cipher::new(&Secret::from_bytes([7; 32]));
    assert_eq!(
        SessionCookie::open(&cipher, input.value, input.now, &input.scope),
        None
    );

    let cookie = SessionCookie {
        session_id: input.session_id,
        scope: input.scope,
        issued_at: input.issued_at,
        expires_at: input.expires_at,
    };
    let sealed = cookie.seal(&cipher);
    let scope = cookie.scope.as_str();
    let opened = SessionCookie::open(&cipher, &sealed, input.now, scope);
    // A value longer than the cipher accepts never opens, however it was made.
    let valid = input.now < cookie.expires_at
        && !cookie.session_id.is_empty()
        && !scope.is_empty()
        && sealed.len() <= MAX_TOKEN_LEN;
    assert_eq!(opened.as_ref(), valid.then_some(&cookie));
    if input.presented_for != scope {
        assert_eq!(
            SessionCookie::open(&cipher, &sealed, input.now, &input.presented_for),
            None
        );
    }
    assert!(Handoff::open(&cipher, &sealed, input.now, scope).is_none());
    let other = Cipher::new(&Secret::from_bytes([8; 32]));
    assert_eq!(SessionCookie::open(&other, &sealed, input.now, scope), None);

    let mut tampered = sealed.into_bytes();
    if tampered.is_empty() {
        return;
    }
    let at = input.flip_at % tampered.len();
    tampered[at] = input.flip_to;
    if let Ok(tampered) = String::from_utf8(tampered) {
        if let Some(c) = SessionCookie::open(&cipher, &tampered, input.now, &cookie.scope) {
            assert_eq!(c, cookie, "a changed value opened as another cookie");
        }
    }
});
