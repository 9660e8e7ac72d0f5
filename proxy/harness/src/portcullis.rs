//! The `portcullis` binary under test, run as a child process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Configures a [`Portcullis`] before it starts.
#[must_use]
pub struct PortcullisBuilder {
    binary: PathBuf,
    config: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
    wrapper: Vec<String>,
}

/// A running `portcullis --config FILE`; killed when dropped, stopped gracefully by
/// [`Portcullis::stop`].
pub struct Portcullis {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    metrics_address: SocketAddr,
}

// === impl PortcullisBuilder ===

impl PortcullisBuilder {
    /// The configuration file's text. It must set `metrics_address` (readiness is polled at
    /// `http://<metrics_address>/readyz`).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = toml.to_owned();
        self
    }

    /// An environment variable for the child, e.g. `("PORTCULLIS_SHARED_SECRET", "...")`.
    /// Other `PORTCULLIS_*` variables of the test process are not passed on.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Extra command-line arguments, placed before `--config FILE`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Runs the binary under another program: `program args… binary --config FILE` (the bench
    /// runs the proxy under valgrind's callgrind this way to count its instructions).
    pub fn wrapped_in(mut self, program_and_args: &[impl AsRef<str>]) -> Self {
        self.wrapper = program_and_args
            .iter()
            .map(|a| a.as_ref().to_owned())
            .collect();
        self
    }

    /// Spawns the binary and waits (30 s at most) until `/readyz` on the metrics address
    /// answers 200. On failure the error holds the exit status, if any, and every log line.
    pub async fn start(self) -> Result<Portcullis, String> {
        let metrics_address = metrics_address(&self.config)?;
        let dir = tempfile::Builder::new()
            .prefix("portcullis-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        // The config gets a directory of its own: the reload watcher follows the config's
        // directory, and the logs written beside it would wake the watcher on every line.
        let config_dir = dir.path().join("config");
        std::fs::create_dir(&config_dir).map_err(|e| format!("config dir: {e}"))?;
        let config_path = config_dir.join("portcullis.toml");
        std::fs::write(&config_path, &self.config).map_err(|e| format!("write config: {e}"))?;
        let stdout =
            std::fs::File::create(dir.path().join("stdout.log")).map_err(|e| e.to_string())?;
        let stderr =
            std::fs::File::create(dir.path().join("stderr.log")).map_err(|e| e.to_string())?;

        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = command(Path::new(program), &self.env);
                cmd.args(args).arg(&self.binary);
                cmd
            }
            None => command(&self.binary, &self.env),
        };
        cmd.args(&self.args)
            .arg("--config")
            .arg(&config_path)
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.binary.display()))?;
        let mut proxy = Portcullis {
            child: Some(child),
            dir,
            config_path,
            metrics_address,
        };
        proxy.wait_ready().await?;
        Ok(proxy)
    }

    /// [`PortcullisBuilder::start`], panicking with the error (and so the logs) on failure.
    pub async fn start_or_panic(self) -> Portcullis {
        match self.start().await {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }
}

