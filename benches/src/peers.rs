//! The processes under test: Portcullis (a `databroker` process and a `proxy` process, seeded
//! through `portcullis sessions seed`), nginx as a plain reverse proxy, and Apache httpd with
//! mod_auth_openidc. Each writes its configuration into a temp dir, listens on 127.0.0.1 on an
//! ephemeral port, and is stopped when its handle is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use portcullis_harness::{free_port, random_secret, Browser, Idp, IdpOptions, Portcullis};
use tokio::process::{Child, Command};

use crate::tls::BenchCert;

/// The route hosts of the Portcullis configuration.
pub const APP_HOST: &str = "app.localhost";
pub const PUBLIC_HOST: &str = "public.localhost";

/// Portcullis split in two processes, with its seeded cookies.
pub struct PortcullisUnderTest {
    pub proxy: Portcullis,
    pub _databroker: Portcullis,
    pub port: u16,
    /// The proxy's configuration file, to start it again ([`PortcullisUnderTest::restart_proxy`]).
    pub config: String,
    /// Cookie values of seeded users in group `users` (allowed by the route's policy).
    pub allowed: Vec<String>,
    /// Cookie values of seeded users not in `users` (denied).
    pub denied: Vec<String>,
}

/// A peer server run as a child process tree (nginx, pingora-floor or Apache).
pub struct PeerProcess {
    pub port: u16,
    /// The HTTPS listener's port, when the peer has one.
    pub tls_port: Option<u16>,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Apache with mod_auth_openidc, signed in once.
pub struct ApacheUnderTest {
    pub server: PeerProcess,
    /// `Cookie` header value of the signed-in browser.
    pub cookie: String,
    pub _idp: Idp,
}

// === Portcullis ===

/// A second proxy process on the same databroker, its listener on TLS (the HTTPS scenarios),
/// with cookies seeded for its own host.
pub struct TlsProxy {
    pub proxy: Portcullis,
    pub port: u16,
    /// Cookie values of seeded users in group `users`, sealed for this proxy's host.
    pub allowed: Vec<String>,
}

/// What the proxy configurations of one run share.
struct ProxySetup<'a> {
    grpc: u16,
    shared_secret: &'a str,
    cookie_secret: &'a str,
    upstream: &'a str,
}

impl PortcullisUnderTest {
    /// Starts both processes and seeds `sessions`. A non-empty `proxy_wrapper` runs the proxy
    /// under that program (`--instructions`: callgrind). With `tls`, a second proxy
    /// ([`TlsProxy`]) serves that certificate.
    pub async fn start(
        binary: &Path,
        upstream: &str,
        sessions: usize,
        proxy_wrapper: &[String],
        tls: Option<&BenchCert>,
    ) -> Result<(Self, Option<TlsProxy>), String> {
        let shared_secret = random_secret();
        let cookie_secret = random_secret();
        let grpc = free_port();
        let databroker = Portcullis::builder(binary)
            .config(&format!(
                r#"services = "databroker"
grpc_address = "127.0.0.1:{grpc}"
metrics_address = "127.0.0.1:{metrics}"
authenticate_service_url = "http://authenticate.localhost:1"
shared_secret = "{shared_secret}"
cookie_secret = "{cookie_secret}"
log_level = "warn"
"#,
                metrics = free_port(),
            ))
            .start()
            .await
            .map_err(|e| format!("databroker: {e}"))?;
        let setup = ProxySetup {
            grpc,
            shared_secret: &shared_secret,
            cookie_secret: &cookie_secret,
            upstream,
        };

        let port = free_port();
        let config = setup.config(port, None);
        let proxy = Portcullis::builder(binary)
            .config(&config)
            .wrapped_in(proxy_wrapper)
            .start()
            .await
            .map_err(|e| format!("proxy: {e}"))?;
        let (allowed, denied) = seed(binary, &config, sessions)?;

        let tls = match tls {
            None => None,
            Some(cert) => {
                let port = free_port();
                let config = setup.config(port, Some(cert));
                let proxy = Portcullis::builder(binary)
                    .config(&config)
                    .start()
                    .await
                    .map_err(|e| format!("TLS proxy: {e}"))?;
                let (allowed, _) = seed(binary, &config, sessions)?;
                Some(TlsProxy {
                    proxy,
                    port,
                    allowed,
                })
            }
        };
        let under_test = Self {
            proxy,
            _databroker: databroker,
            port,
            config,
            allowed,
            denied,
        };
        Ok((under_test, tls))
    }

