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
