use super::*;

fn cipher() -> Cipher {
    Cipher::new(&Secret::from_bytes([42; 32]))
}

#[test]
fn round_trip() {
    let c = cipher();
    let t = c.seal(b"p", b"hello");
    assert_eq!(c.open(b"p", &t).as_deref(), Some(&b"hello"[..]));
    let empty = c.seal(b"p", b"");
    assert_eq!(c.open(b"p", &empty).as_deref(), Some(&b""[..]));
}

#[test]
fn nonces_are_random() {
    let c = cipher();
    assert_ne!(c.seal(b"p", b"x"), c.seal(b"p", b"x"));
}

#[test]
fn output_is_unpadded_base64url() {
    let t = cipher().seal(b"p", b"some plaintext of a length");
    assert!(t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
}

#[test]
fn wrong_purpose_fails() {
    let c = cipher();
    let t = c.seal(b"portcullis-login-state", b"x");
    assert!(c.open(b"portcullis-session", &t).is_none());
    assert!(c.open(b"", &t).is_none());
}

#[test]
fn wrong_key_fails() {
    let t = cipher().seal(b"p", b"x");
    assert!(Cipher::new(&Secret::from_bytes([43; 32]))
        .open(b"p", &t)
        .is_none());
}

#[test]
fn every_flipped_byte_fails() {
    let c = cipher();
    let t = c.seal(b"p", b"a session payload");
    let raw = b64url_decode(&t).unwrap();
    for i in 0..raw.len() {
        for bit in [0x01u8, 0x80] {
            let mut m = raw.clone();
            m[i] ^= bit;
            assert!(c.open(b"p", &b64url(&m)).is_none(), "byte {i} bit {bit}");
        }
    }
}

#[test]
fn truncation_and_extension_fail() {
    let c = cipher();
    let t = c.seal(b"p", b"a session payload");
    for n in 0..t.len() {
        assert!(c.open(b"p", &t[..n]).is_none(), "truncated to {n}");
    }
    assert!(c.open(b"p", &format!("{t}A")).is_none());
    assert!(c.open(b"p", &format!("{t}AAAA")).is_none());
}

#[test]
fn garbage_never_panics() {
    let c = cipher();
    for g in [
        "",
        "!",
        "====",
        "AAAA",
        "\u{0}\u{1}",
        "é",
        &"A".repeat(40),
        &"A".repeat(MAX_TOKEN_LEN + 1),
    ] {
        assert!(c.open(b"p", g).is_none());
    }
}

#[test]
fn json_round_trip_and_type_mismatch() {
    let c = cipher();
    let t = c.seal_json(b"p", &vec![1u32, 2, 3]).unwrap();
    assert_eq!(c.open_json::<Vec<u32>>(b"p", &t), Some(vec![1, 2, 3]));
    assert_eq!(c.open_json::<String>(b"p", &t), None);
    assert_eq!(c.open_json::<Vec<u32>>(b"q", &t), None);
}

#[test]
fn debug_hides_key() {
    assert_eq!(format!("{:?}", cipher()), "Cipher(..)");
}