    /// Stops the proxy process and starts a fresh one (an empty session cache) with the same
    /// configuration, from `binary`; returns once it reports ready (`/readyz`), with the time
    /// from its spawn to then.
    pub async fn restart_proxy(&mut self, binary: &Path) -> Result<Duration, String> {
        self.proxy.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.proxy.try_wait().is_none() {
            if Instant::now() > deadline {
                return Err("the proxy did not stop within 30 s of SIGTERM".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let spawned = Instant::now();
        self.proxy = Portcullis::builder(binary)
            .config(&self.config)
            .start()
            .await
            .map_err(|e| format!("proxy restart: {e}"))?;
        Ok(spawned.elapsed())
    }

    /// ES256 signatures so far: (all of them, those a request waited for), from
    /// `portcullis_identity_jwt_signatures_total` and
    /// `portcullis_identity_jwt_request_path_signatures_total`.
    pub async fn signatures(&self) -> Option<Signatures> {
        let text = self.proxy.metrics().await;
        let read = |name: &str| {
            text.lines()
                .find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ')))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .map(|v| v as u64)
        };
        Some(Signatures {
            total: read("portcullis_identity_jwt_signatures_total")?,
            on_request_path: read("portcullis_identity_jwt_request_path_signatures_total")?,
        })
    }
}

impl ProxySetup<'_> {
    /// A proxy's configuration: listening on 127.0.0.1:`port`, plain HTTP, or TLS with `cert`
    /// (then the routes are `https://`).
    fn config(&self, port: u16, cert: Option<&BenchCert>) -> String {
        let Self {
            grpc,
            shared_secret,
            cookie_secret,
            upstream,
        } = self;
        let (scheme, listener) = match cert {
            None => (
                "http",
                "insecure_server = true\ncookie_secure = false".to_owned(),
            ),
            Some(c) => (
                "https",
                format!(
                    "certificate_file = \"{}\"\ncertificate_key_file = \"{}\"",
                    c.cert_file.display(),
                    c.key_file.display()
                ),
            ),
        };
        // The IdP is never contacted: sessions are seeded, and a sign-in redirect only names
        // the authenticate host. A closed loopback port keeps it that way.
        format!(
            r#"services = "proxy"
databroker_service_url = "http://127.0.0.1:{grpc}"
{listener}
address = "127.0.0.1:{port}"
metrics_address = "127.0.0.1:{metrics}"
authenticate_service_url = "{scheme}://authenticate.localhost:{port}"
shared_secret = "{shared_secret}"
cookie_secret = "{cookie_secret}"
idp_provider_url = "http://127.0.0.1:9"
idp_client_id = "bench"
idp_client_secret = "bench"
jwt_claims_headers = {{ "X-Email" = "email", "X-Groups" = "groups" }}
log_level = "info"
log_format = "json"

# `--memory`: the same users and policy without identity headers.
[[routes]]
from = "{scheme}://{APP_HOST}:{port}"
prefix = "/plain/"
to = "{upstream}"
policy = [
  {{ allow = {{ and = [ {{ domain = {{ is = "example.com" }} }}, {{ groups = {{ has = "users" }} }} ] }} }},
]
{authorized}
[[routes]]
from = "{scheme}://{PUBLIC_HOST}:{port}"
to = "{upstream}"
allow_public_unauthenticated_access = true
"#,
            metrics = free_port(),
            authorized = portcullis_harness::route::three_criteria_table(
                &format!("{scheme}://{APP_HOST}:{port}"),
                upstream,
                "users"
            ),
        )
    }
}

/// Seeds `sessions` through the supported command, with the proxy's own configuration, for
/// its first route's host; returns the cookie values of (allowed, denied) users.
fn seed(
    binary: &Path,
    config: &str,
    sessions: usize,
) -> Result<(Vec<String>, Vec<String>), String> {
    let cookies = Portcullis::seed_sessions(binary, config, sessions)?;
    let (mut allowed, mut denied) = (Vec::new(), Vec::new());
    // `sessions seed` leaves every tenth user out of group `users`.
    for (i, cookie) in cookies.into_iter().enumerate() {
        if i % 10 == 9 {
            denied.push(cookie);
        } else {
            allowed.push(cookie);
        }
    }
    if allowed.is_empty() || denied.is_empty() {
        return Err(format!(
            "seeded {sessions} sessions; need at least 10 for both allowed and denied users"
        ));
    }
    Ok((allowed, denied))
}

/// ES256 signature counts of the proxy.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Signatures {
    pub total: u64,
    /// Signed while a request waited (the rest were renewed in the background).
    pub on_request_path: u64,
}

impl Signatures {
    /// What was signed between `self` and `later`.
    pub fn until(self, later: Signatures) -> Signatures {
        Signatures {
            total: later.total.saturating_sub(self.total),
            on_request_path: later.on_request_path.saturating_sub(self.on_request_path),
        }
    }
}

// === peers ===

/// `Some(path)` of an executable found in the usual places.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
async fn wait_listening(
    port: u16,
    child: &mut Child,
    what: &str,
    logs: &Path,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited at start ({status}):\n{}",
                std::fs::read_to_string(logs).unwrap_or_default()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what} not listening on 127.0.0.1:{port} after 20 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl PeerProcess {
    /// nginx as a plain reverse proxy: `workers` worker processes, keep-alive to the upstream.
    /// With `tls`, a second server on another port serves that certificate as Portcullis does:
    /// TLS 1.2 and 1.3, OpenSSL's defaults otherwise (its cipher suites and groups, two TLS 1.3
    /// session tickets after each handshake, no session cache), and no limit on the requests
    /// of a kept-alive connection (nginx's default, 1,000, would add a handshake every 1,000
    /// requests, which Portcullis does not).
    pub async fn nginx(
        upstream: std::net::SocketAddr,
        workers: usize,
        tls: Option<&BenchCert>,
    ) -> Result<PeerProcess, String> {
        let Some(nginx) = which("nginx") else {
            return Err(
                "nginx is not installed (Debian/Ubuntu: sudo apt-get install nginx)".into(),
            );
        };
        let dir = tempfile::Builder::new()
            .prefix("bench-nginx-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let d = dir.path().display().to_string();
        let port = free_port();
        let tls_port = tls.map(|_| free_port());
        let location = r#"location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
        }"#;
        let tls_server = match (tls, tls_port) {
            (Some(cert), Some(tls_port)) => format!(
                r#"server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_requests 100000000;
        {location}
    }}"#,
                cert = cert.cert_file.display(),
                key = cert.key_file.display(),
            ),
            _ => String::new(),
        };
        let conf = format!(
            r#"worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream bench_upstream {{
        server {upstream};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        {location}
    }}
    {tls_server}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let mut command = Command::new(nginx);
        command.arg("-p").arg(dir.path()).arg("-c").arg(&conf_path);
        PeerProcess::spawn(command, "nginx", port, tls_port, dir).await
    }

    /// Runs `command` (its stderr to a log in `dir`), then waits until it listens on `port`
    /// and `tls_port`.
    async fn spawn(
        mut command: Command,
        what: &str,
        port: u16,
        tls_port: Option<u16>,
        dir: tempfile::TempDir,
    ) -> Result<PeerProcess, String> {
        let log = dir.path().join("stderr.log");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {what}: {e}"))?;
        wait_listening(port, &mut child, what, &log).await?;
        if let Some(tls_port) = tls_port {
            wait_listening(tls_port, &mut child, what, &log).await?;
        }
        Ok(PeerProcess {
            port,
            tls_port,
            child,
            _dir: dir,
        })
    }

    /// `pingora-floor` (built beside this binary): Pingora with only an `upstream_peer` hook,
    /// `threads` worker threads; run under `wrapper` when it is not empty (callgrind). With
    /// `tls`, a second listener serves that certificate through Pingora's rustls acceptor.
    pub async fn pingora_floor(
        upstream: std::net::SocketAddr,
        threads: usize,
        wrapper: &[String],
        tls: Option<&BenchCert>,
    ) -> Result<PeerProcess, String> {
        let binary = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("pingora-floor");
        if !binary.is_file() {
            return Err(format!(
                "{} is not built (cargo build --release -p portcullis-bench --bins)",
                binary.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("bench-pingora-floor-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let port = free_port();
        let tls_port = tls.map(|_| free_port());
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--upstream")
            .arg(upstream.to_string())
            .arg("--threads")
            .arg(threads.to_string());
        if let (Some(cert), Some(tls_port)) = (tls, tls_port) {
            command
                .arg("--tls-listen")
                .arg(format!("127.0.0.1:{tls_port}"))
                .arg("--cert")
                .arg(&cert.cert_file)
                .arg("--key")
                .arg(&cert.key_file);
        }
        PeerProcess::spawn(command, "pingora-floor", port, tls_port, dir).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM to the master process (by its pid; it stops its workers), then waits for it.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

// === Apache + mod_auth_openidc ===

const APACHE_MODULES: &str = "/usr/lib/apache2/modules";

impl ApacheUnderTest {
    /// Apache httpd (event MPM, `processes` child processes) with mod_auth_openidc in front
    /// of `upstream`, against the test IdP; then signs in once as `alice` and keeps the cookie.
    pub async fn start(upstream: std::net::SocketAddr, processes: usize) -> Result<Self, String> {
        let Some(apache) = which("apache2") else {
            return Err(
                "Apache is not installed (Debian/Ubuntu: sudo apt-get install apache2 libapache2-mod-auth-openidc)"
                    .into(),
            );
        };
        if !Path::new(APACHE_MODULES)
            .join("mod_auth_openidc.so")
            .is_file()
        {
            return Err("mod_auth_openidc is not installed (Debian/Ubuntu: sudo apt-get install libapache2-mod-auth-openidc)".into());
        }
        if which("node").is_none() {
            return Err("node is not installed; the test IdP needs it (see the README)".into());
        }
        let port = free_port();
        let origin = format!("http://{APP_HOST}:{port}");
        let redirect = format!("{origin}/oauth2/callback");
        let idp = Idp::start(IdpOptions {
            client_id: "apache-bench".into(),
            redirect_uris: vec![redirect.clone()],
            post_logout_redirect_uris: vec![origin.clone()],
            ..IdpOptions::default()
        })
        .await;

        let dir = tempfile::Builder::new()
            .prefix("bench-apache-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        // Apache drops to www-data: let it read the config and write its logs here.
        let _ = std::process::Command::new("chmod")
            .args(["0755"])
            .arg(dir.path())
            .status();
        let d = dir.path().display().to_string();
        let m = APACHE_MODULES;
        let threads = 64;
        let user = if is_root() {
            "User www-data\nGroup www-data\n"
        } else {
            ""
        };
        let conf = format!(
            r#"ServerRoot "{d}"
ServerName {APP_HOST}
Listen 127.0.0.1:{port}
PidFile {d}/httpd.pid
ErrorLog {d}/error.log
LogLevel warn
{user}
# Debian builds some of these in (unixd, log_config): load only what is not there yet.
<IfModule !mpm_event_module>
  LoadModule mpm_event_module {m}/mod_mpm_event.so
</IfModule>
<IfModule !unixd_module>
  LoadModule unixd_module {m}/mod_unixd.so
</IfModule>
<IfModule !authn_core_module>
  LoadModule authn_core_module {m}/mod_authn_core.so
</IfModule>
<IfModule !authz_core_module>
  LoadModule authz_core_module {m}/mod_authz_core.so
</IfModule>
<IfModule !authz_user_module>
  LoadModule authz_user_module {m}/mod_authz_user.so
</IfModule>
<IfModule !log_config_module>
  LoadModule log_config_module {m}/mod_log_config.so
</IfModule>
<IfModule !headers_module>
  LoadModule headers_module {m}/mod_headers.so
</IfModule>
<IfModule !proxy_module>
  LoadModule proxy_module {m}/mod_proxy.so
</IfModule>
<IfModule !proxy_http_module>
  LoadModule proxy_http_module {m}/mod_proxy_http.so
</IfModule>
<IfModule !auth_openidc_module>
  LoadModule auth_openidc_module {m}/mod_auth_openidc.so
</IfModule>

# Same worker processes as Portcullis's threads and nginx's workers; Apache's threads block,
# so each process has {threads}.
StartServers {processes}
ServerLimit {processes}
MinSpareThreads {threads}
MaxSpareThreads {max_threads}
ThreadsPerChild {threads}
ThreadLimit {threads}
MaxRequestWorkers {max_threads}
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 30

LogFormat "%h %l %u %t \"%r\" %>s %b" common
CustomLog {d}/access.log common

OIDCProviderMetadataURL {issuer}/.well-known/openid-configuration
OIDCClientID {client_id}
OIDCClientSecret {client_secret}
OIDCRedirectURI {redirect}
OIDCCryptoPassphrase {passphrase}
OIDCScope "openid email profile"
OIDCPKCEMethod S256
OIDCSessionInactivityTimeout 86400
OIDCSessionMaxDuration 86400
OIDCPassClaimsAs headers
OIDCStateMaxNumberOfCookies 5 true

<Location />
    AuthType openid-connect
    Require valid-user
</Location>
ProxyPass /oauth2/callback !
ProxyPass / http://{upstream}/ keepalive=On
ProxyPassReverse / http://{upstream}/
"#,
            max_threads = threads * processes,
            issuer = idp.issuer(),
            client_id = idp.client_id(),
            client_secret = idp.client_secret(),
            passphrase = random_secret(),
        );
        let conf_path = dir.path().join("httpd.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let log = dir.path().join("stderr.log");
        let mut child = Command::new(&apache)
            .arg("-f")
            .arg(&conf_path)
            .arg("-DFOREGROUND")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn apache2: {e}"))?;
        wait_listening(port, &mut child, "apache2", &log).await?;
        let server = PeerProcess {
            port,
            tls_port: None,
            child,
            _dir: dir,
        };

        // Sign in once, as the tests do, and keep the session cookie(s).
        let browser = Browser::new(&[APP_HOST], port).with_idp(idp.issuer());
        let page = browser.sign_in(&format!("{origin}/"), "alice").await;
        if page.status() != 200 {
            let errors =
                std::fs::read_to_string(server._dir.path().join("error.log")).unwrap_or_default();
            return Err(format!(
                "sign-in through Apache ended with {}\n--- apache error.log ---\n{errors}",
                page.status()
            ));
        }
        let cookie = browser
            .cookies(&format!("{origin}/"))
            .into_iter()
            .filter(|(name, _)| name.starts_with("mod_auth_openidc_session"))
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        if cookie.is_empty() {
            return Err("signed in through Apache, but no mod_auth_openidc_session cookie".into());
        }
        Ok(Self {
            server,
            cookie,
            _idp: idp,
        })
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
