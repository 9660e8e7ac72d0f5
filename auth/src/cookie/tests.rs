use super::*;
use crate::Secret;

fn cipher() -> Cipher {
    Cipher::new(&Secret::from_bytes([9; 32]))
}

const SCOPE: &str = "app.example:443";

fn cookie() -> SessionCookie {
    SessionCookie {
        session_id: "sid-123".into(),
        scope: SCOPE.into(),
        issued_at: 1_000,
        expires_at: 2_000,
    }
}

#[test]
fn session_cookie_round_trip_and_expiry() {
    let c = cipher();
    let v = cookie().seal(&c);
    assert_eq!(SessionCookie::open(&c, &v, 1_500, SCOPE), Some(cookie()));
    assert_eq!(SessionCookie::open(&c, &v, 1_999, SCOPE), Some(cookie()));
    assert_eq!(SessionCookie::open(&c, &v, 2_000, SCOPE), None);
    assert_eq!(SessionCookie::open(&c, &v, 9_999, SCOPE), None);
}

#[test]
fn session_cookie_tampering_fails() {
    let c = cipher();
    let v = cookie().seal(&c);
    let raw = crate::b64url_decode(&v).unwrap();
    for i in 0..raw.len() {
        let mut m = raw.clone();
        m[i] ^= 0x04;
        assert_eq!(
            SessionCookie::open(&c, &crate::b64url(&m), 1_500, SCOPE),
            None
        );
    }
    for n in 0..v.len() {
        assert_eq!(SessionCookie::open(&c, &v[..n], 1_500, SCOPE), None);
    }
}

#[test]
fn other_purposes_are_not_session_cookies() {
    let c = cipher();
    let json = serde_json::to_vec(&cookie()).unwrap();
    for purpose in [
        LOGIN_STATE_PURPOSE,
        crate::handoff::HANDOFF_PURPOSE,
        crate::binding::SIGN_IN_FLOW_PURPOSE,
        b"".as_slice(),
    ] {
        let v = c.seal(purpose, &json);
        assert_eq!(SessionCookie::open(&c, &v, 1_500, SCOPE), None);
    }
    let v = c.seal(SESSION_PURPOSE, &json);
    assert_eq!(SessionCookie::open(&c, &v, 1_500, SCOPE), Some(cookie()));
}

#[test]
fn a_cookie_opens_only_for_the_scope_it_was_sealed_for() {
    let c = cipher();
    let v = cookie().seal(&c);
    assert_eq!(SessionCookie::open(&c, &v, 1_500, SCOPE), Some(cookie()));
    for other in [
        "admin.example:443",
        "app.example:8443",
        "app.example:1",
        "app.example",
        "app.example:443 ",
        " app.example:443",
        "app.example.:443",
        "APP.EXAMPLE:443",
        "App.example:443",
        "app.example:4430",
        "app.example:44",
        "example:443",
        "",
    ] {
        assert_eq!(SessionCookie::open(&c, &v, 1_500, other), None, "{other:?}");
    }
    // A cookie domain is a scope like any other: it opens there and nowhere else.
    let shared = SessionCookie {
        scope: "example.com".into(),
        ..cookie()
    }
    .seal(&c);
    assert!(SessionCookie::open(&c, &shared, 1_500, "example.com").is_some());
    assert_eq!(SessionCookie::open(&c, &shared, 1_500, SCOPE), None);
}

#[test]
fn a_cookie_without_a_scope_opens_nowhere() {
    let c = cipher();
    let v = SessionCookie {
        scope: String::new(),
        ..cookie()
    }
    .seal(&c);
    for scope in ["", SCOPE] {
        assert_eq!(SessionCookie::open(&c, &v, 1_500, scope), None, "{scope:?}");
    }
}

#[test]
fn cookies_of_the_first_form_do_not_open() {
    let c = cipher();
    // The first form: no scope, sealed with the first purpose.
    let first = serde_json::json!({
        "session_id": "sid-123",
        "issued_at": 1_000,
        "expires_at": 2_000,
    });
    let json = serde_json::to_vec(&first).unwrap();
    for purpose in [b"portcullis-session".as_slice(), SESSION_PURPOSE] {
        let v = c.seal(purpose, &json);
        assert_eq!(SessionCookie::open(&c, &v, 1_500, SCOPE), None);
    }
    // Nor does the current payload under the first purpose.
    let v = c.seal(
        b"portcullis-session",
        &serde_json::to_vec(&cookie()).unwrap(),
    );
    assert_eq!(SessionCookie::open(&c, &v, 1_500, SCOPE), None);
}

