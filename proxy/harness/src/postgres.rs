//! PostgreSQL for tests: [`TestDb`], a database of a test's own on the shared server at
//! 127.0.0.1:5432, and [`PrivatePostgres`], a whole server of a test's own that the test may
//! stop, freeze (SIGSTOP) and start again, optionally serving TLS.

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
/// data; [`PrivatePostgres::pause`] freezes every process of the server (SIGSTOP), so that it
/// accepts TCP connections (the kernel does) but never answers, until
/// [`PrivatePostgres::resume`]. [`PrivatePostgres::start_with_tls`] serves TLS (`ssl = on`)
/// with a given certificate. Dropping it resumes a paused server, stops it and removes the
/// directory, also when the test panicked.
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
    /// Serve TLS with `server.crt`/`server.key` in `dir`.
    tls: bool,
    running: std::sync::atomic::AtomicBool,
    /// The processes [`PrivatePostgres::pause`] stopped, to continue.
    paused: std::sync::Mutex<Vec<u32>>,
}

// === impl PrivatePostgres ===

impl PrivatePostgres {
    /// The OS user the server runs as when the tests run as root.
    pub const OS_USER: &'static str = "postgres";

    /// Creates a cluster and starts it; panics (with the command's output) when it cannot.
    pub fn start() -> Self {
        Self::create(None)
    }

    /// Like [`PrivatePostgres::start`], with `ssl = on` and `server` as the server's
    /// certificate and key (clients may still connect without TLS).
    pub fn start_with_tls(server: &crate::Issued) -> Self {
        Self::create(Some(server))
    }

    fn create(tls: Option<&crate::Issued>) -> Self {
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
            tls: tls.is_some(),
            running: Default::default(),
            paused: Default::default(),
        };
        if let Some(server) = tls {
            // The server refuses a key that others can read, or that is not its user's.
            let (cert, key) = server.write(pg.dir_path(), "server");
            for file in [&cert, &key] {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
                    .unwrap_or_else(|e| panic!("PrivatePostgres: chmod {}: {e}", file.display()));
                if as_postgres {
                    let out = Command::new("chown")
                        .arg(format!("{0}:{0}", Self::OS_USER))
                        .arg(file)
                        .output()
                        .unwrap_or_else(|e| panic!("PrivatePostgres: run chown: {e}"));
                    assert!(
                        out.status.success(),
                        "PrivatePostgres: chown {}",
                        file.display()
                    );
                }
            }
        }
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
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=100",
            self.port,
            self.dir_path().display()
        );
        if self.tls {
            let dir = self.dir_path().display();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={dir}/server.pem -c ssl_key_file={dir}/server.key"
            ));
        }
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

    /// Freezes the server: SIGSTOP to the postmaster first (so it forks no new backend), then
    /// to every process it started. Connections stay open and new ones are accepted by the
    /// kernel, but nothing answers until [`PrivatePostgres::resume`] (or the drop).
    pub fn pause(&self) {
        let postmaster = self.postmaster_pid();
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        kill("STOP", &[postmaster]);
        paused.push(postmaster);
        let children = children_of(postmaster);
        kill("STOP", &children);
        paused.extend(children);
    }

    /// SIGCONT to every process [`PrivatePostgres::pause`] stopped.
    pub fn resume(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        kill("CONT", &paused);
        paused.clear();
    }

    /// The postmaster's pid: the first line of `postmaster.pid` in the data directory.
    pub fn postmaster_pid(&self) -> u32 {
        let file = self.data_dir().join("postmaster.pid");
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("PrivatePostgres: no pid in {}", file.display()))
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
        // A stopped process would ignore the shutdown below (and outlive the test).
        self.resume();
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

/// Sends `signal` (a name for kill(1)) to `pids`; a process already gone is no error.
fn kill(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(std::process::Stdio::null())
        .status();
}

/// The processes whose parent is `parent` (from `/proc/<pid>/stat`).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn psql_at(port: u16, sql: &str) -> Result<String, String> {
        psql_with(
            &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
            sql,
        )
    }

    /// psql on the connection string `conninfo`, giving up connecting after 2 s.
    fn psql_with(conninfo: &str, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .arg(conninfo)
            .args(["-Atc", sql])
            .env("PGCONNECT_TIMEOUT", "2")
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

    #[test]
    fn a_paused_server_answers_nothing_until_resumed_and_a_paused_one_is_dropped_cleanly() {
        let pg = PrivatePostgres::start();
        assert_eq!(psql_at(pg.port(), "SELECT 1").unwrap(), "1");
        pg.pause();
        let t0 = std::time::Instant::now();
        let frozen = psql_at(pg.port(), "SELECT 1");
        assert!(frozen.is_err(), "answered while paused: {frozen:?}");
        assert!(
            t0.elapsed() >= Duration::from_secs(1),
            "gave up on its own timeout"
        );
        pg.resume();
        assert_eq!(psql_at(pg.port(), "SELECT 1").unwrap(), "1");
        pg.pause();
        let postmaster = pg.postmaster_pid();
        drop(pg);
        // Gone, or a zombie nobody reaped yet.
        let state = std::fs::read_to_string(format!("/proc/{postmaster}/stat"))
            .ok()
            .and_then(|s| Some(s[s.rfind(')')? + 1..].split_whitespace().next()?.to_owned()));
        assert!(
            state.is_none() || state.as_deref() == Some("Z"),
            "the paused server was stopped: {state:?}"
        );
    }

    #[test]
    fn a_tls_server_serves_its_certificate() {
        let ca = crate::TestCa::new("pg test CA");
        let pg = PrivatePostgres::start_with_tls(&ca.server(&["localhost", "127.0.0.1"]));
        let base = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            pg.port()
        );
        assert_eq!(
            psql_with(&format!("{base} sslmode=require"), "SHOW ssl").unwrap(),
            "on"
        );
        assert_eq!(
            psql_with(
                &format!("{base} sslmode=require"),
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            .unwrap(),
            "t"
        );
        let plain = PrivatePostgres::start();
        let refused = psql_with(
            &format!(
                "host=127.0.0.1 port={} user=postgres sslmode=require",
                plain.port()
            ),
            "SELECT 1",
        );
        assert!(refused.is_err(), "{refused:?}");
    }
}
