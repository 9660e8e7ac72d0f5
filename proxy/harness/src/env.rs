//! [`TestEnv`]: upstream + IdP + portcullis wired together in one call.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{
    free_port, random_secret, response, route, Browser, Idp, IdpOptions, Portcullis, Upstream,
    UpstreamBuilder, COOKIE,
};

/// Configures a [`TestEnv`].
#[must_use]
pub struct TestEnvBuilder {
    binary: PathBuf,
    routes: Vec<String>,
    extra: Vec<String>,
    idp_options: IdpOptions,
    upstream: Option<UpstreamBuilder>,
    env: Vec<(String, String)>,
    /// `[[certificates]]` (cert, key) pairs; any at all switches the listener to TLS.
    certificates: Vec<(PathBuf, PathBuf)>,
}

/// A running upstream, IdP and proxy. Dropping it stops all three.
pub struct TestEnv {
    /// The proxy listener's port (`address = "127.0.0.1:PORT"`).
    pub port: u16,
    /// The metrics listener's port.
    pub metrics_port: u16,
    pub upstream: Upstream,
    pub idp: Idp,
    pub proxy: Portcullis,
    binary: PathBuf,
    config: String,
    hosts: Vec<String>,
    shared_secret: String,
    cookie_secret: String,
    /// `"http"`, or `"https"` when the listener serves TLS.
    scheme: &'static str,
    /// The PEM certificates the listener serves, trusted by [`TestEnv::browser`].
    root_pems: Vec<Vec<u8>>,
}

/// Everything the generated configuration is made of.
struct Layout<'a> {
    port: u16,
    metrics_port: u16,
    upstream_url: &'a str,
    issuer: &'a str,
    client_id: &'a str,
    client_secret: &'a str,
    shared_secret: &'a str,
    cookie_secret: &'a str,
}

// === impl TestEnvBuilder ===

impl TestEnvBuilder {
    /// Adds a `[[routes]]` table with this body. Placeholders: `{upstream}` (the upstream's
    /// URL), `{port}` (the proxy port), `{idp}` (the issuer), `{metrics_port}`.
    pub fn route(mut self, body: &str) -> Self {
        self.routes.push(body.to_owned());
        self
    }

    /// Adds top-level keys (placed before the first `[[routes]]`, after the generated keys;
    /// the same placeholders as [`TestEnvBuilder::route`]). A key given here must not repeat a
    /// generated one (see [`TestEnv::config_text`]); to change one of those use
    /// [`TestEnvBuilder::env`] with its `PORTCULLIS_<KEY>` variable.
    pub fn config(mut self, extra: &str) -> Self {
        self.extra.push(extra.to_owned());
        self
    }

    /// Options for the IdP. Empty `redirect_uris` / `post_logout_redirect_uris` are filled in
    /// (the authenticate host's `/oauth2/callback`; every route host and the authenticate
    /// host), non-empty ones are kept. `port` is ignored.
    pub fn idp_options(mut self, options: IdpOptions) -> Self {
        self.idp_options = options;
        self
    }

    /// Configures the upstream (e.g. `Upstream::builder().delay(..)`); `port` is ignored.
    pub fn upstream(mut self, upstream: UpstreamBuilder) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// An environment variable for the proxy process.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the proxy alone (`services = "proxy"`) on the databroker at `url` (its gRPC URL),
    /// with the `shared_secret` that databroker was started with.
    pub fn on_databroker(self, url: &str, shared_secret: &str) -> Self {
        self.config(&format!(
            "services = \"proxy\"\ndatabroker_service_url = \"{url}\""
        ))
        .env("PORTCULLIS_SHARED_SECRET", shared_secret)
    }

    /// Serves TLS on the proxy listener with this PEM certificate chain and key (one
    /// `[[certificates]]` entry; call again for more, chosen by SNI). With any certificate the
    /// generated configuration has `insecure_server = false`, `cookie_secure = true` and an
    /// `https://` authenticate URL, [`TestEnv::url`] gives `https://` URLs, and
    /// [`TestEnv::browser`] trusts these certificates (self-signed ones work as their own root).
    pub fn tls_certificate(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.certificates
            .push((cert.as_ref().to_owned(), key.as_ref().to_owned()));
        self
    }

