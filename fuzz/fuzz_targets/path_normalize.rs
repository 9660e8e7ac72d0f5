//! Path normalization (the proxy's `path.rs`, included as a module so that Pingora is not
//! built under the fuzzer). Input: a raw request target. Whatever is forwarded starts with
//! `/`, has an ASCII path without `//`, `.` or `..` (parameters or escapes included), keeps
//! the query byte for byte, and normalizing it again changes nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../proxy/src/request/path.rs"]
mod path;

fuzz_target!(|raw: &[u8]| {
    let parsed = String::from_utf8_lossy(raw);
    let Ok(changed) = path::normalize_target(raw, &parsed) else {
        return;
    };
    let target = changed.as_deref().unwrap_or(raw);
    let (path, query) = split_query(target);
    assert_eq!(path.first(), Some(&b'/'), "{raw:?} -> {target:?}");
    assert!(path.is_ascii(), "{raw:?} -> {target:?}");
    let segments: Vec<&[u8]> = path[1..].split(|&b| b == b'/').collect();
    for (i, segment) in segments.iter().enumerate() {
        assert!(
            !segment.is_empty() || i + 1 == segments.len(),
            "empty segment: {raw:?} -> {target:?}"
        );
        assert!(
            !counts_as_dot(segment),
            "dot segment: {raw:?} -> {target:?}"
        );
    }
    if raw.first() == Some(&b'/') {
        assert_eq!(query, split_query(raw).1, "query changed: {raw:?}");
    }
    // Idempotent: the forwarded target is normal.
    let again = std::str::from_utf8(target).map(|t| path::normalize_target(target, t));
    if let Ok(again) = again {
        assert_eq!(again, Ok(None), "{raw:?} -> {target:?}");
    }
    // The &str entry point agrees with the byte one.
    if let Ok(text) = std::str::from_utf8(split_query(raw).0) {
        if raw.first() == Some(&b'/') {
            let normalized = path::normalize(text).expect("the target was accepted");
            assert_eq!(normalized.as_bytes(), path, "{raw:?}");
        }
    }
});

fn split_query(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    }
}

/// Whether any server could read `segment` as `.` or `..`: escaped dots decoded, cut at the
/// first `;` or `%3B`. Written independently of `path.rs`.
fn counts_as_dot(segment: &[u8]) -> bool {
    let mut name = Vec::new();
    let mut i = 0;
    while i < segment.len() {
        let rest = &segment[i..];
        if rest.first() == Some(&b';')
            || rest
                .get(..3)
                .is_some_and(|e| e.eq_ignore_ascii_case(b"%3b"))
        {
            break;
        }
        if rest
            .get(..3)
            .is_some_and(|e| e.eq_ignore_ascii_case(b"%2e"))
        {
            name.push(b'.');
            i += 3;
        } else {
            name.push(rest[0]);
            i += 1;
        }
    }
    name == b"." || name == b".."
}
