//! A scripted browser: reqwest with a cookie jar, redirects followed by hand, and the IdP's
//! HTML forms filled in.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use regex::Regex;
use reqwest::cookie::{CookieStore as _, Jar};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Method, Response};
use url::Url;

use crate::{is_loopback_host, LOOPBACK};

const MAX_STEPS: usize = 20;

/// One cookie jar, many requests. Each [`Browser`] is a fresh user agent.
#[derive(Clone)]
pub struct Browser {
    client: reqwest::Client,
    jar: Arc<Jar>,
    idp_origin: Option<String>,
}

/// An HTML `<form>` as the browser submits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Form {
    /// The `action` attribute, resolved against the page URL.
    pub action: String,
    /// `GET` or `POST` (upper case).
    pub method: String,
    /// Name/value pairs of its `<input>`s (and the first named `<button>`), in order.
    pub fields: Vec<(String, String)>,
}

/// Resolves `localhost` and `*.localhost` to 127.0.0.1 and refuses every other name, so no
/// test can send traffic off this machine by mistake.
struct LocalhostOnly;

// === impl Browser ===

impl Browser {
    /// A browser that reaches `hosts` (and any other `*.localhost` name) on 127.0.0.1. URLs
    /// carry the port themselves (`http://app.localhost:PORT/`); `port` is only what
    /// `reqwest::ClientBuilder::resolve` wants for the override and is otherwise unused.
    pub fn new(hosts: &[&str], port: u16) -> Browser {
        Browser::with_root_certificates(hosts, port, &[])
    }

    /// [`Browser::new`] for `https://` URLs too: `root_pems` (PEM certificates, e.g. the
    /// proxy's self-signed ones) are trusted in addition to the built-in roots.
    pub fn with_root_certificates(hosts: &[&str], port: u16, root_pems: &[Vec<u8>]) -> Browser {
        let jar = Arc::new(Jar::default());
        let mut builder = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .dns_resolver(Arc::new(LocalhostOnly));
        for pem in root_pems {
            let cert = reqwest::Certificate::from_pem(pem).expect("root certificate PEM");
            builder = builder.add_root_certificate(cert);
        }
        for host in hosts {
            assert!(
                is_loopback_host(host),
                "Browser only reaches *.localhost, not {host}"
            );
            builder = builder.resolve(host, SocketAddr::from((LOOPBACK, port)));
        }
        Browser {
            client: builder.build().expect("reqwest client"),
            jar,
            idp_origin: None,
        }
    }

    /// Pages from this origin (the IdP's issuer) get their forms filled in by
    /// [`Browser::sign_in`] and [`Browser::sign_out`]. Without it, any page with a form is
    /// taken for an IdP page.
    #[must_use]
    pub fn with_idp(mut self, issuer: &str) -> Browser {
        self.idp_origin = Some(origin(&Url::parse(issuer).expect("issuer URL")));
        self
    }

    /// The underlying client (with this browser's cookies, no redirects followed) for anything
    /// the helpers do not cover.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The cookie jar.
    pub fn jar(&self) -> &Arc<Jar> {
        &self.jar
    }

    /// One GET, no redirect followed. Panics on a transport error.
    pub async fn get(&self, url: &str) -> Response {
        self.get_with(url, &[]).await
    }