#[test]
fn an_edited_scope_does_not_open() {
    // The scope is inside the sealed payload: a value sealed for one scope cannot be turned
    // into one for another by changing ciphertext bytes (every single-bit edit fails).
    let c = cipher();
    let v = cookie().seal(&c);
    let raw = crate::b64url_decode(&v).unwrap();
    for i in 0..raw.len() {
        for bit in 0..8 {
            let mut m = raw.clone();
            m[i] ^= 1 << bit;
            let edited = crate::b64url(&m);
            for scope in [SCOPE, "admin.example:443", "bpp.example:443"] {
                assert_eq!(SessionCookie::open(&c, &edited, 1_500, scope), None);
            }
        }
    }
}

fn opts() -> CookieOptions {
    CookieOptions {
        name: "_portcullis".into(),
        domain: None,
        secure: true,
        http_only: true,
        same_site: SameSite::Lax,
        max_age: Duration::from_secs(14 * 3600),
    }
}

#[test]
fn set_cookie_renders_attributes() {
    assert_eq!(
        opts().set_cookie("abc"),
        "_portcullis=abc; Path=/; Max-Age=50400; Secure; HttpOnly; SameSite=Lax"
    );
    let o = CookieOptions {
        domain: Some("example.com".into()),
        secure: false,
        http_only: false,
        same_site: SameSite::Strict,
        ..opts()
    };
    assert_eq!(
        o.set_cookie("v"),
        "_portcullis=v; Path=/; Max-Age=50400; Domain=example.com; SameSite=Strict"
    );
}

#[test]
fn same_site_none_forces_secure() {
    let o = CookieOptions {
        secure: false,
        same_site: SameSite::None,
        ..opts()
    };
    assert!(o.set_cookie("v").contains("; Secure"));
    assert!(o.set_cookie("v").ends_with("SameSite=None"));
}

#[test]
fn clear_cookie_expires() {
    assert_eq!(
        opts().clear_cookie(),
        "_portcullis=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Secure; HttpOnly; SameSite=Lax"
    );
}

#[test]
fn the_binding_cookie_is_host_only_lax_and_kept_off_upstream_paths() {
    let b = crate::BrowserBinding::new();
    let ttl = Duration::from_secs(600);
    let expected = format!(
        "_portcullis_csrf={}; Path=/.portcullis/; Max-Age=600; Secure; HttpOnly; SameSite=Lax",
        b.cookie_value()
    );
    assert_eq!(opts().set_binding_cookie(&b, ttl), expected);
    // Whatever the session cookie's attributes: no Domain, always HttpOnly and Lax (Strict
    // would not be sent on the redirect back from the authenticate host).
    let o = CookieOptions {
        domain: Some("example.com".into()),
        secure: false,
        http_only: false,
        same_site: SameSite::Strict,
        ..opts()
    };
    assert_eq!(o.binding_cookie_name(), "_portcullis_csrf");
    assert_eq!(
        o.set_binding_cookie(&b, ttl),
        format!(
            "_portcullis_csrf={}; Path=/.portcullis/; Max-Age=600; HttpOnly; SameSite=Lax",
            b.cookie_value()
        )
    );
    let none = CookieOptions {
        same_site: SameSite::None,
        ..o.clone()
    };
    assert!(none
        .set_binding_cookie(&b, ttl)
        .ends_with("; HttpOnly; SameSite=Lax"));
    assert_eq!(
        o.clear_binding_cookie(),
        "_portcullis_csrf=; Path=/.portcullis/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax"
    );
    // The session cookie itself is unchanged by all this.
    assert!(o.set_cookie("v").contains("; Domain=example.com"));
}

#[test]
fn same_site_parses() {
    assert_eq!("LAX".parse::<SameSite>(), Ok(SameSite::Lax));
    assert_eq!("strict".parse::<SameSite>(), Ok(SameSite::Strict));
    assert_eq!("None".parse::<SameSite>(), Ok(SameSite::None));
    assert!("sometimes".parse::<SameSite>().is_err());
}

