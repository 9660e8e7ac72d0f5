//! What operators see: `/metrics` passes `promtool check metrics`, and failed TLS handshakes
//! are counted and logged at debug only.

use std::io::Write;
use std::process::{Command, Stdio};

use portcullis_harness::{route, write_self_signed, TestEnv};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// `promtool check metrics` on `text`: `Ok(())` when clean, its findings otherwise.
fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool could not be run ({e}): install it with `.ci/deps` \
                 (Debian package `prometheus`)"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test]
async fn metrics_follow_prometheus_naming() {
    let env = TestEnv::builder(BIN)
        .route(&route::public("public"))
        .start()
        .await;
    // A request, so that the labelled series (requests, durations, decisions) are there too.
    let resp = env.browser().get(&env.url("public", "/")).await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    // The request is counted once its response is sent: wait for it.
    let mut text = String::new();
    for _ in 0..50 {
        text = env.proxy.metrics().await;
        if text.contains("portcullis_requests_total{") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(text.contains("portcullis_requests_total{"), "{text}");
    if let Err(findings) = promtool_check(&text) {
        panic!("promtool check metrics:\n{findings}\n--- /metrics ---\n{text}");
    }
}

#[tokio::test]
async fn failed_tls_handshakes_are_counted_and_logged_at_debug() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_self_signed(dir.path(), "app", &["public.localhost"]);
    let env = TestEnv::builder(BIN)
        .tls_certificate(&cert, &key)
        .config(r#"log_level = "debug""#)
        .route(
            r#"from = "https://public.localhost"
to = "{upstream}"
allow_public_unauthenticated_access = true"#,
        )
        .start()
        .await;
    let failures = "portcullis_tls_handshake_failures_total";
    // The harness's readiness probe (a bare TCP connection) may already count as one.
    let Some(before) = env.proxy.metric(failures).await else {
        panic!("{failures} not exported: {}", env.proxy.metrics().await);
    };

    // Plain HTTP on the TLS port: the handshake fails.
    for _ in 0..3 {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", env.port))
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: public.localhost\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tcp.read_to_end(&mut sink),
        )
        .await;
    }
    let mut counted = None;
    for _ in 0..50 {
        counted = env.proxy.metric(failures).await;
        if counted.is_some_and(|n| n >= before + 3.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // At least the three (the harness's probe may be counted late).
    let Some(counted) = counted.filter(|n| *n >= before + 3.0) else {
        panic!("{failures} = {counted:?}, before: {before}\n{}", env.logs());
    };

    // Log lines are written by a background thread: wait for them as well.
    let handshake_errors = |logs: &[serde_json::Value]| -> Vec<serde_json::Value> {
        logs.iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("handshake error"))
            })
            .cloned()
            .collect()
    };
    let mut logs = env.proxy.json_logs();
    for _ in 0..50 {
        if handshake_errors(&logs).len() as f64 >= counted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        logs = env.proxy.json_logs();
    }
    let handshake_lines = handshake_errors(&logs);
    assert_eq!(handshake_lines.len() as f64, counted, "{}", env.logs());
    for line in handshake_lines {
        assert_eq!(line["level"], "DEBUG", "{line}");
        assert_eq!(line["target"], "portcullis::tls", "{line}");
    }
    assert!(
        !logs.iter().any(|l| l["level"] == "ERROR"),
        "no ERROR line: {}",
        env.logs()
    );

    // The listener still serves TLS.
    let resp = env.browser().get(&env.url("public", "/")).await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
}
