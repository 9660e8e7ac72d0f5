use portcullis_harness::{route, TestEnv};

#[tokio::test]
async fn smoke_sign_in() {
    let env = TestEnv::builder(env!("CARGO_BIN_EXE_portcullis"))
        .route(&format!(
            "{}\npass_identity_headers = true",
            route::any_user("app")
        ))
        .start()
        .await;
    let b = env.browser();
    let (resp, visited) = b.sign_in_visited(&env.url("app", "/hello"), "alice").await;
    for v in &visited {
        eprintln!("visited {v}");
    }
    let status = resp.status();
    let body = resp.text().await.unwrap();
    eprintln!("{status} {body}");
    eprintln!("{}", env.logs());
    assert_eq!(status, 200);
}
