//! The OpenID Connect provider: `node idp/server.mjs` (npm `oidc-provider` 9) on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fs4::FileExt;
use tokio::process::{Child, Command};

use crate::free_port;

/// Where `server.mjs`, `package.json` and `package-lock.json` live.
pub(crate) fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("idp")
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How to configure the provider and its one client.
#[derive(Clone, Debug)]
pub struct IdpOptions {
    /// Default `"portcullis"`.
    pub client_id: String,
    /// Default: fresh random, 64 hex digits. (oidc-provider form-url-decodes the credentials of
    /// `client_secret_basic`, as RFC 6749 §2.3.1 says; a hex secret cannot be mangled by a
    /// client that forgets to encode them.)
    pub client_secret: String,
    /// Exact redirect URIs of the client (the proxy's `/oauth2/callback`).
    pub redirect_uris: Vec<String>,
    /// Post-logout redirect URIs; any URI with the origin of one of them is accepted too.
    pub post_logout_redirect_uris: Vec<String>,
    /// Default 3600.
    pub access_token_ttl_secs: u64,
    /// Default 3600.
    pub id_token_ttl_secs: u64,
    /// Default 14 days.
    pub refresh_token_ttl_secs: u64,
    /// Every refresh returns a new refresh token and consumes the old one (reusing a consumed
    /// one revokes the whole grant, as oidc-provider does). Default true; false gives
    /// oidc-provider's default (rotate once 70 % of the refresh token's life has passed).
    pub rotate_refresh_token: bool,
    /// Issue a refresh token even when `offline_access` was not granted. Default false: a
    /// refresh token needs scope `offline_access` *and* `prompt=consent` in the authorization
    /// request (oidc-provider drops `offline_access` without `prompt=consent`).
    pub always_issue_refresh_token: bool,
    /// Names of custom claims the provider releases with scope `profile` (in the ID token and
    /// userinfo), besides `email`, `email_verified`, `name` and `groups`. An account has them
    /// only once [`Idp::set_account`] gives it values. Default none.
    pub extra_claims: Vec<String>,
    /// Fixed port; default a free ephemeral one.
    pub port: Option<u16>,
}

/// A running provider; the node process is killed when this is dropped.
pub struct Idp {
    child: Option<Child>,
    port: u16,
    issuer: String,
    options: IdpOptions,
    dir: tempfile::TempDir,
    starts: u32,
}

// === impl IdpOptions ===

impl Default for IdpOptions {
    fn default() -> Self {
        IdpOptions {
            client_id: "portcullis".to_owned(),
            client_secret: random_hex(32),
            redirect_uris: Vec::new(),
            post_logout_redirect_uris: Vec::new(),
            access_token_ttl_secs: 3600,
            id_token_ttl_secs: 3600,
            refresh_token_ttl_secs: 14 * 24 * 60 * 60,
            rotate_refresh_token: true,
            always_issue_refresh_token: false,
            extra_claims: Vec::new(),
            port: None,
        }
    }
}

// === impl Idp ===