fn command(binary: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        if key
            .to_str()
            .is_some_and(|k| k.to_ascii_uppercase().starts_with("PORTCULLIS_"))
        {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    cmd
}

fn metrics_address(config: &str) -> Result<SocketAddr, String> {
    let table: toml::Table =
        toml::from_str(config).map_err(|e| format!("harness: the config is not TOML: {e}"))?;
    let value = table
        .get("metrics_address")
        .and_then(|v| v.as_str())
        .ok_or("harness: the config must set metrics_address (readiness is polled there)")?;
    value
        .parse()
        .map_err(|e| format!("harness: metrics_address {value:?}: {e}"))
}

// === impl Portcullis ===

impl Portcullis {
    /// Starts `binary --config FILE` with `config_toml`; see [`PortcullisBuilder::start`].
    pub async fn start(binary: &Path, config_toml: &str) -> Result<Portcullis, String> {
        Portcullis::builder(binary)
            .config(config_toml)
            .start()
            .await
    }

    pub fn builder(binary: impl AsRef<Path>) -> PortcullisBuilder {
        PortcullisBuilder {
            binary: binary.as_ref().to_owned(),
            config: String::new(),
            env: Vec::new(),
            args: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// Runs `binary check --config FILE` to completion.
    pub fn check(binary: &Path, config_toml: &str) -> Output {
        Portcullis::run(binary, &["check"], config_toml)
    }

    /// Runs `binary ARGS... --config FILE` to completion (60 s at most), e.g. to see a start-up
    /// failure's exit code 2. `PORTCULLIS_*` variables of the test process are not passed on.
    pub fn run(binary: &Path, args: &[&str], config_toml: &str) -> Output {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-check-")
            .tempdir()
            .expect("temp dir");
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, config_toml).expect("write config");
        let mut cmd = std::process::Command::new(binary);
        for (key, _) in std::env::vars_os() {
            if key
                .to_str()
                .is_some_and(|k| k.to_ascii_uppercase().starts_with("PORTCULLIS_"))
            {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("wait for portcullis")
    }

    /// `portcullis sessions seed --count COUNT` with `config_toml`: the cookie values it wrote,
    /// one a session, in order; or what went wrong, with the command's stderr.
    pub fn seed_sessions(
        binary: &Path,
        config_toml: &str,
        count: usize,
    ) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let cookies_path = dir.path().join("cookies.txt");
        let out = Portcullis::run(
            binary,
            &[
                "sessions",
                "seed",
                "--count",
                &count.to_string(),
                "--out",
                &cookies_path.display().to_string(),
            ],
            config_toml,
        );
        if !out.status.success() {
            return Err(format!(
                "portcullis sessions seed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let cookies: Vec<String> = std::fs::read_to_string(&cookies_path)
            .map_err(|e| format!("the seeded cookies: {e}"))?
            .lines()
            .map(str::to_owned)
            .collect();
        if cookies.len() != count {
            return Err(format!("{} cookies for {count} sessions", cookies.len()));
        }
        Ok(cookies)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        let url = format!("{}/readyz", self.metrics_url());
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last: String;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "portcullis exited before ready ({status})\n--- logs ---\n{}",
                        self.logs()
                    ));
                }
            }
            match client.get(&url).send().await {
                Ok(resp) if resp.status() == 200 => return Ok(()),
                Ok(resp) => last = format!("{url} answered {}", resp.status()),
                Err(e) => last = format!("{url}: {e}"),
            }
            if Instant::now() > deadline {
                if let Some(child) = self.child.as_mut() {
                    let _ = child.start_kill();
                }
                return Err(format!(
                    "portcullis not ready within {READY_TIMEOUT:?} ({last})\n--- logs ---\n{}",
                    self.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// stdout then stderr of the process so far.
    pub fn logs(&self) -> String {
        let out = std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default();
        let err = std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        format!("{out}{err}")
    }

    /// The log lines that parse as JSON objects (`log_format = "json"`).
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(serde_json::Value::is_object)
            .collect()
    }

    /// The configuration file the process was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The directory holding the config and the logs (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics_address
    }

    /// `http://<metrics_address>`
    pub fn metrics_url(&self) -> String {
        format!("http://{}", self.metrics_address)
    }

    /// The Prometheus text at `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!("{}/metrics", self.metrics_url()))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET /metrics: {e}\n--- logs ---\n{}", self.logs()))
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of the unlabelled metric `name` at `/metrics` (see [`crate::metric`]).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        crate::metric(&self.metrics().await, name)
    }

    /// The process id, while it runs (with a wrapper: the wrapper's, which for valgrind is the
    /// program's own).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends `signal` (a name for kill(1): `"TERM"`, `"INT"`, `"HUP"`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Whether the process has exited, and how.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then waits for the exit (30 s at most; then SIGKILL).
    pub async fn stop(mut self) -> ExitStatus {
        self.stop_in_place().await
    }

    pub(crate) async fn stop_in_place(&mut self) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("portcullis is running");
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(status) => status.expect("wait for portcullis"),
            Err(_) => {
                let _ = child.kill().await;
                child.wait().await.expect("wait for portcullis")
            }
        }
    }
}

impl std::fmt::Debug for Portcullis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portcullis")
            .field("pid", &self.pid())
            .field("metrics_address", &self.metrics_address)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_address_is_read_from_the_config() {
        let cfg = "address = \"127.0.0.1:1\"\nmetrics_address = \"127.0.0.1:9090\"\n[[routes]]\nfrom = \"http://a.localhost\"\n";
        assert_eq!(
            metrics_address(cfg).unwrap(),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert!(metrics_address("address = \"x\"").is_err());
        assert!(metrics_address("not toml [").is_err());
    }

    #[tokio::test]
    async fn a_process_that_exits_reports_its_logs() {
        // `sh` stands in for the binary: it ignores the arguments and exits at once.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-portcullis");
        std::fs::write(&fake, "#!/bin/sh\necho 'bad config: emial' >&2\nexit 2\n").unwrap();
        std::process::Command::new("chmod")
            .args(["+x"])
            .arg(&fake)
            .status()
            .unwrap();
        let err = Portcullis::start(&fake, "metrics_address = \"127.0.0.1:1\"\n")
            .await
            .unwrap_err();
        assert!(err.contains("exited before ready"), "{err}");
        assert!(err.contains("bad config: emial"), "{err}");

        let out = Portcullis::check(&fake, "x = 1");
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("emial"));
    }
}