    /// One GET with extra headers, e.g. `&[("accept", "application/json")]`.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Response {
        self.request(Method::GET, url, headers, None).await
    }

    /// One POST of an `application/x-www-form-urlencoded` body.
    pub async fn post_form(&self, url: &str, fields: &[(&str, &str)]) -> Response {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.request(
            Method::POST,
            url,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(body.into_bytes()),
        )
        .await
    }

    /// One request of any method. Panics on a transport error or a non-loopback URL.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Response {
        let parsed = Url::parse(url).unwrap_or_else(|e| panic!("bad URL {url:?}: {e}"));
        assert!(
            parsed.host_str().is_some_and(is_loopback_host),
            "Browser refuses to leave loopback: {url}"
        );
        let mut req = self.client.request(method.clone(), parsed);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"))
    }

    /// GETs `url` and follows up to 20 redirects. Returns the first non-redirect response and
    /// every URL requested, `url` first.
    pub async fn follow(&self, url: &str) -> (Response, Vec<String>) {
        self.follow_with(url, &[]).await
    }

    /// [`Browser::follow`] with extra headers on every request.
    pub async fn follow_with(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (Response, Vec<String>) {
        let mut visited = vec![url.to_owned()];
        let mut resp = self.get_with(url, headers).await;
        for _ in 0..MAX_STEPS {
            let Some(next) = redirect_target(&resp) else {
                return (resp, visited);
            };
            visited.push(next.clone());
            resp = self.get_with(&next, headers).await;
        }
        panic!("more than {MAX_STEPS} redirects: {visited:#?}");
    }

    /// Signs in as `login` (any password): GETs `url`, follows redirects, fills in and submits
    /// the IdP's login and consent forms, and returns the first non-redirect response that is
    /// not an IdP form page (normally the page at `url`, or a 403). An IdP page without a form
    /// (an error page) is returned as it is.
    pub async fn sign_in(&self, url: &str, login: &str) -> Response {
        self.drive(url, Some(login)).await.0
    }

    /// [`Browser::sign_in`], also returning every URL requested.
    pub async fn sign_in_visited(&self, url: &str, login: &str) -> (Response, Vec<String>) {
        self.drive(url, Some(login)).await
    }

    /// Signs out as a person does: GETs `url` (e.g. `/.portcullis/sign_out`), submits the
    /// page's POST form with an `Origin` of the page's origin (as a browser sends it), then
    /// follows redirects, confirming the IdP's logout form; returns the first non-redirect
    /// response that is not an IdP form page. Panics when the page has no POST form.
    pub async fn sign_out(&self, url: &str) -> (Response, Vec<String>) {
        let page = self.get(url).await;
        let status = page.status();
        let page_url = page.url().clone();
        let html = page.text().await.unwrap_or_default();
        let form = forms(&html, &page_url)
            .into_iter()
            .find(|f| f.method == "POST")
            .unwrap_or_else(|| panic!("no sign-out form at {url} ({status}): {html}"));
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&form.fields)
            .finish();
        let resp = self
            .request(
                Method::POST,
                &form.action,
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("origin", &origin(&page_url)),
                ],
                Some(body.into_bytes()),
            )
            .await;
        let visited = vec![url.to_owned(), form.action.clone()];
        self.drive_from(resp, visited, None, &|_| false).await
    }

    /// [`Browser::sign_in_visited`], but stops at the first redirect whose absolute target
    /// `stop` accepts, without requesting it: the returned response is that redirect (its
    /// `Location` is the target) and the target is the last URL in the list. Use it to capture
    /// a one-time link (a handoff, a programmatic login's token) unused, or a redirect to a
    /// port nothing listens on. If no redirect matches, it is the same as `sign_in_visited`.
    pub async fn sign_in_until(
        &self,
        url: &str,
        login: &str,
        stop: impl Fn(&str) -> bool + Sync,
    ) -> (Response, Vec<String>) {
        self.drive_until(url, Some(login), &stop).await
    }

    async fn drive(&self, url: &str, login: Option<&str>) -> (Response, Vec<String>) {
        self.drive_until(url, login, &|_| false).await
    }

    async fn drive_until(
        &self,
        url: &str,
        login: Option<&str>,
        stop: &(dyn Fn(&str) -> bool + Sync),
    ) -> (Response, Vec<String>) {
        let resp = self.get(url).await;
        self.drive_from(resp, vec![url.to_owned()], login, stop)
            .await
    }

    /// [`Browser::drive_until`] from `resp`, the answer to the last URL in `visited`.
    async fn drive_from(
        &self,
        mut resp: Response,
        mut visited: Vec<String>,
        login: Option<&str>,
        stop: &(dyn Fn(&str) -> bool + Sync),
    ) -> (Response, Vec<String>) {
        for _ in 0..MAX_STEPS * 2 {
            if let Some(next) = redirect_target(&resp) {
                let done = stop(&next);
                visited.push(next.clone());
                if done {
                    return (resp, visited);
                }
                resp = self.get(&next).await;
                continue;
            }
            let page_url = resp.url().clone();
            let from_idp = match &self.idp_origin {
                Some(idp) => origin(&page_url) == *idp,
                None => true,
            };
            let is_html = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("text/html"));
            if !from_idp || !is_html {
                return (resp, visited);
            }
            let status = resp.status();
            let headers = resp.headers().clone();
            let html = resp.text().await.unwrap_or_default();
            let Some(mut form) = forms(&html, &page_url).into_iter().next() else {
                return (rebuild(status, headers, page_url, html), visited);
            };
            if let Some(login) = login {
                form.set("login", login);
                form.set("password", "any");
            }
            visited.push(form.action.clone());
            resp = self.submit(&form).await;
        }
        panic!("sign-in did not finish: {visited:#?}");
    }

    /// Submits `form` as a browser would.
    pub async fn submit(&self, form: &Form) -> Response {
        let pairs: Vec<(&str, &str)> = form
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if form.method == "GET" {
            let mut url = Url::parse(&form.action).expect("form action");
            url.query_pairs_mut().clear().extend_pairs(&pairs);
            self.get(url.as_str()).await
        } else {
            self.post_form(&form.action, &pairs).await
        }
    }

    /// The value of cookie `name` that this browser would send to `url`.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        let url = Url::parse(url).expect("cookie URL");
        let header = self.jar.cookies(&url)?;
        header.to_str().ok()?.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
    }

    /// Every cookie this browser would send to `url`, as (name, value).
    pub fn cookies(&self, url: &str) -> Vec<(String, String)> {
        let url = Url::parse(url).expect("cookie URL");
        let Some(header) = self.jar.cookies(&url) else {
            return Vec::new();
        };
        header
            .to_str()
            .unwrap_or("")
            .split(';')
            .filter_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect()
    }

    /// Stores a cookie as if `url` had sent `Set-Cookie: <cookie>`, e.g. `"_portcullis=x"`.
    pub fn set_cookie(&self, url: &str, cookie: &str) {
        let url = Url::parse(url).expect("cookie URL");
        self.jar.add_cookie_str(cookie, &url);
    }
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("idp_origin", &self.idp_origin)
            .finish()
    }
}

