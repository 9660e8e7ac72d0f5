//! [`ApiClient`]: a client that presents one session cookie by hand, as scripts and the
//! split-deployment tests do (no cookie store, no redirects followed).

use std::net::SocketAddr;
use std::time::Duration;

/// A client without a cookie store that does not follow redirects and reaches the given
/// `*.localhost` names on 127.0.0.1.
#[derive(Clone)]
pub struct ApiClient {
    client: reqwest::Client,
    cookie_name: String,
}

impl ApiClient {
    /// A client for `hosts`, sending session cookies named `cookie_name`.
    pub fn new(hosts: &[&str], cookie_name: &str) -> Self {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64);
        for host in hosts {
            builder = builder.resolve(host, SocketAddr::from((crate::LOOPBACK, 0)));
        }
        Self {
            client: builder.build().expect("client"),
            cookie_name: cookie_name.to_owned(),
        }
    }

    /// The underlying client (for requests without the session cookie).
    pub fn inner(&self) -> &reqwest::Client {
        &self.client
    }

    /// The status of GET `url` with session cookie `cookie`, as an API client asking for JSON
    /// (so no sign-in redirect: 401 without a session); 0 when nothing answered.
    pub async fn status(&self, url: &str, cookie: &str) -> u16 {
        self.client
            .get(url)
            .header("cookie", format!("{}={cookie}", self.cookie_name))
            .header("accept", "application/json")
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// The value of metric `name` at `http://127.0.0.1:{metrics_port}/metrics` (see
    /// [`crate::metric`]); `None` when it is absent or nothing answered.
    pub async fn metric(&self, metrics_port: u16, name: &str) -> Option<f64> {
        let text = self
            .client
            .get(format!("http://{}:{metrics_port}/metrics", crate::LOOPBACK))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        crate::metric(&text, name)
    }

    /// Signs session `cookie` out at `url` (a `/.portcullis/sign_out` URL) with a POST, as a
    /// script does (no `Origin`); panics unless the answer is a redirect (to the IdP's
    /// end-session page) or a success.
    pub async fn sign_out(&self, url: &str, cookie: &str) {
        let answer = self
            .client
            .post(url)
            .header("cookie", format!("{}={cookie}", self.cookie_name))
            .send()
            .await
            .expect("sign-out");
        assert!(
            answer.status().is_redirection() || answer.status().is_success(),
            "sign-out at {url}: {}",
            answer.status()
        );
    }
}