#[test]
fn find_cookie_exact_names() {
    let h = ["_portcullis_csrf=x; _portcullis=y; a=b"];
    assert_eq!(find_cookie(h.into_iter(), "_portcullis"), Some("y"));
    assert_eq!(find_cookie(h.into_iter(), "_portcullis_csrf"), Some("x"));
    assert_eq!(find_cookie(h.into_iter(), "_portcul"), None);
    assert_eq!(find_cookie(h.into_iter(), "portcullis"), None);
    let h = ["x_portcullis=1; _portcullisX=2"];
    assert_eq!(find_cookie(h.into_iter(), "_portcullis"), None);
}

#[test]
fn find_cookie_across_headers_whitespace_quotes() {
    let h = [
        "a=1",
        "  b = 2 ;\t_portcullis=\"quoted\"  ;",
        "_portcullis=later",
    ];
    assert_eq!(find_cookie(h.into_iter(), "a"), Some("1"));
    assert_eq!(find_cookie(h.into_iter(), "b"), Some("2"));
    assert_eq!(find_cookie(h.into_iter(), "_portcullis"), Some("quoted"));
    assert_eq!(find_cookie([";;", ""].into_iter(), "a"), None);
    assert_eq!(find_cookie(["a=\""].into_iter(), "a"), Some("\""));
    assert_eq!(find_cookie(["a="].into_iter(), "a"), Some(""));
    assert_eq!(find_cookie(["flag; a=v=w"].into_iter(), "a"), Some("v=w"));
    assert_eq!(find_cookie(std::iter::empty::<&str>(), "a"), None);
}

#[test]
fn strip_cookie_removes_only_that_name() {
    let strip = |v: &str| strip_cookie(v.as_bytes(), "_portcullis").map(|c| c.into_owned());
    let s = |v: &str| Some(v.as_bytes().to_vec());
    assert_eq!(
        strip("_portcullis_csrf=x; _portcullis=y; a=b"),
        s("_portcullis_csrf=x; a=b")
    );
    assert_eq!(strip("_portcullis=y;  _portcullis=z ;"), None);
    assert_eq!(strip("_portcullis=y"), None);
    assert_eq!(strip(""), None);
    assert_eq!(strip(" ; ;"), None);
    assert_eq!(
        strip(" a=1 ;b=\"q\"; flag ; _portcullis=s"),
        s("a=1; b=\"q\"; flag")
    );
    assert_eq!(strip("_portcullis = spaced; a=1"), s("a=1"));
    // The shapes near the one-pair fast path (`name=value`, no `;`).
    assert_eq!(strip("_portcullis="), None);
    assert_eq!(strip("_portcullis=a=b"), None);
    assert_eq!(strip("_portcullis"), None);
    assert_eq!(strip("_portcullis=y;"), None);
    assert_eq!(strip("_portcullis=y;a=1"), s("a=1"));
    assert_eq!(strip("_portcullisx=y"), s("_portcullisx=y"));
}

#[test]
fn strip_cookie_leaves_a_value_without_it_as_it_is() {
    for v in ["a=1", " a=1 ;b=2", "_portcullis_csrf=x", "flag"] {
        assert!(
            matches!(strip_cookie(v.as_bytes(), "_portcullis"), Some(Cow::Borrowed(b)) if b == v.as_bytes()),
            "{v}"
        );
    }
}

#[test]
fn cookies_are_found_and_stripped_beside_other_cookies_that_are_not_utf8() {
    let mut h = b"theme=\xff\xfe; _portcullis=sealed; other=\xc3".to_vec();
    assert_eq!(find_cookie([h.as_slice()], "_portcullis"), Some("sealed"));
    assert_eq!(
        find_cookie([h.as_slice()], "theme"),
        None,
        "not UTF-8: no value"
    );
    assert_eq!(
        strip_cookie(&h, "_portcullis").map(|c| c.into_owned()),
        Some(b"theme=\xff\xfe; other=\xc3".to_vec())
    );
    h.truncate(0);
    assert_eq!(find_cookie([h.as_slice()], "_portcullis"), None);
}

