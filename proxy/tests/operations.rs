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
    let text = env.proxy.metrics().await;
    assert!(text.contains("portcullis_requests_total{"), "{text}");
    if let Err(findings) = promtool_check(&text) {
        panic!("promtool check metrics:\n{findings}\n--- /metrics ---\n{text}");
    }
}