    fn scheme(&self) -> &'static str {
        if self.certificates.is_empty() {
            "http"
        } else {
            "https"
        }
    }

    /// The configuration this builder would generate, without starting anything (for
    /// `portcullis check` tests). Ports are free ones and the upstream/IdP URLs point at ports
    /// nothing listens on.
    pub fn no_start(self) -> String {
        let secret = random_secret();
        let cookie_secret = random_secret();
        let upstream_url = format!("http://127.0.0.1:{}", free_port());
        let issuer = format!("http://127.0.0.1:{}", free_port());
        self.render(&Layout {
            port: free_port(),
            metrics_port: free_port(),
            upstream_url: &upstream_url,
            issuer: &issuer,
            client_id: &self.idp_options.client_id,
            client_secret: &self.idp_options.client_secret,
            shared_secret: &secret,
            cookie_secret: &cookie_secret,
        })
    }

    /// Starts the upstream, the IdP and the proxy; panics with the proxy's logs if it does not
    /// become ready.
    pub async fn start(self) -> TestEnv {
        match self.try_start().await {
            Ok(env) => env,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`TestEnvBuilder::start`], but a proxy that fails to start is an `Err` with its logs
    /// (the upstream and IdP are stopped again).
    pub async fn try_start(mut self) -> Result<TestEnv, String> {
        let port = free_port();
        let metrics_port = free_port();
        let upstream = self
            .upstream
            .take()
            .unwrap_or_else(Upstream::builder)
            .port(0)
            .start()
            .await;

        let hosts = self.hosts();
        let scheme = self.scheme();
        let authenticate = format!("{scheme}://authenticate.localhost:{port}");
        let mut options = self.idp_options.clone();
        options.port = None;
        if options.redirect_uris.is_empty() {
            options.redirect_uris = vec![format!("{authenticate}/oauth2/callback")];
        }
        if options.post_logout_redirect_uris.is_empty() {
            options.post_logout_redirect_uris = hosts
                .iter()
                .map(|h| format!("{scheme}://{h}:{port}"))
                .chain([authenticate.clone()])
                .collect();
        }
        let idp = Idp::start(options).await;

        let shared_secret = random_secret();
        let cookie_secret = random_secret();
        let config = self.render(&Layout {
            port,
            metrics_port,
            upstream_url: &upstream.url(),
            issuer: idp.issuer(),
            client_id: idp.client_id(),
            client_secret: idp.client_secret(),
            shared_secret: &shared_secret,
            cookie_secret: &cookie_secret,
        });

        let mut proxy = Portcullis::builder(&self.binary).config(&config);
        for (k, v) in &self.env {
            proxy = proxy.env(k, v);
        }
        let proxy = proxy
            .start()
            .await
            .map_err(|e| format!("{e}\n--- config ---\n{config}"))?;

        let mut root_pems = Vec::new();
        for (cert, _) in &self.certificates {
            root_pems.push(
                std::fs::read(cert).map_err(|e| format!("harness: {}: {e}", cert.display()))?,
            );
        }
        let mut all_hosts = vec!["authenticate.localhost".to_owned()];
        all_hosts.extend(hosts);
        Ok(TestEnv {
            port,
            metrics_port,
            upstream,
            idp,
            proxy,
            binary: self.binary,
            config,
            hosts: all_hosts,
            shared_secret,
            cookie_secret,
            scheme,
            root_pems,
        })
    }

    /// The host names of the routes' `from` URLs (wildcards left out).
    fn hosts(&self) -> Vec<String> {
        let mut hosts = Vec::new();
        for route in &self.routes {
            // Placeholders only matter for the port, which the host name does not include.
            let route = route.replace("{port}", "1").replace("{metrics_port}", "1");
            for from in route_froms(&route) {
                if let Ok(url) = url::Url::parse(&from) {
                    if let Some(host) = url.host_str() {
                        if !host.contains('*') && !hosts.iter().any(|h| h == host) {
                            hosts.push(host.to_owned());
                        }
                    }
                }
            }
        }
        hosts
    }

    fn render(&self, l: &Layout<'_>) -> String {
        let fill = |s: &str| {
            s.replace("{upstream}", l.upstream_url)
                .replace("{port}", &l.port.to_string())
                .replace("{metrics_port}", &l.metrics_port.to_string())
                .replace("{idp}", l.issuer)
        };
        let mut out = String::new();
        let _ = writeln!(out, "# generated by portcullis-harness");
        let _ = writeln!(out, "address = \"127.0.0.1:{}\"", l.port);
        let tls = !self.certificates.is_empty();
        let _ = writeln!(out, "insecure_server = {}", !tls);
        let _ = writeln!(
            out,
            "authenticate_service_url = \"{}://authenticate.localhost:{}\"",
            self.scheme(),
            l.port
        );
        let _ = writeln!(out, "shared_secret = \"{}\"", l.shared_secret);
        let _ = writeln!(out, "cookie_secret = \"{}\"", l.cookie_secret);
        let _ = writeln!(out, "idp_provider_url = \"{}\"", l.issuer);
        let _ = writeln!(out, "idp_client_id = {}", toml_string(l.client_id));
        let _ = writeln!(out, "idp_client_secret = {}", toml_string(l.client_secret));
        let _ = writeln!(out, "metrics_address = \"127.0.0.1:{}\"", l.metrics_port);
        let _ = writeln!(out, "log_format = \"json\"");
        let _ = writeln!(out, "cookie_secure = {tls}");
        if tls {
            let pairs: Vec<String> = self
                .certificates
                .iter()
                .map(|(c, k)| {
                    format!(
                        "{{ cert = {}, key = {} }}",
                        toml_string(&c.display().to_string()),
                        toml_string(&k.display().to_string())
                    )
                })
                .collect();
            let _ = writeln!(out, "certificates = [{}]", pairs.join(", "));
        }
        for extra in &self.extra {
            out.push('\n');
            out.push_str(fill(extra).trim_end());
            out.push('\n');
        }
        for route in &self.routes {
            out.push_str("\n[[routes]]\n");
            out.push_str(fill(route).trim_end());
            out.push('\n');
        }
        out
    }
}

