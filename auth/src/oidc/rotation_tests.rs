//! Signing-key rotation against a small IdP on 127.0.0.1 that serves discovery and a JWKS it can
//! change, and counts what it serves: ID tokens signed by a key the provider does not know make
//! it fetch the JWKS again, at most once per interval; discovery runs again once it is old.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::*;
use crate::jwt::{AssertionSigner, IdentityClaims};
use crate::Secret;

const CLIENT_ID: &str = "portcullis";

/// The IdP: discovery at the usual path, the JWKS at `/jwks`.
struct TestIdp {
    issuer: String,
    jwks: Mutex<String>,
    /// Every answer is a 503 while set.
    down: AtomicUsize,
    discoveries: AtomicUsize,
    jwks_fetches: AtomicUsize,
}

impl TestIdp {
    async fn start(key: &AssertionSigner) -> Arc<TestIdp> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idp = Arc::new(TestIdp {
            issuer: format!("http://{}", listener.local_addr().unwrap()),
            jwks: Mutex::new(key.jwks_json().to_owned()),
            down: AtomicUsize::new(0),
            discoveries: AtomicUsize::new(0),
            jwks_fetches: AtomicUsize::new(0),
        });
        let serving = idp.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let idp = serving.clone();
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let answer = idp.answer(req.uri().path());
                    async move { Ok::<_, Infallible>(answer) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        idp
    }

