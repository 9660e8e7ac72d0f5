//! Pomerium's default security headers on proxied responses: `X-Frame-Options` and
//! `X-Content-Type-Options` always, `Strict-Transport-Security` over TLS only; a route's
//! `set_response_headers` wins over them (an empty value removes the header), and both replace
//! what the upstream sent under the same name.

use http::Response;
use portcullis_harness::{write_self_signed, TestEnv, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

const HSTS: &str = "max-age=31536000; includeSubDomains; preload";

/// An upstream that sends its own `X-Frame-Options` on `/framed` and nothing special elsewhere.
fn upstream() -> portcullis_harness::UpstreamBuilder {
    Upstream::builder().respond_with(|req| {
        let mut resp = Response::builder().status(200);
        if req.path() == "/framed" {
            resp = resp.header("x-frame-options", "DENY");
        }
        resp.body(b"ok".to_vec()).unwrap()
    })
}

fn routes(
    scheme: &str,
    builder: portcullis_harness::TestEnvBuilder,
) -> portcullis_harness::TestEnvBuilder {
    builder
        .route(&format!(
            r#"from = "{scheme}://public.localhost"
to = "{{upstream}}"
allow_public_unauthenticated_access = true"#
        ))
        .route(&format!(
            r#"from = "{scheme}://custom.localhost"
to = "{{upstream}}"
allow_public_unauthenticated_access = true
set_response_headers = {{ "X-Frame-Options" = "DENY", "Strict-Transport-Security" = "max-age=60", "X-Content-Type-Options" = "" }}"#
        ))
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn defaults_over_plain_http_without_hsts() {
    let env = routes("http", TestEnv::builder(BIN).upstream(upstream()))
        .start()
        .await;
    let b = env.browser();

    let resp = b.get(&env.url("public", "/")).await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    assert_eq!(header(&resp, "x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(header(&resp, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&resp, "strict-transport-security"), None);

    // The upstream's own value is replaced by the default, as Pomerium does.
    let resp = b.get(&env.url("public", "/framed")).await;
    assert_eq!(
        resp.headers()
            .get_all("x-frame-options")
            .iter()
            .collect::<Vec<_>>(),
        ["SAMEORIGIN"]
    );

    // A route's value wins; an empty one removes the header; over plain HTTP the route may
    // still set HSTS itself.
    let resp = b.get(&env.url("custom", "/")).await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    assert_eq!(header(&resp, "x-frame-options"), Some("DENY"));
    assert_eq!(header(&resp, "x-content-type-options"), None);
    assert_eq!(
        header(&resp, "strict-transport-security"),
        Some("max-age=60")
    );
}

#[tokio::test]
async fn hsts_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_self_signed(
        dir.path(),
        "app",
        &[
            "public.localhost",
            "custom.localhost",
            "authenticate.localhost",
        ],
    );
    let env = routes(
        "https",
        TestEnv::builder(BIN)
            .tls_certificate(&cert, &key)
            .upstream(upstream()),
    )
    .start()
    .await;
    let b = env.browser();

    let resp = b.get(&env.url("public", "/")).await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    assert_eq!(header(&resp, "strict-transport-security"), Some(HSTS));
    assert_eq!(header(&resp, "x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(header(&resp, "x-content-type-options"), Some("nosniff"));

    let resp = b.get(&env.url("custom", "/framed")).await;
    assert_eq!(resp.status(), 200, "{}", env.logs());
    assert_eq!(
        header(&resp, "strict-transport-security"),
        Some("max-age=60")
    );
    assert_eq!(
        resp.headers()
            .get_all("x-frame-options")
            .iter()
            .collect::<Vec<_>>(),
        ["DENY"]
    );
    assert_eq!(header(&resp, "x-content-type-options"), None);
}
