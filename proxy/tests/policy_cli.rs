//! End to end: `portcullis policy test` — the verdict on the first line, the exit codes
//! (0 allow, 1 deny, 2 usage or configuration error) and every identity and request option.

use std::path::Path;
use std::process::Output;

use portcullis_harness::{Portcullis, TestEnv};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Routes with explicit ports so that `--url` needs no knowledge of the listener's port.
fn config() -> String {
    TestEnv::builder(BIN)
        .route(
            r#"from = "http://app.localhost:8080"
to = "{upstream}"
policy = [
  { allow = { or = [ { groups = { has = "admins" } }, { "claim/department" = { is = "engineering" } }, { "claim/roles" = { has = "editor" } } ] } },
  { deny = { or = [ { source_ip = "10.0.0.0/8" }, { http_method = "DELETE" } ] } },
]"#,
        )
        .route(
            r#"from = "http://dated.localhost:8080"
to = "{upstream}"
policy = [ { allow = { and = [ { authenticated_user = true }, { date = { after = "2026-01-01T00:00:00Z" } } ] } } ]"#,
        )
        .route(
            r#"from = "http://example.localhost:8080"
to = "{upstream}"
policy = [ { allow = { and = [ { domain = "example.com" }, { user = "alice" } ] } } ]"#,
        )
        .route(
            r#"from = "http://any.localhost:8080"
to = "{upstream}"
allow_any_authenticated_user = true"#,
        )
        .route(
            r#"from = "http://public.localhost:8080"
to = "{upstream}"
allow_public_unauthenticated_access = true"#,
        )
        .no_start()
}

fn policy_test(config: &str, args: &[&str]) -> Output {
    let mut all = vec!["policy", "test"];
    all.extend_from_slice(args);
    Portcullis::run(Path::new(BIN), &all, config)
}