    fn answer(&self, path: &str) -> hyper::Response<Full<Bytes>> {
        let body = if self.down.load(Ordering::SeqCst) != 0 {
            None
        } else if path == "/.well-known/openid-configuration" {
            self.discoveries.fetch_add(1, Ordering::SeqCst);
            let i = &self.issuer;
            Some(
                serde_json::json!({
                    "issuer": i,
                    "authorization_endpoint": format!("{i}/auth"),
                    "token_endpoint": format!("{i}/token"),
                    "jwks_uri": format!("{i}/jwks"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["ES256"],
                })
                .to_string(),
            )
        } else if path == "/jwks" {
            self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            Some(self.jwks.lock().unwrap().clone())
        } else {
            None
        };
        let (status, body) = match body {
            Some(body) => (200, body),
            None => (503, String::new()),
        };
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    /// From now on the JWKS holds `key` only.
    fn publish(&self, key: &AssertionSigner) {
        *self.jwks.lock().unwrap() = key.jwks_json().to_owned();
    }

    fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    fn discoveries(&self) -> usize {
        self.discoveries.load(Ordering::SeqCst)
    }

    /// An ID token for `u1`, from this issuer to [`CLIENT_ID`], signed by `key` (with its `kid`).
    fn id_token(&self, key: &AssertionSigner) -> CoreIdToken {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let jwt = key
            .sign(&IdentityClaims {
                iss: self.issuer.clone(),
                aud: CLIENT_ID.to_owned(),
                sub: "u1".to_owned(),
                user: "u1".to_owned(),
                email: "u1@example.com".to_owned(),
                groups: Vec::new(),
                name: "U One".to_owned(),
                sid: "s1".to_owned(),
                iat: now,
                exp: now + 300,
                jti: "id-token-1".to_owned(),
            })
            .unwrap();
        jwt.parse().unwrap()
    }
}

fn key(n: u8) -> AssertionSigner {
    AssertionSigner::derive(&Secret::from_bytes([n; 32])).unwrap()
}

async fn provider(idp: &TestIdp) -> OidcProvider {
    OidcProvider::discover(OidcConfig {
        issuer_url: idp.issuer.clone(),
        client_id: CLIENT_ID.to_owned(),
        client_secret: "secret".to_owned(),
        redirect_url: "http://127.0.0.1:1/oauth2/callback".to_owned(),
        scopes: Vec::new(),
    })
    .await
    .unwrap()
}

/// Verifies `token` as an exchange or refresh does; the subject on success.
async fn verify(p: &OidcProvider, token: &CoreIdToken) -> Result<String, AuthError> {
    let d = p.current().await;
    let (claims, _) = p
        .verify_id_token(d, token, |_: Option<&Nonce>| Ok(()))
        .await?;
    Ok(claims.subject().as_str().to_owned())
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_then_known() {
    let (old, new) = (key(1), key(2));
    assert_ne!(old.kid(), new.kid());
    let idp = TestIdp::start(&old).await;
    let p = provider(&idp).await;
    assert_eq!((idp.discoveries(), idp.jwks_fetches()), (1, 1));
    assert_eq!(verify(&p, &idp.id_token(&old)).await.unwrap(), "u1");
    assert_eq!(idp.jwks_fetches(), 1);

    // The IdP rotates: the new key only.
    idp.publish(&new);
    assert_eq!(verify(&p, &idp.id_token(&new)).await.unwrap(), "u1");
    assert_eq!(idp.jwks_fetches(), 2);
    assert_eq!(verify(&p, &idp.id_token(&new)).await.unwrap(), "u1");
    assert_eq!(idp.jwks_fetches(), 2);

    // The old key is gone with it; asking again so soon is not allowed.
    let e = verify(&p, &idp.id_token(&old)).await.unwrap_err();
    assert!(matches!(e, AuthError::InvalidIdToken(_)), "{e:?}");
    assert_eq!(idp.jwks_fetches(), 2);
    assert_eq!(idp.discoveries(), 1);
}

#[tokio::test]
async fn unknown_keys_refetch_the_jwks_at_most_once_per_interval() {
    let (known, unknown) = (key(1), key(2));
    let idp = TestIdp::start(&known).await;
    let p = provider(&idp).await;
    assert_eq!(idp.jwks_fetches(), 1);

    // Two tokens by a key the IdP does not publish, within the interval: one fetch.
    for _ in 0..2 {
        let e = verify(&p, &idp.id_token(&unknown)).await.unwrap_err();
        assert!(matches!(e, AuthError::InvalidIdToken(_)), "{e:?}");
    }
    assert_eq!(idp.jwks_fetches(), 2);

    // Even once the IdP publishes it, the interval holds.
    idp.publish(&unknown);
    assert!(verify(&p, &idp.id_token(&unknown)).await.is_err());
    assert_eq!(idp.jwks_fetches(), 2);
    // Tokens by the known key are not held up meanwhile (they verify with the keys in hand).
    assert_eq!(verify(&p, &idp.id_token(&known)).await.unwrap(), "u1");
}

#[tokio::test]
async fn after_the_interval_an_unknown_key_is_looked_up_again() {
    let (known, unknown) = (key(1), key(2));
    let idp = TestIdp::start(&known).await;
    let p = provider(&idp)
        .await
        .with_jwks_refetch_interval(Duration::from_millis(300));
    assert!(verify(&p, &idp.id_token(&unknown)).await.is_err());
    assert_eq!(idp.jwks_fetches(), 2);
    idp.publish(&unknown);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(verify(&p, &idp.id_token(&unknown)).await.unwrap(), "u1");
    assert_eq!(idp.jwks_fetches(), 3);
}

#[tokio::test]
async fn concurrent_key_misses_share_one_fetch() {
    let (old, new) = (key(1), key(2));
    let idp = TestIdp::start(&old).await;
    let p = provider(&idp).await;
    idp.publish(&new);
    let tokens: Vec<CoreIdToken> = (0..8).map(|_| idp.id_token(&new)).collect();
    let results = futures::future::join_all(tokens.iter().map(|t| verify(&p, t))).await;
    for r in results {
        assert_eq!(r.unwrap(), "u1");
    }
    assert_eq!(idp.jwks_fetches(), 2);
}

#[tokio::test]
async fn discovery_runs_again_once_old_and_survives_a_failure() {
    let (old, new) = (key(1), key(2));
    let idp = TestIdp::start(&old).await;
    let p = provider(&idp)
        .await
        .with_discovery_max_age(Duration::from_millis(300));
    p.current().await;
    assert_eq!((idp.discoveries(), idp.jwks_fetches()), (1, 1));

    // Once old, the next use runs discovery again, which brings the current JWKS.
    idp.publish(&new);
    tokio::time::sleep(Duration::from_millis(400)).await;
    p.current().await;
    assert_eq!((idp.discoveries(), idp.jwks_fetches()), (2, 2));
    assert_eq!(verify(&p, &idp.id_token(&new)).await.unwrap(), "u1");
    assert_eq!(idp.jwks_fetches(), 2);

    // An IdP that is down: the metadata and keys in hand stay in use, and the failed attempt
    // is not repeated on every use.
    idp.down.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(verify(&p, &idp.id_token(&new)).await.unwrap(), "u1");
    assert_eq!(verify(&p, &idp.id_token(&new)).await.unwrap(), "u1");
    assert_eq!(idp.discoveries(), 2);
    idp.down.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    p.current().await;
    assert_eq!(idp.discoveries(), 3);
}
