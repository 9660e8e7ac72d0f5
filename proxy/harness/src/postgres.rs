//! [`TestDb`]: a PostgreSQL database of a test's own on 127.0.0.1:5432, dropped afterwards.

use std::process::Command;

/// A database of its own, dropped with its connections at the end (even on panic).
///
/// Needs PostgreSQL on 127.0.0.1:5432 (user `postgres`, trust auth; `.ci/deps` starts it) and
/// `psql`.
pub struct TestDb {
    name: String,
}

// === impl TestDb ===

impl TestDb {
    /// Creates `<prefix>_<random>`.
    pub fn create(prefix: &str) -> Self {
        use rand::RngCore as _;
        let name = format!("{prefix}_{:016x}", rand::thread_rng().next_u64());
        psql(&format!("CREATE DATABASE {name}"));
        Self { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `services = "databroker"` configuration storing in this database, serving gRPC on
    /// 127.0.0.1:`grpc` (metrics on a free port).
    pub fn databroker_config(&self, grpc: u16, shared_secret: &str) -> String {
        format!(
            r#"services = "databroker"
grpc_address = "127.0.0.1:{grpc}"
metrics_address = "127.0.0.1:{metrics}"
databroker_storage_type = "postgres"
databroker_storage_connection_string = "{url}"
authenticate_service_url = "http://authenticate.localhost:1"
shared_secret = "{shared_secret}"
cookie_secret = "{cookie}"
log_format = "json"
"#,
            metrics = crate::free_port(),
            url = self.url(),
            cookie = crate::random_secret(),
        )
    }

    /// `postgres://postgres@127.0.0.1:5432/<name>`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Runs one SQL statement as `postgres` on the `postgres` database; panics on failure.
pub fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-Atc",
            sql,
        ])
        .output()
        .expect("psql (PostgreSQL client; .ci/deps installs it)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