/// The absolute URL a 3xx response points to.
fn redirect_target(resp: &Response) -> Option<String> {
    if !resp.status().is_redirection() {
        return None;
    }
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?;
    let next = resp
        .url()
        .join(location)
        .unwrap_or_else(|e| panic!("bad Location {location:?}: {e}"));
    assert!(
        next.host_str().is_some_and(is_loopback_host),
        "redirect off loopback refused: {next}"
    );
    Some(next.into())
}

fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// A page already read to text, turned back into a `Response` for the caller.
fn rebuild(
    status: reqwest::StatusCode,
    headers: http::HeaderMap,
    url: Url,
    body: String,
) -> Response {
    use reqwest::ResponseBuilderExt as _;
    let mut builder = http::Response::builder().status(status).url(url);
    for (k, v) in &headers {
        if k != reqwest::header::CONTENT_LENGTH {
            builder = builder.header(k, v);
        }
    }
    Response::from(builder.body(body).expect("response"))
}

// === impl Form ===

impl Form {
    /// Sets field `name` to `value`, if the form has such a field.
    pub fn set(&mut self, name: &str, value: &str) {
        for (k, v) in &mut self.fields {
            if k == name {
                *v = value.to_owned();
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every `<form>` in `html`, with actions resolved against `page`.
pub(crate) fn forms(html: &str, page: &Url) -> Vec<Form> {
    static FORM: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?is)<form\b([^>]*)>(.*?)</form\s*>").unwrap());
    static INPUT: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?is)<(input|button|textarea|select)\b([^>]*)>").unwrap());
    FORM.captures_iter(html)
        .map(|c| {
            let form_attrs = attributes(&c[1]);
            let attr = |n: &str| {
                form_attrs
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            };
            let action = attr("action").unwrap_or_default();
            let action = page
                .join(&action)
                .unwrap_or_else(|e| panic!("bad form action {action:?}: {e}"))
                .to_string();
            let method = attr("method")
                .unwrap_or_else(|| "GET".into())
                .to_ascii_uppercase();
            let mut fields = Vec::new();
            let mut button_taken = false;
            for i in INPUT.captures_iter(&c[2]) {
                let tag = i[1].to_ascii_lowercase();
                let attrs = attributes(&i[2]);
                let get = |n: &str| attrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                let Some(name) = get("name") else { continue };
                let kind = get("type").unwrap_or_default().to_ascii_lowercase();
                let is_button = tag == "button" || kind == "submit";
                if is_button {
                    if button_taken {
                        continue;
                    }
                    button_taken = true;
                }
                if matches!(kind.as_str(), "checkbox" | "radio")
                    && !attrs.iter().any(|(k, _)| k == "checked")
                {
                    continue;
                }
                fields.push((name, get("value").unwrap_or_default()));
            }
            Form {
                action,
                method,
                fields,
            }
        })
        .collect()
}

/// `name="value"`, `name='value'`, `name=value` and bare `name` attributes, values unescaped.
fn attributes(s: &str) -> Vec<(String, String)> {
    static ATTR: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r#"([A-Za-z_:][-A-Za-z0-9_:.]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?"#,
        )
        .unwrap()
    });
    ATTR.captures_iter(s)
        .map(|c| {
            let value = c
                .get(2)
                .or_else(|| c.get(3))
                .or_else(|| c.get(4))
                .map(|m| unescape(m.as_str()))
                .unwrap_or_default();
            (c[1].to_ascii_lowercase(), value)
        })
        .collect()
}

