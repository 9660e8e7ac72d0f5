use super::*;

fn only_app(host: &str, port: Option<u16>) -> bool {
    host == "app.example.com" && (port.is_none() || port == Some(8443))
}

fn check(raw: &str) -> Result<Url, AuthError> {
    validate_redirect(raw, &only_app)
}

#[test]
fn accepts_allowed_absolute_urls() {
    for ok in [
        "https://app.example.com",
        "https://app.example.com/",
        "http://app.example.com/path?q=1#frag",
        "https://APP.Example.COM/x",
        "HTTPS://app.example.com/x",
        "https://app.example.com:443/x",
        "https://app.example.com:8443/x",
        "https://app.example.com/search?q=a\\b",
        "https://app.example.com/caf%C3%A9",
    ] {
        let u = check(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(u.host_str(), Some("app.example.com"));
    }
}

#[test]
fn passes_normalized_host_and_explicit_port() {
    let seen = std::cell::RefCell::new(Vec::new());
    let record = |h: &str, p: Option<u16>| {
        seen.borrow_mut().push((h.to_owned(), p));
        true
    };
    validate_redirect("https://App.Example.com:443/", &record).unwrap();
    validate_redirect("http://app.example.com:8080/", &record).unwrap();
    validate_redirect("https://[::1]:8443/", &record).unwrap();
    validate_redirect("https://bücher.example/", &record).unwrap();
    assert_eq!(
        *seen.borrow(),
        vec![
            ("app.example.com".to_owned(), None),
            ("app.example.com".to_owned(), Some(8080)),
            ("[::1]".to_owned(), Some(8443)),
            ("xn--bcher-kva.example".to_owned(), None),
        ]
    );
}

#[test]
fn rejects_every_trick() {
    for bad in [
        // empty, relative, scheme-relative
        "",
        "/",
        "/path",
        "app.example.com",
        "//evil.com",
        "//app.example.com",
        "/\\evil.com",
        "\\\\evil.com",
        "///evil.com",
        // userinfo
        "https://app.example.com@evil.com",
        "https://app.example.com:pw@evil.com/",
        "https://user@app.example.com/",
        "https://evil.com\\@app.example.com/",
        // lookalike hosts
        "https://app.example.com.evil.com/",
        "https://app.evil/",
        "https://evil.com/app.example.com",
        "https://evil.com?https://app.example.com",
        "https://evil.com#app.example.com",
        // slash variants
        "https:/\\evil.com",
        "https:\\\\evil.com",
        "https:/evil.com",
        "https:evil.com",
        "https:///evil.com",
        "https://\\evil.com",
        "https://app.example.com\\@evil.com",
        "https://app.example.com\\.evil.com",
        "https://evil.com\\app.example.com",
        // control characters and whitespace
        "https://app.example.com\t.evil.com/",
        "https://ev\nil.com/",
        "\thttps://app.example.com/",
        " https://app.example.com/",
        "https://app.example.com/ ",
        "https://app.example.com/\r\nLocation: x",
        "https://app.example.com/\u{0}",
        "https://app.example.com/\u{7f}",
        "java\tscript:alert(1)",
        // other schemes
        "javascript:alert(1)",
        "JavaScript://app.example.com/%0aalert(1)",
        "data:text/html,hi",
        "ftp://app.example.com/",
        "file:///etc/passwd",
        // IDN and Unicode tricks: these normalize to other hosts
        "https://аpp.example.com/",
        "https://app.example.com\u{3002}evil.com/",
        "https://app\u{FF0E}example\u{FF0E}com.evil.com/",
        // empty hosts and ports refused by the callback
        "https://",
        "https://:443/",
        "https://app.example.com:9999/",
        "http://app.example.com:0/",
        // unparsable
        "https://app.example.com:99999/",
        "https://[::1/",
    ] {
        assert!(check(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn fullwidth_host_is_compared_after_normalization() {
    // Full-width letters normalize to the allowed host: that is the same host to a browser,
    // so it is allowed and the returned URL is in normalized form.
    let u = check("https://ａｐｐ.example.com/x").unwrap();
    assert_eq!(u.as_str(), "https://app.example.com/x");
}

#[test]
fn rejects_overlong() {
    let long = format!("https://app.example.com/{}", "a".repeat(MAX_REDIRECT_LEN));
    assert_eq!(check(&long), Err(AuthError::InvalidRedirect("too long")));
}

#[test]
fn no_payload_of_the_open_redirect_corpus_leads_off_the_allowed_host() {
    let payloads =
        portcullis_harness::open_redirect_payloads("app.example.com", "app.example.com", "8443");
    assert!(payloads.len() >= 300, "{} payloads", payloads.len());
    let mut accepted = Vec::new();
    for raw in &payloads {
        let Ok(url) = check(raw) else { continue };
        // Where a browser goes is what a WHATWG parser makes of the raw string (it strips
        // tabs and newlines, reads `\` as `/`, maps Unicode host names).
        let browser = Url::parse(raw).unwrap_or_else(|e| panic!("{raw:?} passed, but: {e}"));
        assert!(matches!(browser.scheme(), "http" | "https"), "{raw:?}");
        let host = browser.host_str().unwrap_or_default();
        assert!(only_app(host, browser.port()), "{raw:?} leads to {browser}");
        assert_eq!(url, browser, "{raw:?}");
        accepted.push(raw.as_str());
    }
    // The few that pass are the allowed host itself, with a harmless path or fragment.
    assert!(accepted.len() < 20, "{accepted:#?}");
}
