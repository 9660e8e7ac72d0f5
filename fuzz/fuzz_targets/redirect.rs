//! Redirect validation (`portcullis_auth::validate_redirect`). Input: one of a few prefixes
//! (allowed and hostile URL starts) followed by arbitrary text. A URL that validates is
//! http(s), has no userinfo, names an allowed host and port, and validates again as itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_auth::validate_redirect;

const PREFIXES: &[&str] = &[
    "",
    "https://app.example.com",
    "https://app.example.com/",
    "http://app.example.com:8443",
    "https://",
    "http:",
    "//",
    "/\\",
    "https://app.example.com@",
    "https://evil.test",
    "javascript:",
    "https:/",
    "\\\\",
    "https://app.example.com.",
    "https://[",
];

fn allowed(host: &str, port: Option<u16>) -> bool {
    host == "app.example.com" && matches!(port, None | Some(8443))
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let raw = format!("{}{rest}", PREFIXES[usize::from(pick) % PREFIXES.len()]);
    let Ok(url) = validate_redirect(&raw, &allowed) else {
        return;
    };
    assert!(matches!(url.scheme(), "http" | "https"), "{raw:?}");
    assert_eq!(url.host_str(), Some("app.example.com"), "{raw:?}");
    assert!(matches!(url.port(), None | Some(8443)), "{raw:?}");
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "{raw:?}"
    );
    // What a browser would make of it is what was judged: the serialized URL (what goes into
    // `Location`) passes again and names the same origin.
    let again = validate_redirect(url.as_str(), &allowed)
        .unwrap_or_else(|e| panic!("{raw:?} -> {url} does not validate again: {e}"));
    assert_eq!(again.origin(), url.origin(), "{raw:?}");
});
