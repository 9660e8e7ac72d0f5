//! End to end: every policy criterion of the contract through the real proxy, with the real
//! OpenID Connect provider wherever identity matters (emails, domains, users, groups and claims
//! come from ID tokens the IdP signed), and the explained decisions (`show_error_details`, the
//! authorize log line).
//!
//! Each environment has one route host, `p.localhost`, with one route per case, told apart by
//! path prefix; a user signs in once and then probes every prefix.

use portcullis_harness::{Browser, IdpOptions, TestEnv, TestEnvBuilder, COOKIE, JSON};
use reqwest::Method;
use serde_json::{json, Value};

const HOST: &str = "p";

/// A builder with one route per `(prefix, policy)` on `p.localhost` (plus `/signin/` for any
/// signed-in user), and an IdP that releases the custom claims `department`, `roles` and `org`.
fn builder(routes: &[(&str, &str)]) -> TestEnvBuilder {
    let mut b = TestEnv::builder(env!("CARGO_BIN_EXE_portcullis")).idp_options(IdpOptions {
        extra_claims: vec!["department".into(), "roles".into(), "org".into()],
        ..IdpOptions::default()
    });
    let signin = (
        "/signin/",
        "[ { allow = { and = [ { authenticated_user = true } ] } } ]",
    );
    for (prefix, policy) in routes.iter().chain([&signin]) {
        b = b.route(&format!(
            "from = \"http://p.localhost\"\nto = \"{{upstream}}\"\nprefix = \"{prefix}\"\npolicy = {policy}"
        ));
    }
    b
}

/// Signs `login` in (through the route at `prefix`, which must need a session) and returns the
/// browser, which then holds a session cookie for `p.localhost`.
async fn sign_in(env: &TestEnv, login: &str, prefix: &str) -> Browser {
    let b = env.browser();
    let resp = b.sign_in(&env.url(HOST, prefix), login).await;
    assert!(
        matches!(resp.status().as_u16(), 200 | 403),
        "sign-in as {login} ended with {}\n--- logs ---\n{}",
        resp.status(),
        env.logs()
    );
    assert!(
        b.cookie(&env.url(HOST, "/"), COOKIE).is_some(),
        "{login} has no session cookie"
    );
    b
}