/// Undoes HTML character references (named ones for the five special characters, numeric ones).
fn unescape(s: &str) -> String {
    static ENTITY: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|amp|lt|gt|quot|apos);").unwrap());
    ENTITY
        .replace_all(s, |c: &regex::Captures<'_>| {
            let e = &c[1];
            let ch = match e {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                    .ok()
                    .and_then(char::from_u32),
                _ => e[1..].parse().ok().and_then(char::from_u32),
            };
            ch.map(String::from).unwrap_or_else(|| c[0].to_owned())
        })
        .into_owned()
}

// === impl LocalhostOnly ===

impl Resolve for LocalhostOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            if is_loopback_host(&host) {
                let addrs: Addrs = Box::new(std::iter::once(SocketAddr::from((LOOPBACK, 0))));
                Ok(addrs)
            } else {
                Err(format!("harness Browser resolves only *.localhost, not {host}").into())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_devinteractions_login_form() {
        // As oidc-provider 9.13 renders it.
        let html = r#"<div class="container"><h1>Sign-in</h1>
<form autocomplete="off" action="/interaction/abc_DEF-1" method="post">
  <input type="hidden" name="prompt" value="login"/>
  <input required type="text" name="login" placeholder="Enter any login" autofocus="on">
  <input required type="password" name="password" placeholder="and password" >

  <button type="submit" class="login login-submit">Sign-in</button>
</form></div>"#;
        let page = Url::parse("http://127.0.0.1:9000/interaction/abc_DEF-1").unwrap();
        let forms = forms(html, &page);
        assert_eq!(forms.len(), 1);
        let mut f = forms[0].clone();
        assert_eq!(f.action, "http://127.0.0.1:9000/interaction/abc_DEF-1");
        assert_eq!(f.method, "POST");
        f.set("login", "alice");
        f.set("password", "any");
        assert_eq!(
            f.fields,
            vec![
                ("prompt".into(), "login".into()),
                ("login".into(), "alice".into()),
                ("password".into(), "any".into())
            ]
        );
    }

    #[test]
    fn parses_the_logout_form_and_unescapes() {
        let html = r#"<form id="op.logoutForm" method="post" action="http://127.0.0.1:9000/session/end/confirm?a=1&amp;b=2"><input type="hidden" name="xsrf" value="x&#39;y"/><input type="hidden" name="logout" value="yes"/></form>
<button autofocus type="submit" form="op.logoutForm">Yes</button>"#;
        let page = Url::parse("http://127.0.0.1:9000/session/end").unwrap();
        let f = &forms(html, &page)[0];
        assert_eq!(
            f.action,
            "http://127.0.0.1:9000/session/end/confirm?a=1&b=2"
        );
        assert_eq!(f.get("xsrf"), Some("x'y"));
        assert_eq!(f.get("logout"), Some("yes"));
    }

    #[test]
    fn unchecked_boxes_and_second_buttons_are_left_out() {
        let html = r#"<form action="go"><input type="checkbox" name="a" value="1"><input type="checkbox" name="b" value="2" checked><button name="x" value="1">1</button><button name="y" value="2">2</button></form>"#;
        let page = Url::parse("http://a.localhost:1/dir/page").unwrap();
        let f = &forms(html, &page)[0];
        assert_eq!(f.action, "http://a.localhost:1/dir/go");
        assert_eq!(f.method, "GET");
        assert_eq!(
            f.fields,
            vec![("b".into(), "2".into()), ("x".into(), "1".into())]
        );
    }

    #[tokio::test]
    async fn refuses_non_local_names() {
        let r = LocalhostOnly.resolve("example.com".parse().unwrap()).await;
        assert!(r.is_err());
        let mut ok = LocalhostOnly
            .resolve("app.localhost".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(ok.next().unwrap().ip(), std::net::IpAddr::from(LOOPBACK));
    }

    #[test]
    fn cookies_round_trip() {
        let b = Browser::new(&["app.localhost"], 1);
        b.set_cookie("http://app.localhost:1/", "_portcullis=abc; Path=/");
        assert_eq!(
            b.cookie("http://app.localhost:1/x", "_portcullis")
                .as_deref(),
            Some("abc")
        );
        assert_eq!(b.cookie("http://other.localhost:1/", "_portcullis"), None);
    }
}