/// The `from = "..."` values of a route body.
fn route_froms(route: &str) -> Vec<String> {
    route
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            if key.trim() != "from" {
                return None;
            }
            let value = value.trim();
            let value = value.strip_prefix('"')?;
            Some(value[..value.find('"')?].to_owned())
        })
        .collect()
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

// === impl TestEnv ===

impl TestEnv {
    pub fn builder(binary: impl AsRef<Path>) -> TestEnvBuilder {
        TestEnvBuilder {
            binary: binary.as_ref().to_owned(),
            routes: Vec::new(),
            extra: Vec::new(),
            idp_options: IdpOptions::default(),
            upstream: None,
            env: Vec::new(),
            certificates: Vec::new(),
        }
    }

    /// Three routes, all passing identity headers, with `X-Email` and `X-Groups` copied from
    /// the claims: `app` (any signed-in user), `admin` (group `admins` only) and `public` (no
    /// sign-in).
    pub fn app_admin_public(binary: impl AsRef<Path>) -> TestEnvBuilder {
        TestEnv::builder(binary)
            .config(r#"jwt_claims_headers = { "X-Email" = "email", "X-Groups" = "groups" }"#)
            .route(&format!(
                "{}\npass_identity_headers = true",
                route::any_user("app")
            ))
            .route(
                r#"from = "http://admin.localhost"
to = "{upstream}"
pass_identity_headers = true
policy = [ { allow = { or = [ { groups = { has = "admins" } } ] } } ]"#,
            )
            .route(&format!(
                "{}\npass_identity_headers = true",
                route::public("public")
            ))
    }

    /// `http://HOST.localhost:PORT/PATH` for route host `HOST` (`"app"` or `"app.localhost"`);
    /// `https://` with [`TestEnvBuilder::tls_certificate`].
    pub fn url(&self, host: &str, path: &str) -> String {
        let host = if host.ends_with(".localhost") {
            host.to_owned()
        } else {
            format!("{host}.localhost")
        };
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        format!("{}://{host}:{}{path}", self.scheme, self.port)
    }

    /// `http://authenticate.localhost:PORT` (`https://` with TLS)
    pub fn authenticate_url(&self) -> String {
        format!("{}://authenticate.localhost:{}", self.scheme, self.port)
    }

    /// A fresh browser (empty cookie jar) that reaches every host of this environment and fills
    /// in this IdP's forms.
    pub fn browser(&self) -> Browser {
        let hosts: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        Browser::with_root_certificates(&hosts, self.port, &self.root_pems)
            .with_idp(self.idp.issuer())
    }

    /// The generated configuration file.
    pub fn config_text(&self) -> &str {
        &self.config
    }

    pub fn shared_secret(&self) -> &str {
        &self.shared_secret
    }

    pub fn cookie_secret(&self) -> &str {
        &self.cookie_secret
    }

    /// The portcullis binary in use.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The proxy's logs so far.
    pub fn logs(&self) -> String {
        self.proxy.logs()
    }

    /// Signs `login` in on `host` with a fresh browser; panics (with the proxy's logs) unless
    /// the page behind it answers 200.
    pub async fn signed_in(&self, host: &str, login: &str) -> Browser {
        let b = self.browser();
        let resp = b.sign_in(&self.url(host, "/"), login).await;
        assert_eq!(
            resp.status(),
            200,
            "sign-in as {login} on {host}\n--- logs ---\n{}",
            self.logs()
        );
        b
    }

    /// The session cookie (named [`COOKIE`]) `b` holds for `host`.
    pub fn session_cookie(&self, b: &Browser, host: &str) -> String {
        b.cookie(&self.url(host, "/"), COOKIE)
            .unwrap_or_else(|| panic!("no {COOKIE} cookie for {host}"))
    }

    /// Asserts `resp` sends the browser to the authenticate host's sign-in page.
    pub fn assert_sign_in_redirect(&self, resp: &reqwest::Response, what: &str) {
        assert_eq!(resp.status(), 302, "{what}: expected a sign-in redirect");
        let location = response::location(resp);
        let want = format!("{}/.portcullis/sign_in?", self.authenticate_url());
        assert!(
            location.starts_with(&want),
            "{what}: Location {location} is not the sign-in page"
        );
    }

    /// The generated configuration with the proxy listener on `port` and the metrics listener
    /// on `metrics_port`: a second proxy of the same deployment.
    pub fn config_on_ports(&self, port: u16, metrics_port: u16) -> String {
        self.config
            .replace(
                &format!("address = \"127.0.0.1:{}\"", self.port),
                &format!("address = \"127.0.0.1:{port}\""),
            )
            .replace(
                &format!("metrics_address = \"127.0.0.1:{}\"", self.metrics_port),
                &format!("metrics_address = \"127.0.0.1:{metrics_port}\""),
            )
    }

    /// Rewrites the proxy's configuration file and waits (30 s at most) until the reload
    /// metrics show it was applied (`expect_success`) or rejected.
    pub async fn rewrite_config(&self, text: &str, expect_success: bool) {
        const STAMP: &str = "portcullis_config_last_reload_success_timestamp_seconds";
        let before = self.proxy.metric(STAMP).await;
        // Reload timestamps have one-second resolution: make sure a success is visible as a
        // change.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        std::fs::write(self.proxy.config_path(), text).expect("write config");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let metrics = self.proxy.metrics().await;
            let ok = response::metric(&metrics, "portcullis_config_last_reload_success");
            let stamp = response::metric(&metrics, STAMP);
            if expect_success && ok == Some(1.0) && stamp != before {
                return;
            }
            if !expect_success && ok == Some(0.0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "reload not seen; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("port", &self.port)
            .field("metrics_port", &self.metrics_port)
            .field("upstream", &self.upstream)
            .field("idp", &self.idp)
            .field("proxy", &self.proxy)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> TestEnvBuilder {
        TestEnv::builder("/nonexistent/portcullis")
            .route(
                r#"from = "http://app.localhost"
to = "{upstream}"
allow_any_authenticated_user = true
pass_identity_headers = true"#,
            )
            .route(
                "from = \"http://public.localhost:{port}\"\nto = \"{upstream}\"\nallow_public_unauthenticated_access = true",
            )
            .config(r#"jwt_claims_headers = { "X-Email" = "email" }"#)
    }

    #[test]
    fn generated_config_is_valid_toml_with_keys_before_routes() {
        let text = builder().no_start();
        let table: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(table["insecure_server"].as_bool(), Some(true));
        assert_eq!(table["cookie_secure"].as_bool(), Some(false));
        assert_eq!(table["log_format"].as_str(), Some("json"));
        assert_eq!(table["idp_client_id"].as_str(), Some("portcullis"));
        assert_eq!(
            table["jwt_claims_headers"]["X-Email"].as_str(),
            Some("email")
        );
        let port = table["address"]
            .as_str()
            .unwrap()
            .strip_prefix("127.0.0.1:")
            .unwrap()
            .to_owned();
        assert_eq!(
            table["authenticate_service_url"].as_str().unwrap(),
            format!("http://authenticate.localhost:{port}")
        );
        let routes = table["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 2);
        assert!(routes[0]["to"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"));
        assert_eq!(
            routes[1]["from"].as_str().unwrap(),
            format!("http://public.localhost:{port}")
        );
        assert!(table["metrics_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
        assert_ne!(table["shared_secret"], table["cookie_secret"]);
    }

    #[test]
    fn route_hosts_are_collected() {
        let b = builder().route("from = \"https://*.wild.localhost\"\nto = \"{upstream}\"");
        assert_eq!(b.hosts(), vec!["app.localhost", "public.localhost"]);
    }
}
