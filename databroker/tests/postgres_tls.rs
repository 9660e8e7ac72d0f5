//! TLS to PostgreSQL through the connection string's `sslmode` and `sslrootcert`, against
//! servers of the test's own ([`PrivatePostgres`]): one with `ssl = on` and a certificate from
//! a throwaway CA, one without TLS.

use std::path::Path;
use std::process::Command;

use portcullis_databroker::{Error, PgOptions, PgStore, Store};
use portcullis_harness::{PrivatePostgres, TestCa};

/// `SELECT` on the server at `port` (psql, plain TCP); panics on failure.
fn psql_at(port: u16, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable"
        ))
        .args(["-Atc", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether the store's connections (by application name) use TLS, as the server sees them.
fn store_connections_use_tls(port: u16) -> Vec<String> {
    psql_at(
        port,
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'portcullis-databroker'",
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

async fn connect(url: &str) -> Result<PgStore, Error> {
    PgStore::connect(url, PgOptions::default()).await
}

fn url(port: u16, host: &str, params: &str) -> String {
    format!("postgres://postgres@{host}:{port}/postgres?{params}")
}

fn root(path: &Path) -> String {
    format!("sslrootcert={}", path.display())
}

#[tokio::test]
async fn verify_full_connects_only_to_the_server_the_ca_vouches_for_by_name() {
    let ca = TestCa::new("portcullis test PostgreSQL CA");
    let pg = PrivatePostgres::start_with_tls(&ca.server(&["127.0.0.1"]));
    let dir = tempfile::tempdir().unwrap();
    let right = ca.write_cert(dir.path(), "right-ca");
    let wrong = TestCa::new("another CA").write_cert(dir.path(), "wrong-ca");

    // The right CA: connected, over TLS.
    let store = connect(&url(
        pg.port(),
        "127.0.0.1",
        &format!("sslmode=verify-full&{}", root(&right)),
    ))
    .await
    .expect("verify-full with the server's CA");
    store.versions().await.expect("a call over TLS");
    let tls = store_connections_use_tls(pg.port());
    assert!(!tls.is_empty() && tls.iter().all(|s| s == "t"), "{tls:?}");
    drop(store);

    // Another CA: refused, saying why.
    let err = connect(&url(
        pg.port(),
        "127.0.0.1",
        &format!("sslmode=verify-full&{}", root(&wrong)),
    ))
    .await
    .expect_err("a certificate from an unknown CA");
    let text = err.to_string();
    assert!(
        matches!(err, Error::Unavailable(_))
            && text.contains("TLS handshake")
            && text.contains("UnknownIssuer"),
        "{text}"
    );
    // Also in the keyword/value form.
    let keywords = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{}'",
        pg.port(),
        wrong.display()
    );
    let err = connect(&keywords)
        .await
        .expect_err("unknown CA")
        .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn verify_ca_checks_the_chain_and_verify_full_the_name_too() {
    let ca = TestCa::new("portcullis test PostgreSQL CA");
    // The certificate names another host than the one connected to.
    let pg = PrivatePostgres::start_with_tls(&ca.server(&["db.example"]));
    let dir = tempfile::tempdir().unwrap();
    let right = ca.write_cert(dir.path(), "ca");
    let wrong = TestCa::new("another CA").write_cert(dir.path(), "wrong-ca");

    let err = connect(&url(
        pg.port(),
        "127.0.0.1",
        &format!("sslmode=verify-full&{}", root(&right)),
    ))
    .await
    .expect_err("the certificate does not name 127.0.0.1")
    .to_string();
    assert!(
        err.contains("certificate not valid for name \"127.0.0.1\""),
        "{err}"
    );

    let store = connect(&url(
        pg.port(),
        "127.0.0.1",
        &format!("sslmode=verify-ca&{}", root(&right)),
    ))
    .await
    .expect("verify-ca does not check the name");
    store.versions().await.unwrap();
    drop(store);
    let err = connect(&url(
        pg.port(),
        "127.0.0.1",
        &format!("sslmode=verify-ca&{}", root(&wrong)),
    ))
    .await
    .expect_err("verify-ca still checks the chain")
    .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // As in libpq, require with a root file checks the chain like verify-ca.
    let err = connect(&url(
        pg.port(),
        "127.0.0.1",
        &format!("sslmode=require&{}", root(&wrong)),
    ))
    .await
    .expect_err("require with sslrootcert checks the chain")
    .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn require_encrypts_without_verifying_and_fails_against_a_server_without_tls() {
    let ca = TestCa::new("a CA nobody trusts");
    let tls_server = PrivatePostgres::start_with_tls(&ca.server(&["db.example"]));
    let store = connect(&url(tls_server.port(), "127.0.0.1", "sslmode=require"))
        .await
        .expect("require takes any certificate");
    store.versions().await.unwrap();
    let tls = store_connections_use_tls(tls_server.port());
    assert!(!tls.is_empty() && tls.iter().all(|s| s == "t"), "{tls:?}");
    drop(store);
    // Without sslmode, TLS is used when offered (libpq's `prefer`).
    let store = connect(&tls_server.url()).await.expect("prefer");
    store.versions().await.unwrap();
    let tls = store_connections_use_tls(tls_server.port());
    assert!(!tls.is_empty() && tls.iter().all(|s| s == "t"), "{tls:?}");
    drop(store);

    let plain = PrivatePostgres::start();
    let err = connect(&url(plain.port(), "127.0.0.1", "sslmode=require"))
        .await
        .expect_err("require against a server without TLS")
        .to_string();
    assert!(err.contains("server does not support TLS"), "{err}");
    // prefer and disable connect in the clear.
    for params in ["sslmode=prefer", "sslmode=disable"] {
        let store = connect(&url(plain.port(), "127.0.0.1", params))
            .await
            .expect(params);
        store.versions().await.unwrap();
    }
    let err = connect(&url(plain.port(), "127.0.0.1", "sslmode=allow"))
        .await
        .expect_err("allow is not supported");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}
