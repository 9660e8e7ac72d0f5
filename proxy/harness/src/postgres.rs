//! PostgreSQL for tests: [`TestDb`], a database of a test's own on the shared server at
//! 127.0.0.1:5432, and [`PrivatePostgres`], a whole server of a test's own that the test may
//! stop and start again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

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
        crate::databroker_config(grpc, shared_secret, Some(&self.url()))
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

/// A PostgreSQL server of a test's own, for tests that stop and restart the database (the
/// shared server on 5432 serves every other test at the same time).
///
/// [`PrivatePostgres::start`] runs `initdb` (trust authentication, superuser `postgres`) in a
/// fresh temporary directory and starts the server on a free 127.0.0.1 port, with its unix
/// socket inside that directory. [`PrivatePostgres::stop`] (`pg_ctl -m fast`) and
/// [`PrivatePostgres::restart`] take it down and bring it back on the same port with the same
/// data. Dropping it stops the server and removes the directory.
///
/// Needs the PostgreSQL server programs: `initdb` and `pg_ctl` on `PATH` or in
/// `/usr/lib/postgresql/<version>/bin` (Debian's `postgresql` package; `.ci/deps` installs
/// it). PostgreSQL refuses to run as root, so as root the programs run as the OS user
/// `postgres` (through `runuser`, or `su` without it), which the package creates. Every
/// failure is a panic naming what is missing: a test that needs this never passes without it.
pub struct PrivatePostgres {
    /// The temporary directory: `data/` (the cluster), the socket and `postgres.log`.
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    port: u16,
    /// Run the programs as the OS user `postgres` (we are root).
    as_postgres: bool,
    running: std::sync::atomic::AtomicBool,
}

// === impl PrivatePostgres ===

impl PrivatePostgres {
    /// The OS user the server runs as when the tests run as root.
    pub const OS_USER: &'static str = "postgres";

    /// Creates a cluster and starts it; panics (with the command's output) when it cannot.
    pub fn start() -> Self {
        let bin = server_bin_dir().unwrap_or_else(|| {
            panic!(
                "PrivatePostgres: initdb and pg_ctl not found on PATH or in \
                 /usr/lib/postgresql/*/bin; install the PostgreSQL server (.ci/deps does)"
            )
        });
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("portcullis-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("PrivatePostgres: temp dir: {e}"));
        if as_postgres {
            // Fails with a clear message when the user does not exist.
            let out = Command::new("chown")
                .arg(format!("{0}:{0}", Self::OS_USER))
                .arg(dir.path())
                .output()
                .unwrap_or_else(|e| panic!("PrivatePostgres: run chown: {e}"));
            assert!(
                out.status.success(),
                "PrivatePostgres: running as root, and PostgreSQL refuses to; cannot hand the \
                 data directory to the OS user {:?} (install the postgresql package, which \
                 creates it): {}",
                Self::OS_USER,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let pg = Self {
            dir: Some(dir),
            bin,
            port: crate::free_port(),
            as_postgres,
            running: Default::default(),
        };
        let data = pg.data_dir();
        pg.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        pg.restart();
        pg
    }

    /// The port on 127.0.0.1 (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: the server's default database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A `services = "databroker"` configuration storing in [`PrivatePostgres::url`], serving
    /// gRPC on 127.0.0.1:`grpc` (metrics on a free port).
    pub fn databroker_config(&self, grpc: u16, shared_secret: &str) -> String {
        crate::databroker_config(grpc, shared_secret, Some(&self.url()))
    }

    /// Whether the server was last started (and not stopped since).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// `pg_ctl stop -m fast`: every connection is closed at once, the data stays. Waits until
    /// the server has exited.
    pub fn stop(&self) {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "30".as_ref(),
            ],
        );
        self.running.store(false, Ordering::Release);
    }

    /// Starts the (stopped) server again on the same port; returns once it accepts
    /// connections.
    pub fn restart(&self) {
        let data = self.data_dir();
        let log = self.dir_path().join("postgres.log");
        // Only loopback TCP, and the socket in our directory (not /var/run/postgresql, which
        // the shared server uses). fsync is off: the test restarts the server, not the machine,
        // and a fast shutdown writes everything out anyway.
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=100",
            self.port,
            self.dir_path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "30".as_ref(),
            ],
        );
        self.running.store(true, Ordering::Release);
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir_path().join("postgres.log")).unwrap_or_default()
    }

    fn dir_path(&self) -> &Path {
        match &self.dir {
            Some(dir) => dir.path(),
            None => Path::new("/nonexistent"),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir_path().join("data")
    }

    /// Runs one of the server programs (as `postgres` when we are root); panics on failure.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let output = self.command(program, args).output();
        let out = output.unwrap_or_else(|e| panic!("PrivatePostgres: run {program}: {e}"));
        assert!(
            out.status.success(),
            "PrivatePostgres: {program} {args:?} failed ({}):\n{}{}\n--- server log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    fn command(&self, program: &str, args: &[&std::ffi::OsStr]) -> Command {
        let program = self.bin.join(program);
        let mut cmd = if !self.as_postgres {
            let mut cmd = Command::new(&program);
            cmd.args(args);
            cmd
        } else if which("runuser").is_some() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", Self::OS_USER, "--"])
                .arg(&program)
                .args(args);
            cmd
        } else {
            // su runs a shell command line: quote every word.
            let line = std::iter::once(program.as_os_str())
                .chain(args.iter().copied())
                .map(|a| shell_quote(&a.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(" ");
            let mut cmd = Command::new("su");
            cmd.args([Self::OS_USER, "-s", "/bin/sh", "-c"]).arg(line);
            cmd
        };
        // Not the shared server's settings, nor a home directory `postgres` cannot read.
        cmd.env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .env("LC_ALL", "C")
            .current_dir(self.dir_path())
            .stdin(std::process::Stdio::null());
        cmd
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.is_running() {
            let data = self.data_dir();
            let _ = self
                .command(
                    "pg_ctl",
                    &[
                        "stop".as_ref(),
                        "-D".as_ref(),
                        data.as_os_str(),
                        "-m".as_ref(),
                        "immediate".as_ref(),
                        "-w".as_ref(),
                    ],
                )
                .output();
        }
        // TempDir's own drop removes the directory (we own it, or are root).
        drop(self.dir.take());
    }
}

impl std::fmt::Debug for PrivatePostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivatePostgres")
            .field("port", &self.port)
            .field("dir", &self.dir_path())
            .field("running", &self.is_running())
            .finish()
    }
}

/// A directory holding both `initdb` and `pg_ctl`: the one on `PATH` first, then the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian keeps the server programs off `PATH`).
fn server_bin_dir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = which("initdb").and_then(|p| p.parent().map(Path::to_owned)) {
        if has_both(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// `program`'s path on `PATH`, if any.
fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Whether this process runs as root (`id -u` says 0).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psql_at(port: u16, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-d", "postgres", "-Atc", sql])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    #[test]
    fn a_private_server_stops_and_starts_again_with_its_data() {
        let pg = PrivatePostgres::start();
        let dir = pg.dir_path().to_owned();
        psql_at(
            pg.port(),
            "CREATE TABLE kept (v INT); INSERT INTO kept VALUES (42)",
        )
        .unwrap();
        pg.stop();
        assert!(!pg.is_running());
        assert!(psql_at(pg.port(), "SELECT 1").is_err(), "stopped");
        pg.restart();
        assert_eq!(psql_at(pg.port(), "SELECT v FROM kept").unwrap(), "42");
        drop(pg);
        assert!(!dir.exists(), "the directory is removed");
    }
}