impl Idp {
    /// Installs the node packages on first use (`npm ci`, under a cross-process lock), starts
    /// the provider and waits for it to print `READY`. Panics (with the provider's output) when
    /// it does not come up within 30 s.
    pub async fn start(options: IdpOptions) -> Idp {
        ensure_node_modules().await;
        let port = options.port.unwrap_or_else(free_port);
        let mut idp = Idp {
            child: None,
            port,
            issuer: format!("http://127.0.0.1:{port}"),
            options,
            dir: tempfile::Builder::new()
                .prefix("portcullis-idp-")
                .tempdir()
                .expect("temp dir"),
            starts: 0,
        };
        idp.spawn().await;
        idp
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "IdP already running");
        self.starts += 1;
        let stdout_path = self.dir.path().join(format!("stdout.{}.log", self.starts));
        let stderr_path = self.dir.path().join(format!("stderr.{}.log", self.starts));
        let o = &self.options;
        let mut cmd = Command::new("node");
        cmd.arg("server.mjs")
            .current_dir(idp_dir())
            .env("IDP_PORT", self.port.to_string())
            .env("IDP_ISSUER", &self.issuer)
            .env("IDP_CLIENT_ID", &o.client_id)
            .env("IDP_CLIENT_SECRET", &o.client_secret)
            .env("IDP_REDIRECT_URIS", o.redirect_uris.join(","))
            .env(
                "IDP_POST_LOGOUT_REDIRECT_URIS",
                o.post_logout_redirect_uris.join(","),
            )
            .env("IDP_ACCESS_TOKEN_TTL", o.access_token_ttl_secs.to_string())
            .env("IDP_ID_TOKEN_TTL", o.id_token_ttl_secs.to_string())
            .env(
                "IDP_REFRESH_TOKEN_TTL",
                o.refresh_token_ttl_secs.to_string(),
            )
            .env(
                "IDP_ROTATE_REFRESH_TOKEN",
                if o.rotate_refresh_token { "1" } else { "0" },
            )
            .env(
                "IDP_ALWAYS_ISSUE_REFRESH_TOKEN",
                if o.always_issue_refresh_token {
                    "1"
                } else {
                    "0"
                },
            )
            .env("IDP_EXTRA_CLAIMS", o.extra_claims.join(","))
            .env("IDP_STATE_FILE", self.dir.path().join("state.json"))
            .env("IDP_SIGNING_KEY_FILE", self.signing_key_path())
            // oidc-provider logs via `debug`; keep it quiet unless the caller asked.
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("create IdP stdout log"))
            .stderr(std::fs::File::create(&stderr_path).expect("create IdP stderr log"))
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run `node server.mjs` (is Node.js 20+ installed?): {e}")
        });

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
            if out
                .lines()
                .any(|l| l.trim() == format!("READY {}", self.port))
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "IdP exited before READY ({status}) on port {}\nstdout:\n{out}\nstderr:\n{}",
                    self.port,
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                panic!(
                    "IdP not READY within {READY_TIMEOUT:?} on port {}\nstdout:\n{out}\nstderr:\n{}",
                    self.port,
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
    }

    /// `http://127.0.0.1:PORT`, also the issuer in every token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn client_id(&self) -> &str {
        &self.options.client_id
    }

    pub fn client_secret(&self) -> &str {
        &self.options.client_secret
    }

    pub fn options(&self) -> &IdpOptions {
        &self.options
    }

    /// Whether the node process is running (between [`Idp::stop`] and [`Idp::restart`] it is
    /// not).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Everything the provider printed, across restarts.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for n in 1..=self.starts {
            for stream in ["stdout", "stderr"] {
                let path = self.dir.path().join(format!("{stream}.{n}.log"));
                all.push_str(&std::fs::read_to_string(path).unwrap_or_default());
            }
        }
        all
    }

    /// Stops the provider with SIGTERM (it saves its grants, sessions and tokens first) and
    /// waits for it to exit: its port then refuses connections, as in an outage.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    /// Stops the provider if it runs, then starts it again on the same port with the state it
    /// saved: sessions, grants and refresh tokens survive, signing keys are the same.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// Rotates the ID token signing key, as an IdP does: stops the provider, drops its key and
    /// starts it again on the same port with a new one (a new `kid`; the old key is gone from
    /// its JWKS). Sessions, grants and refresh tokens survive, as with [`Idp::restart`].
    pub async fn rotate_signing_key(&mut self) {
        self.stop().await;
        let path = self.signing_key_path();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove {}: {e}", path.display()),
        }
        self.spawn().await;
    }

    /// The `kid`s of the provider's published signing keys (its `jwks_uri`), in order.
    pub async fn signing_kids(&self) -> Vec<String> {
        let url = format!("{}/jwks", self.issuer);
        let jwks: serde_json::Value = http_client()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"));
        jwks["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Where the provider keeps its private signing key (made on its first start).
    fn signing_key_path(&self) -> PathBuf {
        self.dir.path().join("signing-key.json")
    }

    fn admin_url(&self, path: &str) -> String {
        format!("{}/__admin/{path}", self.issuer)
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut req = http_client().request(method, self.admin_url(path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("IdP admin {path}: {e}"));
        assert!(
            resp.status().is_success(),
            "IdP admin {path}: {}",
            resp.status()
        );
        resp.json().await.expect("IdP admin answer is JSON")
    }

    /// Revokes everything `login` was granted: its grants (so their refresh and access tokens)
    /// and its IdP sessions (so the next sign-in asks for the password again).
    pub async fn revoke(&self, login: &str) -> serde_json::Value {
        self.admin(
            reqwest::Method::POST,
            &format!("revoke?account={}", encode(login)),
            None,
        )
        .await
    }

    /// Overrides `login`'s claims from now on, e.g. `json!({"groups": ["users"]})`; keys
    /// `email`, `email_verified`, `name`, `groups` and the names in
    /// [`IdpOptions::extra_claims`] (any JSON value, e.g. a string, a list or an object).
    pub async fn set_account(&self, login: &str, claims: serde_json::Value) -> serde_json::Value {
        self.admin(
            reqwest::Method::PUT,
            &format!("accounts/{}", encode(login)),
            Some(claims),
        )
        .await
    }

    /// From now on every non-admin request (discovery, token, JWKS, ...) answers `status`.
    pub async fn outage(&self, status: u16) {
        self.admin(
            reqwest::Method::POST,
            &format!("outage?status={status}"),
            None,
        )
        .await;
    }

    /// From now on every non-admin request hangs without an answer.
    pub async fn hang(&self) {
        self.admin(reqwest::Method::POST, "outage?hang=1", None)
            .await;
    }

    /// Ends [`Idp::outage`] / [`Idp::hang`].
    pub async fn end_outage(&self) {
        self.admin(reqwest::Method::DELETE, "outage", None).await;
    }

    /// Counters: `{"token": {"authorization_code": n, "refresh_token": n}, "authorization": n,
    /// "end_session": n, "userinfo": n}` (reset by a restart).
    pub async fn stats(&self) -> serde_json::Value {
        self.admin(reqwest::Method::GET, "stats", None).await
    }

    /// How many successful token-endpoint calls used `grant_type` (e.g. `"refresh_token"`).
    pub async fn token_grants(&self, grant_type: &str) -> u64 {
        self.stats().await["token"][grant_type]
            .as_u64()
            .unwrap_or(0)
    }
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idp")
            .field("issuer", &self.issuer)
            .field("running", &self.child.is_some())
            .finish()
    }
}

/// A client for the provider's own endpoints: loopback, no proxy, 10 s timeout.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore as _;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Runs `npm ci` in `idp/` unless `node_modules` is already there. A lock file serialises
/// concurrent test processes; the check is repeated under the lock.
async fn ensure_node_modules() {
    let dir = idp_dir();
    let installed = || dir.join("node_modules/oidc-provider/package.json").exists();
    if installed() {
        return;
    }
    tokio::task::spawn_blocking(move || {
        let lock_path = dir.join(".npm-ci.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
        FileExt::lock(&lock).unwrap_or_else(|e| panic!("lock {}: {e}", lock_path.display()));
        if !dir.join("node_modules/oidc-provider/package.json").exists() {
            let out = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run `npm ci` (is npm installed?): {e}"));
            assert!(
                out.status.success(),
                "`npm ci` in {} failed ({}):\n{}\n{}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = FileExt::unlock(&lock);
    })
    .await
    .expect("npm ci task");
}
