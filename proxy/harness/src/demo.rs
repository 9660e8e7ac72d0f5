//! The local demo behind `cargo run --release -p portcullis-harness --bin portcullis-demo`:
//! the test IdP on 127.0.0.1:9000, a demo upstream on 127.0.0.1:9001 and Portcullis on
//! `config/demo.toml` (127.0.0.1:8000, metrics on 127.0.0.1:9090).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use http::Response;

use crate::{Idp, IdpOptions, Portcullis, RecordedRequest, Upstream};

pub const IDP_PORT: u16 = 9000;
pub const UPSTREAM_PORT: u16 = 9001;
pub const PROXY_PORT: u16 = 8000;
pub const METRICS_PORT: u16 = 9090;
/// Must match `idp_client_id` in `config/demo.toml`.
pub const CLIENT_ID: &str = "portcullis-demo";
/// Must match `idp_client_secret` in `config/demo.toml`. Demo only.
pub const CLIENT_SECRET: &str = "demo-only-client-secret-ItLLHjCdiiclPIQ_w0NPQpzhubLCZ7eB";
/// The route hosts of `config/demo.toml`.
pub const HOSTS: [&str; 3] = ["app.localhost", "admin.localhost", "public.localhost"];
/// The identity JWT header (the contract's default `jwt_assertion_header`).
pub const ASSERTION_HEADER: &str = "x-portcullis-jwt-assertion";

/// `config/demo.toml` in this checkout.
pub fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/demo.toml")
}

/// The IdP options the demo runs with.
pub fn idp_options() -> IdpOptions {
    let authenticate = format!("http://authenticate.localhost:{PROXY_PORT}");
    IdpOptions {
        client_id: CLIENT_ID.to_owned(),
        client_secret: CLIENT_SECRET.to_owned(),
        redirect_uris: vec![format!("{authenticate}/oauth2/callback")],
        post_logout_redirect_uris: HOSTS
            .iter()
            .map(|h| format!("http://{h}:{PROXY_PORT}"))
            .chain([authenticate])
            .collect(),
        port: Some(IDP_PORT),
        ..IdpOptions::default()
    }
}