#[test]
fn find_cookie_bytes_gives_the_value_as_sent() {
    let h = b"a=1; _portcullis=\"\xffs\"; _portcullis=second".as_slice();
    assert_eq!(
        find_cookie_bytes([h], "_portcullis"),
        Some(b"\xffs".as_slice()),
        "the first, unquoted, not decoded"
    );
    assert_eq!(find_cookie([h], "_portcullis"), None, "not UTF-8: no text");
    assert_eq!(find_cookie_bytes([h], "b"), None);
}

#[test]
fn strip_cookies_makes_one_value_of_several_headers() {
    let strip = |vs: &[&str]| {
        strip_cookies(vs.iter().map(|v| v.as_bytes()), "_portcullis")
            .map(|c| (matches!(c, Cow::Borrowed(_)), c.into_owned()))
    };
    let left = |v: &str| Some((true, v.as_bytes().to_vec()));
    let made = |v: &str| Some((false, v.as_bytes().to_vec()));
    assert_eq!(strip(&[]), left(""), "no header: nothing to do");
    assert_eq!(
        strip(&["a=1; b=2"]),
        left("a=1; b=2"),
        "one without it: as it is"
    );
    assert_eq!(strip(&["_portcullis=s"]), None);
    assert_eq!(strip(&["a=1; _portcullis=s"]), made("a=1"));
    assert_eq!(
        strip(&["a=1", "b=2"]),
        made("a=1; b=2"),
        "several: always one"
    );
    assert_eq!(
        strip(&["_portcullis=s", "b=2; _portcullis=t", "c=3"]),
        made("b=2; c=3")
    );
    assert_eq!(strip(&["_portcullis=s", "_portcullis=t"]), None);
}

#[test]
fn a_sessions_cookie_names_it_over_its_window() {
    let session = Session {
        id: "sid-456".into(),
        user_id: "sub-1".into(),
        email: String::new(),
        name: String::new(),
        groups: Vec::new(),
        claims: serde_json::Map::new(),
        issued_at: 1_000,
        expires_at: 2_000,
        id_token: None,
        access_token: None,
        refresh_token: None,
        access_token_expires_at: None,
    };
    let c = cipher();
    let v = SessionCookie::for_session(&session, SCOPE).seal(&c);
    let opened = SessionCookie::open(&c, &v, 1_500, SCOPE).expect("opens within the window");
    assert_eq!(opened.session_id, "sid-456");
    assert_eq!(opened.scope, SCOPE);
    assert_eq!((opened.issued_at, opened.expires_at), (1_000, 2_000));
    assert_eq!(SessionCookie::open(&c, &v, 2_000, SCOPE), None);
}

#[test]
fn the_leading_cookie_is_found_as_the_full_scan_finds_it() {
    // `find_cookie_bytes` takes a header that starts with the cookie without splitting it
    // into pairs; whatever the shape, it must find what the scan over every pair finds.
    fn scan<'a>(hs: &[&'a [u8]], name: &str) -> Option<&'a [u8]> {
        hs.iter()
            .flat_map(|h| pairs(h))
            .find(|(n, _, _)| *n == name.as_bytes())
            .map(|(_, v, _)| unquote(v))
    }
    let headers: &[&[&[u8]]] = &[
        &[b"_portcullis=abc"],
        &[b"_portcullis= abc \t; x=1"],
        &[b"_portcullis=\"quoted\"; a=b"],
        &[b"_portcullis=; a=1"],
        &[b"_portcullis=a=b; c=d"],
        &[b"_portcullis=abc;"],
        &[b"_portcullis=\xff\xfe; z=1"],
        &[b"_portcullis=first", b"_portcullis=second"],
        &[b"_portcullis_x=1; _portcullis=2"],
        &[b"_portcullis =spaced; b=2"],
        &[b"_portcullis", b"_portcullis=later"],
        &[b"a=1", b"_portcullis=second-header"],
        &[b"_portcullisx=1"],
        &[b""],
    ];
    for hs in headers {
        for name in ["_portcullis", "a", "x"] {
            assert_eq!(
                find_cookie_bytes(hs.iter().copied(), name),
                scan(hs, name),
                "{name} in {hs:?}"
            );
        }
    }
}