/// Runs `policy test` and asserts the verdict line and the exit code; returns stdout.
#[track_caller]
fn verdict(config: &str, args: &[&str], want: &str) -> String {
    let out = policy_test(config, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stdout.lines().next(),
        Some(want),
        "{args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let code = if want == "allow" { 0 } else { 1 };
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

#[track_caller]
fn usage_error(config: &str, args: &[&str]) -> String {
    let out = policy_test(config, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}\nstdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    stderr
}

const APP: &str = "http://app.localhost:8080/docs";

#[test]
fn allow_prints_allow_first_and_exits_0() {
    let config = config();
    let out = verdict(
        &config,
        &[
            "--url",
            APP,
            "--email",
            "alice@example.com",
            "--groups",
            "users,admins",
        ],
        "allow",
    );
    assert!(out.contains("routes[0]"), "names the route: {out}");
    assert!(out.contains("allowed by rule 0"), "gives the reason: {out}");
}

#[test]
fn deny_prints_deny_first_and_exits_1() {
    let config = config();
    let out = verdict(
        &config,
        &[
            "--url",
            APP,
            "--email",
            "bob@example.com",
            "--groups",
            "users",
        ],
        "deny",
    );
    assert!(out.contains("routes[0]"), "{out}");
    assert!(out.contains("no allow rule matched"), "{out}");
    // No route for the host: deny, and it says so.
    let out = verdict(
        &config,
        &[
            "--url",
            "http://nowhere.localhost:8080/",
            "--email",
            "a@example.com",
        ],
        "deny",
    );
    assert!(out.contains("no route"), "{out}");
}

#[test]
fn groups_are_a_comma_separated_list() {
    let config = config();
    for (groups, want) in [
        ("admins", "allow"),
        ("users,admins", "allow"),
        ("admins,users", "allow"),
        ("users", "deny"),
        ("users,contractors", "deny"),
    ] {
        verdict(
            &config,
            &["--url", APP, "--email", "x@example.com", "--groups", groups],
            want,
        );
    }
}

#[test]
fn claims_are_name_value_pairs_with_json_lists() {
    let config = config();
    for (claims, want) in [
        (&["department=engineering"][..], "allow"),
        (&["department=sales"][..], "deny"),
        (&[r#"roles=["viewer","editor"]"#][..], "allow"),
        (&[r#"roles=["viewer"]"#][..], "deny"),
        (&["department=sales", "roles=editor"][..], "allow"),
    ] {
        let mut args = vec!["--url", APP, "--email", "x@example.com"];
        for c in claims {
            args.extend(["--claim", c]);
        }
        verdict(&config, &args, want);
    }
    let stderr = usage_error(&config, &["--url", APP, "--claim", "no-equals-sign"]);
    assert!(stderr.contains("--claim"), "{stderr}");
}

#[test]
fn email_and_user_feed_domain_and_user_criteria() {
    let config = config();
    let url = "http://example.localhost:8080/";
    verdict(
        &config,
        &[
            "--url",
            url,
            "--email",
            "Alice@EXAMPLE.com",
            "--user",
            "alice",
        ],
        "allow",
    );
    verdict(
        &config,
        &[
            "--url",
            url,
            "--email",
            "alice@example.org",
            "--user",
            "alice",
        ],
        "deny",
    );
    verdict(
        &config,
        &[
            "--url",
            url,
            "--email",
            "alice@evil.org@example.com",
            "--user",
            "alice",
        ],
        "deny",
    );
    verdict(
        &config,
        &["--url", url, "--email", "bob@example.com", "--user", "bob"],
        "deny",
    );
}

#[test]
fn source_ip_and_method_feed_request_criteria() {
    let config = config();
    let admin = [
        "--url",
        APP,
        "--email",
        "alice@example.com",
        "--groups",
        "admins",
    ];
    verdict(&config, &admin, "allow");
    let with = |extra: &[&'static str]| {
        let mut args = admin.to_vec();
        args.extend_from_slice(extra);
        args
    };
    verdict(&config, &with(&["--source-ip", "127.0.0.1"]), "allow");
    verdict(&config, &with(&["--source-ip", "::1"]), "allow");
    let out = verdict(&config, &with(&["--source-ip", "10.1.2.3"]), "deny");
    assert!(out.contains("denied by rule 1"), "{out}");
    verdict(&config, &with(&["--method", "DELETE"]), "deny");
    verdict(&config, &with(&["--method", "delete"]), "deny");
    verdict(&config, &with(&["--method", "POST"]), "allow");
    let stderr = usage_error(&config, &with(&["--source-ip", "not-an-ip"]));
    assert!(stderr.contains("source-ip"), "{stderr}");
}

#[test]
fn time_sets_the_clock_and_must_be_rfc3339() {
    let config = config();
    let url = "http://dated.localhost:8080/";
    let base = ["--url", url, "--email", "a@example.com"];
    let at = |t: &'static str| {
        let mut args = base.to_vec();
        args.extend(["--time", t]);
        args
    };
    verdict(&config, &at("2025-12-31T23:59:59Z"), "deny");
    verdict(&config, &at("2026-01-01T00:00:01Z"), "allow");
    verdict(&config, &at("2026-01-01T01:00:01+02:00"), "deny");
    for bad in ["yesterday", "2026-01-01", "2026-13-01T00:00:00Z"] {
        let stderr = usage_error(&config, &at(bad));
        assert!(stderr.contains("--time"), "{bad}: {stderr}");
    }
}

#[test]
fn anonymous_is_a_request_without_a_session() {
    let config = config();
    let out = verdict(
        &config,
        &["--url", "http://any.localhost:8080/", "--anonymous"],
        "deny",
    );
    assert!(out.contains("sign in"), "{out}");
    verdict(
        &config,
        &[
            "--url",
            "http://any.localhost:8080/",
            "--email",
            "a@example.com",
        ],
        "allow",
    );
    verdict(
        &config,
        &["--url", "http://public.localhost:8080/", "--anonymous"],
        "allow",
    );
    // --anonymous with an identity makes no sense
    usage_error(
        &config,
        &[
            "--url",
            "http://any.localhost:8080/",
            "--anonymous",
            "--email",
            "a@example.com",
        ],
    );
}

#[test]
fn bad_config_or_usage_exits_2() {
    let broken = TestEnv::builder(BIN)
        .route(
            r#"from = "http://app.localhost:8080"
to = "{upstream}"
policy = [ { allow = { or = [ { emial = "alice@example.com" } ] } } ]"#,
        )
        .no_start();
    let stderr = usage_error(&broken, &["--url", APP, "--email", "alice@example.com"]);
    assert!(
        stderr.contains("routes[0].policy") && stderr.contains("emial"),
        "{stderr}"
    );
    let config = config();
    usage_error(&config, &["--email", "alice@example.com"]); // no --url
    usage_error(&config, &["--url", "not a url"]);
    usage_error(&config, &["--url", APP, "--bogus-flag"]);
}