/// Runs the demo until Ctrl-C.
pub async fn run() -> Result<(), String> {
    let config_path = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(config_path);
    let config_path = config_path.canonicalize().unwrap_or(config_path);
    let config = std::fs::read_to_string(&config_path)
        .map_err(|e| format!("read {}: {e}", config_path.display()))?;
    let binary = portcullis_binary()?;

    println!("starting the demo IdP on http://127.0.0.1:{IDP_PORT} ...");
    let idp = Idp::start(idp_options()).await;
    println!("starting the demo upstream on http://127.0.0.1:{UPSTREAM_PORT} ...");
    let upstream = Upstream::builder()
        .port(UPSTREAM_PORT)
        .respond_with(page)
        .start()
        .await;
    println!(
        "starting {} --config {} ...",
        binary.display(),
        config_path.display()
    );
    let proxy = Portcullis::start(&binary, &config).await?;

    println!(
        r#"
Portcullis demo is running.

  http://app.localhost:{PROXY_PORT}/      any signed-in user; the page shows the identity headers
  http://admin.localhost:{PROXY_PORT}/    members of group "admins" only
  http://public.localhost:{PROXY_PORT}/   public, no sign-in

  Users (any password): alice (groups admins, users), bob (users), carol (contractors);
  any other login signs in as <login>@example.com with no groups.

  Your page:   http://app.localhost:{PROXY_PORT}/.portcullis/
  Sign out:    http://app.localhost:{PROXY_PORT}/.portcullis/sign_out
  Metrics:     http://127.0.0.1:{METRICS_PORT}/metrics
  Proxy logs:  {}
  IdP:         {}

(*.localhost resolves to 127.0.0.1 in current browsers; with curl use --resolve.)
Press Ctrl-C to stop."#,
        proxy.dir().join("stderr.log").display(),
        idp.issuer(),
    );

    // Show the proxy's log lines here as they come.
    let log = proxy.dir().join("stderr.log");
    let out = proxy.dir().join("stdout.log");
    let tail = tokio::spawn(async move {
        let mut seen = [0usize; 2];
        loop {
            for (i, path) in [&out, &log].into_iter().enumerate() {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                // `get` so that a half-written UTF-8 character waits for the next round.
                if let Some(new) = text.get(seen[i]..).filter(|n| !n.is_empty()) {
                    print!("{new}");
                    seen[i] = text.len();
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });

    // Ctrl-C, or SIGTERM from a supervisor: either way, stop the children before leaving.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("listening for SIGTERM: {e}"))?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(|e| format!("waiting for Ctrl-C: {e}"))?,
        _ = term.recv() => {}
    }
    tail.abort();
    println!("\nstopping ...");
    let status = proxy.stop().await;
    drop(upstream);
    drop(idp);
    println!("portcullis exited with {status}; bye.");
    Ok(())
}

/// `$DEMO_PORTCULLIS_BIN` if set, else the `portcullis` binary next to this executable, built
/// with `cargo build [--release] -p portcullis` (this executable's profile) when missing.
fn portcullis_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("DEMO_PORTCULLIS_BIN") {
        return Ok(PathBuf::from(bin));
    }
    crate::sibling_portcullis(false)
}

/// The demo upstream's answer: an HTML page showing the identity and the request.
pub fn page(req: &RecordedRequest) -> Response<Vec<u8>> {
    let identity = req
        .header(ASSERTION_HEADER)
        .and_then(jwt_payload)
        .map(|claims| {
            let get = |k: &str| match &claims[k] {
                serde_json::Value::Null => "—".to_owned(),
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let groups = claims["groups"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            format!(
                "<table>\n<tr><th>email</th><td>{}</td></tr>\n<tr><th>name</th><td>{}</td></tr>\n<tr><th>groups</th><td>{}</td></tr>\n<tr><th>sub</th><td>{}</td></tr>\n<tr><th>audience</th><td>{}</td></tr>\n</table>\n<details><summary>all claims of the identity JWT</summary><pre>{}</pre></details>",
                escape(&get("email")),
                escape(&get("name")),
                escape(&groups),
                escape(&get("sub")),
                escape(&get("aud")),
                escape(&serde_json::to_string_pretty(&claims).unwrap_or_default()),
            )
        })
        .unwrap_or_else(|| {
            "<p>No identity: this route does not pass identity headers (or the request is anonymous).</p>"
                .to_owned()
        });
    let headers: String = req
        .headers
        .iter()
        .map(|(k, v)| {
            format!(
                "<tr><th>{}</th><td><code>{}</code></td></tr>\n",
                escape(k),
                escape(v)
            )
        })
        .collect();
    let html = format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Demo upstream</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; vertical-align: top; padding: .2em .8em .2em 0; border-bottom: 1px solid #ddd; }}
td code {{ word-break: break-all; }}
</style>
</head>
<body>
<h1>Demo upstream</h1>
<p>This page is served by the demo upstream behind Portcullis. Request: <code>{method} {uri}</code></p>
<h2>Who you are</h2>
{identity}
<p><a href="/.portcullis/">Your Portcullis session</a> · <a href="/.portcullis/sign_out">Sign out</a></p>
<h2>Request headers as received</h2>
<table>
{headers}</table>
</body>
</html>
"#,
        method = escape(&req.method),
        uri = escape(&req.uri),
    );
    let mut resp = Response::new(html.into_bytes());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// The claims of a JWT, decoded without verification (for display only).
pub fn jwt_payload(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    html_escape::encode_quoted_attribute(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RecordedRequest {
        RecordedRequest {
            method: "GET".into(),
            uri: "/x?<y>".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
            peer: "127.0.0.1:1".parse().unwrap(),
            version: "HTTP/1.1".into(),
        }
    }

    #[test]
    fn page_shows_identity_and_escapes_headers() {
        let claims = serde_json::json!({
            "email": "alice@example.com", "name": "Alice <Adams>", "groups": ["admins", "users"],
            "sub": "alice", "aud": "app.localhost"
        });
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        let jwt = format!("eyJhbGciOiJFUzI1NiJ9.{payload}.sig");
        let resp = page(&request(&[
            (ASSERTION_HEADER, &jwt),
            ("x-evil", "<script>alert(1)</script>"),
        ]));
        assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
        let html = String::from_utf8(resp.into_body()).unwrap();
        assert!(html.contains("<title>Demo upstream</title>"));
        assert!(html.contains("alice@example.com"));
        assert!(html.contains("Alice &lt;Adams&gt;"));
        assert!(html.contains("admins, users"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("GET /x?&lt;y&gt;"));
    }

    #[test]
    fn page_without_identity() {
        let html = String::from_utf8(page(&request(&[])).into_body()).unwrap();
        assert!(html.contains("No identity"));
        assert!(jwt_payload("not a jwt").is_none());
    }

    /// The demo binary and `config/demo.toml` must agree.
    #[test]
    fn demo_config_matches_the_demo() {
        let text = std::fs::read_to_string(config_path()).unwrap();
        let t: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(t["idp_client_id"].as_str(), Some(CLIENT_ID));
        assert_eq!(t["idp_client_secret"].as_str(), Some(CLIENT_SECRET));
        assert_eq!(
            t["idp_provider_url"].as_str().unwrap(),
            format!("http://127.0.0.1:{IDP_PORT}")
        );
        assert_eq!(
            t["address"].as_str().unwrap(),
            format!("127.0.0.1:{PROXY_PORT}")
        );
        assert_eq!(
            t["metrics_address"].as_str().unwrap(),
            format!("127.0.0.1:{METRICS_PORT}")
        );
        assert_eq!(
            t["authenticate_service_url"].as_str().unwrap(),
            format!("http://authenticate.localhost:{PROXY_PORT}")
        );
        assert_eq!(t["cookie_secure"].as_bool(), Some(false));
        assert_eq!(t["insecure_server"].as_bool(), Some(true));
        let routes = t["routes"].as_array().unwrap();
        let froms: Vec<_> = routes
            .iter()
            .map(|r| r["from"].as_str().unwrap().to_owned())
            .collect();
        let want: Vec<_> = HOSTS
            .iter()
            .map(|h| format!("http://{h}:{PROXY_PORT}"))
            .collect();
        assert_eq!(froms, want);
        for r in routes {
            assert_eq!(
                r["to"].as_str().unwrap(),
                format!("http://127.0.0.1:{UPSTREAM_PORT}")
            );
        }
        for key in ["shared_secret", "cookie_secret"] {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(t[key].as_str().unwrap())
                .unwrap();
            assert_eq!(bytes.len(), 32, "{key}");
        }
    }
}
