//! End to end: the command line (`check`, `--version`, exit codes, environment overrides) and
//! the graceful shutdown on SIGTERM.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use portcullis_harness::{route, Portcullis, TestEnv, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn valid_config() -> String {
    TestEnv::builder(BIN)
        .route(&route::any_user("app"))
        .route(&route::public("public"))
        .no_start()
}

/// A configuration with three independent mistakes.
fn broken_config() -> String {
    TestEnv::builder(BIN)
        .config(r#"cokie_name = "_typo""#)
        .route(
            r#"from = "http://app.localhost"
to = "{upstream}"
policy = [ { allow = { or = [ { emial = { is = "alice@example.com" } } ] } } ]"#,
        )
        .route(
            r#"from = "http://slow.localhost"
to = "{upstream}"
timeout = "soon"
allow_any_authenticated_user = true"#,
        )
        .no_start()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that `stderr` names all three mistakes of [`broken_config`], each with its key path.
fn assert_lists_every_error(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    let has = |f: &dyn Fn(&str) -> bool| lines.iter().any(|l| f(l));
    assert!(
        has(&|l| l.starts_with("cokie_name")
            && l.contains("unknown key")
            && l.contains("did you mean \"cookie_name\"")),
        "{stderr}"
    );
    assert!(
        has(&|l| l.starts_with("routes[0].policy")
            && l.contains("unknown criterion \"emial\"")
            && l.contains("did you mean \"email\"")),
        "{stderr}"
    );
    assert!(
        has(&|l| l.starts_with("routes[1].timeout") && l.contains("soon")),
        "{stderr}"
    );
}

#[test]
fn check_accepts_a_valid_config_with_a_one_line_summary() {
    let out = Portcullis::check(Path::new(BIN), &valid_config());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(stdout.trim_end().lines().count(), 1, "{stdout}");
    assert!(stdout.contains("2 route(s)"), "{stdout}");
}

#[test]
fn check_lists_every_error_with_its_key_path() {
    let out = Portcullis::check(Path::new(BIN), &broken_config());
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert_lists_every_error(&stderr_of(&out));
}

#[test]
fn starting_with_a_bad_config_exits_2_with_the_same_messages() {
    let config = broken_config();
    let check = Portcullis::check(Path::new(BIN), &config);
    let run = Portcullis::run(Path::new(BIN), &[], &config);
    assert_eq!(run.status.code(), Some(2));
    let stderr = stderr_of(&run);
    assert_lists_every_error(&stderr);
    // The same error lines (the closing count line names the file, which differs).
    let errors = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.contains("configuration error(s)"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(errors(&stderr), errors(&stderr_of(&check)));
}

#[test]
fn version_is_printed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
}

#[test]
fn environment_overrides_win_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, valid_config()).unwrap();
    let check = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("PORTCULLIS_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["check", "--config"])
            .arg(&path)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    assert_eq!(check(&[]).status.code(), Some(0));
    // A bad value from the environment is reported: so the variable is read…
    let out = check(&[("PORTCULLIS_COOKIE_EXPIRE", "forever")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("cookie_expire"),
        "{}",
        stderr_of(&out)
    );
    // …and it wins over the file: the summary names the overridden address.
    let out = check(&[("PORTCULLIS_ADDRESS", "127.0.0.1:1")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:1 "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn cookie_name_from_the_environment_is_used() {
    let env = TestEnv::builder(BIN)
        .route(&route::any_user("app"))
        .config(r#"cookie_name = "_from_file""#)
        .env("PORTCULLIS_COOKIE_NAME", "_from_env")
        .start()
        .await;
    let b = env.browser();
    let page = b.sign_in(&env.url("app", "/"), "alice").await;
    assert_eq!(page.status(), 200, "{}", env.logs());
    let names: Vec<String> = b
        .cookies(&env.url("app", "/"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(names.iter().any(|n| n == "_from_env"), "{names:?}");
    assert!(!names.iter().any(|n| n == "_from_file"), "{names:?}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let env = TestEnv::builder(BIN)
        .upstream(Upstream::builder().delay(Duration::from_secs(1)))
        .route(&route::public("public"))
        .start()
        .await;
    let url = env.url("public", "/slow");
    let browser = env.browser();
    let upstream = env.upstream;
    let proxy = env.proxy;
    let in_flight = tokio::spawn(async move { browser.get(&url).await.status() });
    // Wait until the request is at the upstream, then ask the proxy to stop.
    for _ in 0..100 {
        if !upstream.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.requests().len(), 1);
    let logs_dir = proxy.dir().to_owned();
    let status = proxy.stop().await;
    assert_eq!(status.code(), Some(0), "{status}");
    let answered = in_flight.await.unwrap();
    assert_eq!(answered, 200, "{logs_dir:?}");
}

#[test]
fn every_shipped_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("PORTCULLIS_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd.args(["check", "--config"]).arg(&path).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            stderr_of(&out)
        );
        checked += 1;
    }
    assert!(checked > 0, "no configuration files in {}", dir.display());
}