/// The status of one request (no redirect followed).
async fn status(
    b: &Browser,
    env: &TestEnv,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> u16 {
    b.request(method, &env.url(HOST, path), headers, None)
        .await
        .status()
        .as_u16()
}

/// Asserts that `login`'s browser gets `want` for a GET of each path.
async fn expect(env: &TestEnv, b: &Browser, login: &str, cases: &[(&str, u16)]) {
    for (path, want) in cases {
        let got = status(b, env, Method::GET, path, &[]).await;
        assert_eq!(
            got,
            *want,
            "{login}: GET {path}\n--- logs ---\n{}",
            env.logs()
        );
    }
}

// 1. Identity criteria, with identities from the IdP.
#[tokio::test]
async fn identity_criteria_use_the_idp_claims() {
    let env = builder(&[
        ("/accept/", "[ { allow = { and = [ { accept = true } ] } } ]"),
        // email: case-insensitive on both sides
        (
            "/email/",
            r#"[ { allow = { or = [ { email = { in = ["ALICE@Example.COM", "erin@example.com"] } } ] } } ]"#,
        ),
        (
            "/email-is/",
            r#"[ { allow = { or = [ { email = "Bob@EXAMPLE.com" } ] } } ]"#,
        ),
        // domain: case-insensitive; an email with two `@` never matches
        (
            "/domain/",
            r#"[ { allow = { or = [ { domain = { is = "EXAMPLE.com" } } ] } } ]"#,
        ),
        (
            "/domain-suffix/",
            r#"[ { allow = { or = [ { domain = { ends_with = "example.com" } } ] } } ]"#,
        ),
        (
            "/domain-not/",
            r#"[ { allow = { or = [ { domain = { not = "example.org" } } ] } } ]"#,
        ),
        // user: the IdP subject
        ("/user/", r#"[ { allow = { or = [ { user = { is = "bob" } } ] } } ]"#),
        // groups
        ("/groups-has/", r#"[ { allow = { or = [ { groups = { has = "admins" } } ] } } ]"#),
        ("/groups-bare/", r#"[ { allow = { or = [ { groups = "users" } ] } } ]"#),
        ("/groups-is/", r#"[ { allow = { or = [ { groups = { is = ["users"] } } ] } } ]"#),
        (
            "/groups-exclude/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { groups = { exclude = "contractors" } } ] } } ]"#,
        ),
        // claims: string, list, nested
        (
            "/claim-string/",
            r#"[ { allow = { or = [ { "claim/department" = { is = "engineering" } } ] } } ]"#,
        ),
        (
            "/claim-string-prefix/",
            r#"[ { allow = { or = [ { "claim/department" = { starts_with = "eng" } } ] } } ]"#,
        ),
        (
            "/claim-list/",
            r#"[ { allow = { or = [ { "claim/roles" = { has = "editor" } } ] } } ]"#,
        ),
        (
            "/claim-list-is/",
            r#"[ { allow = { or = [ { "claim/roles" = { is = ["viewer"] } } ] } } ]"#,
        ),
        (
            "/claim-list-exclude/",
            r#"[ { allow = { or = [ { "claim/roles" = { exclude = "editor" } } ] } } ]"#,
        ),
        (
            "/claim-nested/",
            r#"[ { allow = { or = [ { "claim/org/team" = { is = "platform" } } ] } } ]"#,
        ),
        (
            "/claim-nested-list/",
            r#"[ { allow = { or = [ { "claim/org/sites" = { has = "paris" } } ] } } ]"#,
        ),
    ])
    .start()
    .await;

    env.idp
        .set_account(
            "alice",
            json!({
                "department": "engineering",
                "roles": ["viewer", "editor"],
                "org": { "team": "platform", "sites": ["paris", "lyon"] },
            }),
        )
        .await;
    env.idp
        .set_account(
            "bob",
            json!({
                "department": "sales",
                "roles": ["viewer"],
                "org": { "team": "sales", "sites": ["berlin"] },
            }),
        )
        .await;
    env.idp
        .set_account(
            "erin",
            json!({ "email": "Erin@EXAMPLE.com", "groups": ["users"] }),
        )
        .await;
    env.idp
        .set_account(
            "mallory",
            json!({ "email": "mallory@evil.org@example.com", "groups": ["users"] }),
        )
        .await;

    // alice: alice@example.com, groups admins + users, custom claims
    let alice = sign_in(&env, "alice", "/signin/").await;
    expect(
        &env,
        &alice,
        "alice",
        &[
            ("/accept/", 200),
            ("/email/", 200),
            ("/email-is/", 403),
            ("/domain/", 200),
            ("/domain-suffix/", 200),
            ("/domain-not/", 200),
            ("/user/", 403),
            ("/groups-has/", 200),
            ("/groups-bare/", 200),
            ("/groups-is/", 403),
            ("/groups-exclude/", 200),
            ("/claim-string/", 200),
            ("/claim-string-prefix/", 200),
            ("/claim-list/", 200),
            ("/claim-list-is/", 403),
            ("/claim-list-exclude/", 403),
            ("/claim-nested/", 200),
            ("/claim-nested-list/", 200),
        ],
    )
    .await;

    // bob: bob@example.com, groups users
    let bob = sign_in(&env, "bob", "/signin/").await;
    expect(
        &env,
        &bob,
        "bob",
        &[
            ("/email/", 403),
            ("/email-is/", 200),
            ("/domain/", 200),
            ("/user/", 200),
            ("/groups-has/", 403),
            ("/groups-bare/", 200),
            ("/groups-is/", 200),
            ("/groups-exclude/", 200),
            ("/claim-string/", 403),
            ("/claim-string-prefix/", 403),
            ("/claim-list/", 403),
            ("/claim-list-is/", 200),
            ("/claim-list-exclude/", 200),
            ("/claim-nested/", 403),
            ("/claim-nested-list/", 403),
        ],
    )
    .await;

    // carol: carol@example.org, groups contractors, no custom claims
    let carol = sign_in(&env, "carol", "/signin/").await;
    expect(
        &env,
        &carol,
        "carol",
        &[
            ("/email/", 403),
            ("/domain/", 403),
            ("/domain-suffix/", 403),
            ("/domain-not/", 403),
            ("/user/", 403),
            ("/groups-has/", 403),
            ("/groups-bare/", 403),
            ("/groups-is/", 403),
            ("/groups-exclude/", 403),
            // an absent claim matches nothing, not even `exclude`
            ("/claim-string/", 403),
            ("/claim-list/", 403),
            ("/claim-list-exclude/", 403),
            ("/claim-nested/", 403),
        ],
    )
    .await;

    // erin: a mixed-case email from the IdP
    let erin = sign_in(&env, "erin", "/signin/").await;
    expect(
        &env,
        &erin,
        "erin",
        &[
            ("/email/", 200),
            ("/domain/", 200),
            ("/domain-suffix/", 200),
        ],
    )
    .await;

    // mallory: an email with two `@` never matches a domain rule
    let mallory = sign_in(&env, "mallory", "/signin/").await;
    expect(
        &env,
        &mallory,
        "mallory",
        &[
            ("/accept/", 200),
            ("/domain/", 403),
            ("/domain-suffix/", 403),
            ("/domain-not/", 403),
            ("/groups-bare/", 200),
        ],
    )
    .await;
}

// 2. Request criteria: method, path, source address, CORS preflight, accept/reject,
//    authenticated_user, client_certificate.
#[tokio::test]
async fn request_criteria_use_the_request_and_the_connection() {
    let env = builder(&[
        ("/accept/", "[ { allow = { and = [ { accept = true } ] } } ]"),
        ("/reject/", "[ { allow = { and = [ { reject = true } ] } } ]"),
        (
            "/authenticated/",
            "[ { allow = { and = [ { authenticated_user = true } ] } } ]",
        ),
        (
            "/method/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { http_method = { in = ["get", "HEAD"] } } ] } } ]"#,
        ),
        (
            "/path/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { http_path = { starts_with = "/path/open" } } ] } } ]"#,
        ),
        (
            "/ip-local/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { source_ip = ["127.0.0.1", "::1/128"] } ] } } ]"#,
        ),
        (
            "/ip-ten/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { source_ip = "10.0.0.0/8" } ] } } ]"#,
        ),
        (
            "/ip-loopback-net/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { source_ip = ["127.0.0.0/8"] } ] } } ]"#,
        ),
        (
            "/cors/",
            "[ { allow = { or = [ { cors_preflight = true } ] } } ]",
        ),
        (
            "/cert/",
            r#"[ { allow = { or = [ { client_certificate = { san_dns = { ends_with = ".localhost" } } } ] } } ]"#,
        ),
        (
            "/cert-fingerprint/",
            r#"[ { allow = { or = [ { client_certificate = { fingerprint = "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99" } } ] } } ]"#,
        ),
    ])
    .start()
    .await;
    let b = sign_in(&env, "alice", "/signin/").await;
    expect(
        &env,
        &b,
        "alice",
        &[
            ("/accept/", 200),
            ("/reject/", 403),
            ("/authenticated/", 200),
            ("/method/", 200),
            ("/path/open/x", 200),
            ("/path/closed", 403),
            ("/ip-local/", 200),
            ("/ip-ten/", 403),
            ("/ip-loopback-net/", 200),
            ("/cors/", 403),
            ("/cert/", 403),
            ("/cert-fingerprint/", 403),
        ],
    )
    .await;

    // http_method: any case in the policy; the request's method decides
    for (method, want) in [
        (Method::GET, 200),
        (Method::HEAD, 200),
        (Method::POST, 403),
        (Method::DELETE, 403),
    ] {
        let got = status(&b, &env, method.clone(), "/method/", &[]).await;
        assert_eq!(got, want, "{method} /method/");
    }

    // source_ip comes from the connection: a client-sent X-Forwarded-For changes nothing.
    for xff in ["10.1.2.3", "10.1.2.3, 127.0.0.1", "127.0.0.1"] {
        for header in ["x-forwarded-for", "x-real-ip", "forwarded"] {
            let value = if header == "forwarded" {
                format!("for={xff}")
            } else {
                xff.to_owned()
            };
            let headers = [(header, value.as_str())];
            assert_eq!(
                status(&b, &env, Method::GET, "/ip-ten/", &headers).await,
                403,
                "{header}: {value} must not let a loopback client in as 10.x"
            );
            assert_eq!(
                status(&b, &env, Method::GET, "/ip-local/", &headers).await,
                200,
                "{header}: {value} must not shut a loopback client out"
            );
        }
    }
    let seen = env.upstream.last().expect("the upstream was reached");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));

    // cors_preflight: an OPTIONS with Origin and Access-Control-Request-Method, signed in or
    // not (browsers send preflights without cookies).
    let preflight = [
        ("origin", "http://other.localhost"),
        ("access-control-request-method", "POST"),
    ];
    let anonymous = env.browser();
    for (who, client) in [("signed in", &b), ("anonymous", &anonymous)] {
        assert_eq!(
            status(client, &env, Method::OPTIONS, "/cors/", &preflight).await,
            200,
            "{who}: a preflight"
        );
        assert_eq!(
            status(client, &env, Method::OPTIONS, "/cors/", &preflight[..1]).await,
            if client.cookie(&env.url(HOST, "/"), COOKIE).is_some() {
                403
            } else {
                302
            },
            "{who}: OPTIONS without Access-Control-Request-Method is no preflight"
        );
        let post = [("origin", "http://other.localhost")];
        assert_ne!(
            status(client, &env, Method::POST, "/cors/", &post).await,
            200,
            "{who}: a POST is no preflight"
        );
    }
    let last = env
        .upstream
        .last()
        .expect("the preflight reached the upstream");
    assert_eq!(last.path(), "/cors/");

    // accept / authenticated_user without a session: accept lets anyone through,
    // authenticated_user needs a session (sign-in redirect, or 401 for API clients).
    assert_eq!(
        status(&anonymous, &env, Method::GET, "/accept/", &[]).await,
        200
    );
    assert_eq!(
        status(&anonymous, &env, Method::GET, "/authenticated/", &[]).await,
        302
    );
    assert_eq!(
        status(&anonymous, &env, Method::GET, "/authenticated/", &[JSON]).await,
        401
    );
}

// 3. Time criteria, with ranges that are always or never true.
#[tokio::test]
async fn time_criteria_use_the_clock() {
    let env = builder(&[
        ("/accept/", "[ { allow = { and = [ { accept = true } ] } } ]"),
        (
            "/date-after-past/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { date = { after = "2000-01-01T00:00:00Z" } } ] } } ]"#,
        ),
        (
            "/date-after-future/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { date = { after = "2999-01-01T00:00:00Z" } } ] } } ]"#,
        ),
        (
            "/date-before-future/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { date = { before = "2999-01-01T00:00:00Z" } } ] } } ]"#,
        ),
        (
            "/date-before-past/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { date = { before = "2000-01-01T00:00:00Z" } } ] } } ]"#,
        ),
        (
            "/date-between/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { date = { after = "2000-01-01T00:00:00Z", before = "2999-01-01T00:00:00Z" } } ] } } ]"#,
        ),
        (
            "/dow-all/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { day_of_week = "mon-sun" } ] } } ]"#,
        ),
        (
            "/dow-all-zone/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { day_of_week = { days = "Mon-Fri, sat, sun", timezone = "Pacific/Kiritimati" } } ] } } ]"#,
        ),
        (
            "/dow-none/",
            r#"[ { allow = { and = [ { authenticated_user = true } ], not = [ { day_of_week = "mon-sun" } ] } } ]"#,
        ),
        (
            "/tod-all/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { time_of_day = { after = "00:00", before = "24:00" } } ] } } ]"#,
        ),
        (
            "/tod-all-zone/",
            r#"[ { allow = { and = [ { authenticated_user = true }, { time_of_day = { after = "00:00", before = "24:00", timezone = "America/New_York" } } ] } } ]"#,
        ),
        (
            "/tod-none/",
            r#"[ { allow = { and = [ { authenticated_user = true } ], not = [ { time_of_day = { after = "00:00", before = "24:00" } } ] } } ]"#,
        ),
    ])
    .start()
    .await;
    let b = sign_in(&env, "bob", "/signin/").await;
    expect(
        &env,
        &b,
        "bob",
        &[
            ("/date-after-past/", 200),
            ("/date-after-future/", 403),
            ("/date-before-future/", 200),
            ("/date-before-past/", 403),
            ("/date-between/", 200),
            ("/dow-all/", 200),
            ("/dow-all-zone/", 200),
            ("/dow-none/", 403),
            ("/tod-all/", 200),
            ("/tod-all-zone/", 200),
            ("/tod-none/", 403),
        ],
    )
    .await;
}

// 4. allow + deny, and the operators and/or/not/nor.
#[tokio::test]
async fn rules_and_operators_combine_as_the_contract_says() {
    let env = builder(&[
        ("/accept/", "[ { allow = { and = [ { accept = true } ] } } ]"),
        // allow users, deny DELETE: a deny wins over an allow
        (
            "/combo/",
            r#"[
  { allow = { or = [ { groups = { has = "users" } } ] } },
  { deny = { or = [ { http_method = { is = "DELETE" } } ] } },
]"#,
        ),
        // a single rule (not a list)
        (
            "/single/",
            r#"{ allow = { or = [ { user = "carol" } ] } }"#,
        ),
        // and: every criterion
        (
            "/and/",
            r#"[ { allow = { and = [ { groups = { has = "users" } }, { email = { ends_with = "@example.com" } } ] } } ]"#,
        ),
        // or: any criterion
        (
            "/or/",
            r#"[ { allow = { or = [ { user = "carol" }, { groups = { has = "admins" } } ] } } ]"#,
        ),
        // not: none may match
        (
            "/not/",
            r#"[ { allow = { and = [ { authenticated_user = true } ], not = [ { groups = { has = "contractors" } }, { user = "alice" } ] } } ]"#,
        ),
        // nor: not all may match
        (
            "/nor/",
            r#"[ { allow = { nor = [ { groups = { has = "admins" } }, { groups = { has = "users" } } ] } } ]"#,
        ),
        // several allow rules: any one suffices
        (
            "/two-allows/",
            r#"[ { allow = { or = [ { user = "alice" } ] } }, { allow = { or = [ { user = "carol" } ] } } ]"#,
        ),
        // a deny with nothing to allow still denies
        (
            "/deny-only/",
            r#"[ { deny = { or = [ { user = "bob" } ] } } ]"#,
        ),
    ])
    .start()
    .await;

    let alice = sign_in(&env, "alice", "/signin/").await;
    let bob = sign_in(&env, "bob", "/signin/").await;
    let carol = sign_in(&env, "carol", "/signin/").await;
    let table: &[(&str, [u16; 3])] = &[
        // path            alice bob  carol
        ("/combo/", [200, 200, 403]),
        ("/single/", [403, 403, 200]),
        ("/and/", [200, 200, 403]),
        ("/or/", [200, 403, 200]),
        ("/not/", [403, 200, 403]),
        ("/nor/", [403, 200, 200]),
        ("/two-allows/", [200, 403, 200]),
        ("/deny-only/", [403, 403, 403]),
    ];
    for (path, wants) in table {
        for ((login, b), want) in [("alice", &alice), ("bob", &bob), ("carol", &carol)]
            .into_iter()
            .zip(wants)
        {
            let got = status(b, &env, Method::GET, path, &[]).await;
            assert_eq!(
                got,
                *want,
                "{login}: GET {path}\n--- logs ---\n{}",
                env.logs()
            );
        }
    }
    // the deny rule: DELETE is refused even to users the allow rule lets in
    for (login, b) in [("alice", &alice), ("bob", &bob)] {
        assert_eq!(
            status(b, &env, Method::DELETE, "/combo/x", &[]).await,
            403,
            "{login}: DELETE /combo/x"
        );
        assert_eq!(
            status(b, &env, Method::POST, "/combo/x", &[]).await,
            200,
            "{login}: POST /combo/x"
        );
    }
}

/// The `target = "authorize"` log lines.
fn authorize_lines(env: &TestEnv) -> Vec<Value> {
    env.proxy
        .json_logs()
        .into_iter()
        .filter(|l| l["target"] == "authorize")
        .collect()
}

/// Waits (briefly) for the authorize log line of `request_id` and returns its reason.
async fn logged_reason(env: &TestEnv, request_id: &str) -> String {
    for _ in 0..100 {
        if let Some(line) = authorize_lines(env)
            .into_iter()
            .find(|l| l["request_id"] == request_id)
        {
            return line["reason"]
                .as_str()
                .unwrap_or_else(|| panic!("authorize line without a reason: {line}"))
                .to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "no authorize log line for request {request_id}\n--- logs ---\n{}",
        env.logs()
    );
}

const EXPLAINED_ROUTES: &[(&str, &str)] = &[
    (
        "/accept/",
        "[ { allow = { and = [ { accept = true } ] } } ]",
    ),
    (
        "/admins/",
        r#"[ { allow = { or = [ { groups = { has = "admins" } } ] } } ]"#,
    ),
    (
        "/no-delete/",
        r#"[ { allow = { or = [ { accept = true } ] } }, { deny = { or = [ { http_method = "DELETE" } ] } } ]"#,
    ),
];

/// The 403 for bob on `/admins/` (no allow matched) and on `DELETE /no-delete/` (deny rule 1),
/// as JSON and as HTML; returns `(json, html)` bodies of each.
async fn refusals(env: &TestEnv) -> Vec<(String, Value, String)> {
    let bob = sign_in(env, "bob", "/signin/").await;
    let mut out = Vec::new();
    for (method, path) in [(Method::GET, "/admins/"), (Method::DELETE, "/no-delete/")] {
        let resp = bob
            .request(method.clone(), &env.url(HOST, path), &[JSON], None)
            .await;
        assert_eq!(resp.status(), 403, "{method} {path}");
        let body: Value = resp.json().await.expect("a JSON 403");
        let resp = bob
            .request(method.clone(), &env.url(HOST, path), &[], None)
            .await;
        assert_eq!(resp.status(), 403, "{method} {path}");
        let html = resp.text().await.expect("an HTML 403");
        out.push((path.to_owned(), body, html));
    }
    out
}

// 5. show_error_details = true: the 403 lists the reasons; the log line has them too.
#[tokio::test]
async fn deny_reasons_are_shown_with_show_error_details() {
    let env = builder(EXPLAINED_ROUTES)
        .config("show_error_details = true")
        .start()
        .await;
    let refusals = refusals(&env).await;
    let wanted = [
        ("/admins/", "no allow rule matched"),
        ("/no-delete/", "denied by rule 1"),
    ];
    for ((path, json, html), (_, reason)) in refusals.iter().zip(wanted) {
        let request_id = json["request_id"].as_str().expect("request_id");
        let details = json["details"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: no details in {json}"));
        assert!(
            details
                .iter()
                .any(|d| d.as_str().is_some_and(|d| d.contains(reason))),
            "{path}: details {details:?} do not say {reason:?}"
        );
        assert!(
            html.contains(reason),
            "{path}: HTML does not say {reason:?}:\n{html}"
        );
        if *path == "/no-delete/" {
            assert!(
                details[0].as_str().is_some_and(|d| d.contains("DELETE")),
                "{path}: the reason names the rule: {details:?}"
            );
        }
        let logged = logged_reason(&env, request_id).await;
        assert!(logged.contains(reason), "{path}: logged {logged:?}");
    }
}

// 6. By default the 403 does not explain itself, but the log line still does.
#[tokio::test]
async fn deny_reasons_are_hidden_by_default_but_logged() {
    let env = builder(EXPLAINED_ROUTES).start().await;
    let refusals = refusals(&env).await;
    let wanted = [
        ("/admins/", "no allow rule matched"),
        ("/no-delete/", "denied by rule 1"),
    ];
    for ((path, json, html), (_, reason)) in refusals.iter().zip(wanted) {
        let request_id = json["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no request_id in {json}"));
        assert!(
            json.get("details").is_none(),
            "{path}: details shown: {json}"
        );
        assert!(!html.contains(reason), "{path}: HTML explains:\n{html}");
        assert!(
            !html.contains("groups"),
            "{path}: HTML names the rule:\n{html}"
        );
        assert!(html.contains("Access denied"), "{path}: {html}");
        let logged = logged_reason(&env, request_id).await;
        assert!(logged.contains(reason), "{path}: logged {logged:?}");
    }
}
