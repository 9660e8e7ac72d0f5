//! The Pingora service: one [`ProxyHttp`] implementation with one typed [`Ctx`].
//!
//! - `request_filter` decides: it validates and normalizes the request, serves Portcullis's own
//!   endpoints, finds the route, looks the session up and evaluates the route's policy. Any
//!   refusal is answered here (see [`crate::respond`]); nothing refused reaches an upstream.
//! - `upstream_peer` picks a backend of the route.
//! - `upstream_request_filter` strips what clients must not send upstream (the session
//!   cookie, identity headers, forwarding headers), rewrites path and host, and adds the
//!   identity headers.
//! - `response_filter` applies the route's response headers; `logging` records the request.

use std::borrow::Cow;
use std::net::IpAddr;
use std::os::unix::io::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::ErrorType;
use portcullis_auth::{find_cookie_bytes, strip_cookies, IdentityClaims};
use portcullis_policy::{Claim, Decision, HeaderLookup, Request as PolicyRequest};
use tracing::warn;

use crate::authenticate;
use crate::config::{PathMatcher, Route, TemplatePart, Upstream};
use crate::upstream::deadline::Deadline;
use crate::request::path;
use crate::observe::request_log;
use crate::respond::{Refusal, Reply};
use crate::sessions::opened::Known;
use crate::sessions::CachedSession;
use crate::state::{now_unix, Runtime, State};
use crate::upstream::streams::{StreamWatch, Subject};
use crate::upstream::tripwire;

/// Header names used on every request, built once.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const IDENTITY_PREFIX: &str = "x-portcullis-";
/// Backends tried per request when connections fail.
const MAX_CONNECT_ATTEMPTS: u32 = 3;

/// The proxy service.
pub struct Proxy {
    pub state: Arc<State>,
}

/// Per-request state shared by the phases.
pub struct Ctx {
    pub request_id: String,
    pub start: Instant,
    pub runtime: Option<Arc<Runtime>>,
    pub route: Option<usize>,
    pub upstream: Option<usize>,
    /// Upstreams of the route tried for this request (bit `i`: upstream `i`).
    pub tried: u64,
    pub session: Option<Arc<CachedSession>>,
    /// What was decided: `allow`, `public`, `deny`, `sign_in`, ... (logs and metrics).
    pub outcome: &'static str,
    /// Lowercase host, no port.
    pub host: String,
    /// Host header as sent (`host[:port]`).
    pub authority: String,
    pub port: u16,
    /// The path as the client sent it, for the access log.
    pub path: String,
    pub client_ip: Option<IpAddr>,
    /// The credential came from an `Authorization` header (strip it before going upstream).
    pub bearer: bool,
    /// Answer in JSON, not HTML.
    pub json: bool,
    /// Counts this request in `portcullis_requests_in_flight` until it is dropped.
    pub in_flight: InFlight,
    /// The upstream connection's socket, when the connection is HTTP/1 (this request's alone).
    pub upstream_fd: Option<RawFd>,
    /// The re-check of a live websocket or streamed response ([`crate::upstream::streams`]).
    pub stream: Option<StreamWatch>,
    /// The route's `timeout` for the upstream's whole response ([`crate::upstream::deadline`]).
    pub deadline: Option<Deadline>,
}

/// One request in `portcullis_requests_in_flight`, for as long as it lives.
pub struct InFlight(prometheus::IntGauge);

impl InFlight {
    pub fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Who asks, as far as [`authorize`] needs to know besides the request itself.
pub(crate) struct Asker<'a> {
    /// Lowercase host, no port.
    pub host: &'a str,
    pub port: u16,
    pub client_ip: Option<IpAddr>,
}

/// What [`authorize`] found, kept even when it refuses.
#[derive(Default)]
pub(crate) struct Found {
    /// Index of the matching route.
    pub route: Option<usize>,
    pub session: Option<Arc<CachedSession>>,
    /// The credential came from an `Authorization` header.
    pub bearer: bool,
}

/// What `decide` wants done with the request.
pub enum Flow {
    Proxy,
    Reply(Reply),
}

/// Lets the policy read request headers without copying them.
struct Headers<'a>(&'a RequestHeader);

impl HeaderLookup for Headers<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

// === impl Proxy ===

impl Proxy {
    fn route<'a>(&self, ctx: &'a Ctx) -> Option<(&'a Runtime, &'a Route)> {
        let runtime = ctx.runtime.as_deref()?;
        let route = runtime.routes.routes().get(ctx.route?)?;
        Some((runtime, route))
    }

    /// Decides what happens to a request. Everything here runs before any upstream is chosen.
    async fn decide(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        runtime: &Runtime,
    ) -> Result<Flow, Refusal> {
        let state = &self.state;
        let req = session.req_header();
        ctx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.json = wants_json(req);
        ctx.path = req.uri.path().to_string();
        reject_smuggling(req)?;
        if req.headers.contains_key(header::TRANSFER_ENCODING)
            && session
                .as_http1()
                .is_some_and(|h1| raw_has_content_length(&h1.get_headers_raw_bytes()))
        {
            return Err(Refusal::BadRequest(
                "Content-Length and Transfer-Encoding together are not allowed".into(),
            ));
        }
        let (host, port, authority) = request_host(req, state.tls)?;
        ctx.host = host;
        ctx.port = port;
        ctx.authority = authority;

        // Most paths are already normal (borrowed, no allocation); only a changed one is
        // written back, so that from here on the request's own path is the normalized one.
        if let Cow::Owned(normalized) =
            path::normalize(req.uri.path()).map_err(|e| Refusal::BadRequest(e.to_string()))?
        {
            let pq = match req.uri.query() {
                Some(q) => format!("{normalized}?{q}"),
                None => normalized,
            };
            let uri = http::Uri::try_from(pq)
                .map_err(|_| Refusal::BadRequest("the request target is invalid".into()))?;
            session.req_header_mut().set_uri(uri);
        }

        // Portcullis's own endpoints (rare): they need the session mutably, so they get a copy.
        let path = session.req_header().uri.path();
        let authenticate_host = ctx.host == runtime.config.authenticate.host;
        let own_endpoint = path.starts_with("/.portcullis/")
            || path == "/.portcullis"
            || path == authenticate::JWKS_PATH;
        if authenticate_host || own_endpoint {
            let path = path.to_owned();
            if authenticate_host {
                return authenticate::serve_authenticate_host(state, runtime, session, ctx, &path)
                    .await;
            }
            if !runtime.routes.has_host(&ctx.host) {
                return Err(Refusal::NotFound);
            }
            return authenticate::serve_route_host(state, runtime, session, ctx, &path).await;
        }

        let req = session.req_header();
        let now = now_unix();
        let mut found = Found::default();
        let asker = Asker {
            host: &ctx.host,
            port: ctx.port,
            client_ip: ctx.client_ip,
        };
        let authorized = authorize(state, runtime, req, &asker, now, &mut found).await;
        ctx.route = found.route;
        ctx.session = found.session;
        ctx.bearer |= found.bearer;
        let (route, decision) = authorized?;
        if decision.allowed {
            ctx.outcome = if route.policy.is_public() {
                "public"
            } else {
                "allow"
            };
            self.state.metrics.decided(ctx.outcome);
            return Ok(Flow::Proxy);
        }
        let refusal = if ctx.session.is_some() {
            Refusal::Forbidden {
                details: vec![decision.explain(&route.policy)],
            }
        } else if ctx.json || ctx.bearer {
            Refusal::Unauthorized
        } else {
            let original = format!(
                "{}://{}{}",
                if self.state.tls { "https" } else { "http" },
                ctx.authority,
                req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
            );
            Refusal::SignIn {
                location: authenticate::sign_in_url(state, runtime, &original, now),
            }
        };
        request_log::refused(&request_log::Refused {
            request_id: &ctx.request_id,
            route: &route.name,
            user: ctx.session.as_ref().map(|s| s.user_id()).unwrap_or(""),
            email: ctx.session.as_ref().map(|s| s.email()).unwrap_or(""),
            decision: refusal.outcome(),
            reason: &decision.explain(&route.policy),
        });
        Err(refusal)
    }

    /// Starts re-checking a websocket or streamed response every `stream_recheck_interval`.
    fn watch_stream(&self, session: &Session, ctx: &mut Ctx) {
        // The client connection when it is HTTP/1 (it is this request's until `logging`),
        // else the upstream one when it is HTTP/1; see `crate::upstream::streams`.
        let fd = match session.as_http1() {
            Some(h1) => Some(h1.stream().id()),
            None => ctx.upstream_fd,
        };
        let subject = Subject {
            request: session.req_header().clone(),
            host: ctx.host.clone(),
            port: ctx.port,
            client_ip: ctx.client_ip,
            request_id: ctx.request_id.clone(),
            signed_in: ctx.session.is_some(),
            email: ctx
                .session
                .as_ref()
                .map(|s| s.email().to_owned())
                .unwrap_or_default(),
        };
        ctx.stream = Some(StreamWatch::start(self.state.clone(), subject, fd));
    }

    /// The whole session (tokens included) behind a cached one, from the store.
    async fn full_session(
        &self,
        cached: Option<&CachedSession>,
    ) -> Option<portcullis_auth::Session> {
        let cached = cached?;
        match self.state.sessions.full(&cached.id, now_unix()).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot read the session's tokens from the store");
                None
            }
        }
    }

    /// What `upstream_request_filter` does to the request going upstream, on its parts: strips
    /// what clients must not send upstream, adds the forwarding and identity headers, and
    /// rewrites path and host.
    async fn edit_upstream_request(
        &self,
        parts: &mut http::request::Parts,
        runtime: &Runtime,
        route: &Route,
        ctx: &Ctx,
    ) -> Result<()> {
        let config = &runtime.config;
        let headers = &mut parts.headers;

        // 1. Nothing a client sends may pose as Portcullis or as the forwarding chain. One scan
        // finds them (most requests carry none); X-Forwarded-Host, -Proto and -For (when the
        // address is known) are replaced below.
        let spoofed = |name: &HeaderName| {
            name.as_str().starts_with(IDENTITY_PREFIX)
                || *name == header::FORWARDED
                || *name == X_REAL_IP
                || *name == config.jwt_assertion_header
                || config.jwt_claims_headers.iter().any(|(h, _)| h == name)
                || route.remove_request_headers.iter().any(|h| h == name)
        };
        if headers.keys().any(spoofed) {
            let names: Vec<HeaderName> = headers.keys().filter(|n| spoofed(n)).cloned().collect();
            for name in names {
                headers.remove(&name);
            }
        }
        if ctx.bearer {
            headers.remove(header::AUTHORIZATION);
        }

        // Room for what is added below, so that the map grows (rehashes) once at most; made
        // first, so that the cookie's lookup (an entry, which reserves a slot) never grows it.
        let identity_headers = if ctx.session.is_some() && route.pass_identity_headers {
            1 + config.jwt_claims_headers.len()
        } else {
            0
        };
        headers.reserve(4 + identity_headers + route.set_request_headers.len());
        strip_session_cookie(headers, &config.cookie.name);

        // 2. Forwarding headers from the connection.
        match ctx.client_ip {
            Some(ip) => headers.insert(&X_FORWARDED_FOR, ip_header_value(ip)),
            None => headers.remove(&X_FORWARDED_FOR),
        };
        headers.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(if self.state.tls { "https" } else { "http" }),
        );
        headers.insert(&X_FORWARDED_HOST, header_value(&ctx.authority)?);
        headers.insert(&X_REQUEST_ID, header_value(&ctx.request_id)?);

        // 3. Path and host.
        let upstream = ctx.upstream.and_then(|i| route.upstreams.get(i));
        let path_and_query =
            rewrite_path(route, upstream.map(|u| u.base_path.as_str()), &parts.uri);
        // An origin-form target that no rewrite changed is sent as it is (no re-parse).
        let origin_form = parts.uri.scheme().is_none() && parts.uri.authority().is_none();
        if matches!(path_and_query, Cow::Owned(_)) || !origin_form {
            parts.uri = http::Uri::try_from(path_and_query.as_ref())
                .explain_err(ErrorType::InternalError, |_| "rewritten path is invalid")?;
        }
        let host = if route.preserve_host_header {
            ctx.authority.as_str()
        } else if let Some(h) = &route.host_rewrite {
            h.as_str()
        } else {
            upstream
                .map(|u| u.authority.as_str())
                .unwrap_or(ctx.authority.as_str())
        };
        let headers = &mut parts.headers;
        headers.insert(header::HOST, header_value(host)?);

        // 4. Identity.
        let identity = ctx.session.as_deref();
        let mut jwt: Option<HeaderValue> = None;
        if let Some(s) = identity {
            if route.pass_identity_headers {
                jwt = self.identity_assertion(ctx, s);
                if let Some(j) = &jwt {
                    headers.insert(&config.jwt_assertion_header, j.clone());
                }
                for (name, claim) in &config.jwt_claims_headers {
                    // A joined list becomes the value's buffer as it is (no second copy).
                    let value = match claim_value(s, claim) {
                        Some(Cow::Borrowed(v)) => HeaderValue::from_str(v).ok(),
                        Some(Cow::Owned(v)) => HeaderValue::from_maybe_shared(Bytes::from(v)).ok(),
                        None => None,
                    };
                    if let Some(v) = value {
                        headers.insert(name, v);
                    }
                }
            }
        }
        // The cache holds no tokens: a template that needs one reads the session from the
        // store (once per request).
        let mut full: Option<Option<portcullis_auth::Session>> = None;
        for (name, template) in &route.set_request_headers {
            let mut value = String::new();
            for part in &template.0 {
                match part {
                    TemplatePart::Literal(s) => value.push_str(s),
                    TemplatePart::AccessToken | TemplatePart::IdToken => {
                        if full.is_none() {
                            full = Some(self.full_session(identity).await);
                        }
                        let s = full.as_ref().and_then(Option::as_ref);
                        let token = match part {
                            TemplatePart::AccessToken => s.and_then(|s| s.access_token.as_deref()),
                            _ => s.and_then(|s| s.id_token.as_deref()),
                        };
                        value.push_str(token.unwrap_or(""));
                    }
                    TemplatePart::Jwt => {
                        if jwt.is_none() {
                            jwt = identity.and_then(|s| self.identity_assertion(ctx, s));
                        }
                        value.push_str(jwt.as_ref().and_then(|j| j.to_str().ok()).unwrap_or(""));
                    }
                }
            }
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        Ok(())
    }

    /// The identity headers for this request's session and route host.
    fn identity_assertion(&self, ctx: &Ctx, session: &CachedSession) -> Option<HeaderValue> {
        let s = session;
        let audience = ctx.host.as_str();
        let result = self.state.assertions.get_or_sign_kept(
            &s.assertion,
            &self.state.assertion_signer,
            &s.id,
            audience,
            s.assertion_content,
            now_unix(),
            || IdentityClaims {
                iss: audience.to_string(),
                aud: audience.to_string(),
                sub: s.user_id().to_owned(),
                user: s.user_id().to_owned(),
                email: s.email().to_owned(),
                groups: s.identity.groups().iter().map(|g| g.to_string()).collect(),
                name: s.name().to_owned(),
                sid: s.id.to_string(),
                iat: 0,
                exp: 0,
                jti: String::new(),
            },
        );
        match result {
            Ok(jwt) => Some(jwt),
            Err(e) => {
                warn!(error = %e, "cannot sign the identity assertion");
                None
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            request_id: new_request_id(),
            start: Instant::now(),
            runtime: None,
            route: None,
            upstream: None,
            tried: 0,
            session: None,
            outcome: "none",
            host: String::new(),
            authority: String::new(),
            port: 0,
            path: String::new(),
            client_ip: None,
            bearer: false,
            json: false,
            in_flight: InFlight::new(&self.state.metrics.in_flight),
            upstream_fd: None,
            stream: None,
            deadline: None,
        }
    }

    /// No downstream modules. Pingora's default adds a response compression module at level 0
    /// (off), which still costs every request an allocation and a call at each of its four
    /// filter points (300–500 instructions under callgrind). Portcullis passes responses on as
    /// the upstream encoded them.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let runtime = self.state.runtime.load_full();
        ctx.runtime = Some(runtime.clone());
        let flow = self.decide(session, ctx, &runtime).await;
        let reply = match flow {
            Ok(Flow::Proxy) => return Ok(false),
            Ok(Flow::Reply(reply)) => {
                if ctx.outcome == "none" {
                    ctx.outcome = "portcullis";
                }
                reply
            }
            Err(refusal) => {
                ctx.outcome = refusal.outcome();
                if !matches!(refusal, Refusal::NotFound | Refusal::BadRequest(_)) {
                    self.state.metrics.decided(ctx.outcome);
                }
                refusal.reply(
                    &ctx.request_id,
                    ctx.json || ctx.bearer,
                    runtime.config.show_error_details,
                )
            }
        };
        reply.send(session, self.state.tls).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let runtime = ctx
            .runtime
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        let route = ctx
            .route
            .and_then(|i| runtime.routes.routes().get(i))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        let (index, upstream) = runtime
            .routes
            .pick_upstream_excluding(route, ctx.tried)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "route has no upstream"))?;
        ctx.upstream = Some(index);
        if index < 64 {
            ctx.tried |= 1 << index;
        }
        let mut peer = upstream_http_peer(upstream);
        peer.options.connection_timeout = Some(route.timeout.min(Duration::from_secs(10)));
        peer.options.total_connection_timeout = Some(route.timeout.min(Duration::from_secs(15)));
        // Over HTTP/1 a `Deadline` bounds the whole response by `timeout`, and each wait for a
        // byte is bounded by `idle_timeout` (streams live by it). An HTTP/2 connection is shared,
        // so there `timeout` bounds each wait.
        let wait = if upstream.h2c {
            route.timeout
        } else {
            route.idle_timeout
        };
        peer.options.read_timeout = Some(wait);
        peer.options.write_timeout = Some(wait);
        peer.options.idle_timeout = Some(route.idle_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (runtime, route) = self
            .route(ctx)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        // Pingora keeps a request's header names twice: beside the values, and in a second map
        // for the case each name arrived in. Every edit through `RequestHeader` parses the name
        // and updates both maps (about 1,300 instructions per inserted header under callgrind).
        // The upstream request is taken apart once instead, its headers edited as a plain
        // `http::HeaderMap` with names built once, and put together without the case map. Names
        // then go upstream lowercase, standard ones title-cased by Pingora, as Envoy (and so
        // Pomerium) sends them; HTTP header names are case-insensitive.
        let send_end_stream = upstream_request.send_end_stream();
        let mut parts: http::request::Parts =
            std::mem::replace(upstream_request, empty_request_header()).into();
        let edited = self
            .edit_upstream_request(&mut parts, runtime, route, ctx)
            .await;
        *upstream_request = RequestHeader::from(parts);
        if let Some(v) = send_end_stream {
            upstream_request.set_send_end_stream(v);
        }
        edited
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        peer: &HttpPeer,
        fd: RawFd,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // An HTTP/2 connection carries other requests too: never this request's to shut down.
        ctx.upstream_fd = matches!(peer.options.alpn, ALPN::H1).then_some(fd);
        let socket = ctx.upstream_fd.and_then(|fd| {
            tripwire::upstream_socket(fd, digest.and_then(|d| d.socket_digest.as_ref()))
        });
        // The route's `timeout` runs from the first attempt; a retry keeps it, for its connection.
        let timeout = self.route(ctx).map(|(_, route)| route.timeout);
        match (&ctx.deadline, socket, timeout) {
            (Some(deadline), Some(socket), _) => deadline.retarget(socket),
            (Some(_), None, _) => ctx.deadline = None,
            (None, Some(socket), Some(timeout)) => {
                ctx.deadline = Some(Deadline::start(Instant::now() + timeout, socket));
            }
            (None, _, _) => {}
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some((_, route)) = self.route(ctx) else {
            return Ok(());
        };
        for (name, value) in &route.set_response_headers {
            upstream_response.insert_header(name.clone(), value.clone())?;
        }
        let protected = !route.policy.is_public();
        let body = body_kind(session.req_header(), upstream_response);
        if body.is_some_and(|b| b != BodyKind::Sized) {
            // Complete already, or a stream, which lives by `idle_timeout`.
            ctx.deadline = None;
        }
        if body == Some(BodyKind::Stream) && protected && ctx.stream.is_none() {
            self.watch_stream(session, ctx);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(watch) = &ctx.stream {
            if let Some(reason) = watch.must_end_here() {
                return Error::e_explain(ErrorType::ConnectionClosed, reason.outcome());
            }
            if end_of_stream {
                // Before Pingora may return the upstream connection to its pool.
                watch.stop();
            }
        }
        if end_of_stream {
            ctx.deadline = None;
        }
        Ok(None)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(reason) = ctx.stream.as_ref().and_then(StreamWatch::must_end_here) {
            return Error::e_explain(ErrorType::ConnectionClosed, reason.outcome());
        }
        Ok(())
    }

    /// Pingora's default retry policy, except that a request whose deadline passed is a timeout
    /// and never retried.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if ctx.deadline.as_ref().is_some_and(Deadline::passed) {
            ctx.deadline = None;
            let mut e = Error::because(
                ErrorType::ReadTimedout,
                format!(
                    "the route's timeout passed before the response was complete (peer {peer})"
                ),
                e,
            );
            e.set_retry(false);
            return e.into_up();
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// A connection to the upstream failed before any byte of the request was sent: the
    /// backend leaves the rotation for a while (passive health), and the request may go to
    /// another backend of the route, whatever its method.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some((runtime, route)) = self.route(ctx) else {
            return e;
        };
        if let Some(h) = ctx
            .upstream
            .and_then(|i| runtime.routes.health(route.index, i))
        {
            h.connection_failed();
        }
        let untried = (0..route.upstreams.len().min(64)).any(|i| ctx.tried & (1 << i) == 0);
        let attempts = ctx.tried.count_ones();
        e.set_retry(untried && attempts < MAX_CONNECT_ATTEMPTS);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let refusal = match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Some(Refusal::GatewayTimeout)
            }
            ErrorType::HTTPStatus(504) => Some(Refusal::GatewayTimeout),
            ErrorType::HTTPStatus(code) if *code >= 500 => Some(Refusal::BadGateway),
            ErrorType::HTTPStatus(code) if (400..500).contains(code) => {
                Some(Refusal::BadRequest("The request is malformed.".into()))
            }
            _ => match e.esource() {
                pingora::ErrorSource::Upstream => Some(Refusal::BadGateway),
                pingora::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        None
                    }
                    _ => Some(Refusal::BadRequest("The request is malformed.".into())),
                },
                _ => Some(Refusal::BadGateway),
            },
        };
        let Some(refusal) = refusal else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.outcome = refusal.outcome();
        let code = refusal.status();
        if session.response_written().is_none() {
            let show = ctx
                .runtime
                .as_ref()
                .is_some_and(|r| r.config.show_error_details);
            let reply = refusal.reply(&ctx.request_id, ctx.json || ctx.bearer, show);
            if let Err(write_error) = reply.send(session, self.state.tls).await {
                warn!(error = %write_error, "cannot send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // First: Pingora closes or reuses the connections after this, nothing may shut them.
        ctx.deadline = None;
        if let Some(watch) = ctx.stream.take() {
            watch.stop();
            if let Some(reason) = watch.closed() {
                ctx.outcome = reason.outcome();
            }
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let route = self.route(ctx);
        let route_name = route.map(|(_, r)| r.name.as_str()).unwrap_or("");
        let series = route.and_then(|(runtime, r)| runtime.route_series.get(r.index));
        let elapsed = ctx.start.elapsed();
        self.state
            .metrics
            .finished(route_name, series, status, elapsed.as_secs_f64());
        let req = session.req_header();
        let user = ctx.session.as_ref().map(|s| s.email()).unwrap_or("");
        request_log::access(&request_log::Access {
            request_id: &ctx.request_id,
            method: req.method.as_str(),
            host: &ctx.authority,
            path: &ctx.path,
            status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            route: route_name,
            user,
            decision: ctx.outcome,
            error: e.map(|e| e.etype().as_str()).unwrap_or(""),
        });
    }
}

/// Finds the route of a validated, normalized request, checks that it may switch protocols,
/// loads its session and evaluates the route's policy: the whole of authorization that depends
/// on configuration and sessions. `request_filter` runs it for every request, and the watch of a
/// live websocket or stream runs it again every `stream_recheck_interval`
/// ([`crate::upstream::streams`]), so a reload or a sign-out is judged the same way for both.
///
/// What it found on the way is left in `found` even when it refuses (for logs and answers).
pub(crate) async fn authorize<'r>(
    state: &State,
    runtime: &'r Runtime,
    req: &RequestHeader,
    asker: &Asker<'_>,
    now: i64,
    found: &mut Found,
) -> Result<(&'r Route, Decision), Refusal> {
    let path = req.uri.path();
    let route = runtime
        .routes
        .find(asker.host, asker.port, path)
        .ok_or(Refusal::NotFound)?;
    found.route = Some(route.index);

    if !route.allow_websockets && is_upgrade(req) {
        return Err(Refusal::BadRequest(
            "protocol upgrades (websockets) are not allowed on this route".into(),
        ));
    }

    if !route.policy.is_public() {
        found.session = load_session(state, runtime, req, &mut found.bearer, now).await?;
    }
    let request = PolicyRequest {
        identity: found.session.as_ref().map(|s| &s.identity),
        method: req.method.as_str(),
        path,
        source_ip: asker.client_ip,
        now_unix: now,
        headers: &Headers(req),
        client_certificate: None,
    };
    Ok((route, route.policy.evaluate(&request)))
}

/// The session the request's cookie or bearer token names, when it is valid and live; `bearer`
/// is set when the credential came from `Authorization`.
pub(crate) async fn load_session(
    state: &State,
    runtime: &Runtime,
    req: &RequestHeader,
    bearer: &mut bool,
    now: i64,
) -> Result<Option<Arc<CachedSession>>, Refusal> {
    // The bearer token, else the session cookie. The cookie is read as bytes: no pass goes
    // over the whole header, another cookie's odd bytes cannot hide this one, and the value
    // is compared with the opened-cookie memo as bytes (decoded only to be opened).
    let sealed: &[u8] = match bearer_token(req) {
        Some(t) => {
            *bearer = true;
            t.as_bytes()
        }
        None => match find_cookie_bytes(
            req.headers.get_all(header::COOKIE),
            &runtime.config.cookie.name,
        ) {
            Some(c) => c,
            None => return Ok(None),
        },
    };
    let sessions = &state.sessions;
    let cookie = match state
        .opened_cookies
        .open(&state.cipher, sealed, now, |s| sessions.is_current(s, now))
    {
        None => return Ok(None),
        // The steady state: the value's last lookup found this session, and it is still the
        // one the cache would answer with.
        Some(Known::Session(s)) => {
            sessions.count_hit();
            return Ok(Some(s));
        }
        Some(Known::Cookie(c)) => c,
    };
    let session = sessions.get(&cookie.session_id, now).await.map_err(|e| {
        warn!(error = %e, "session store unavailable");
        Refusal::Unavailable(
            "The session store cannot be reached right now. Try again in a moment.".into(),
        )
    })?;
    if let Some(s) = &session {
        state.opened_cookies.attach(sealed, s);
    }
    Ok(session)
}

/// A 16-hex-digit random request id.
pub fn new_request_id() -> String {
    use rand::Rng as _;
    request_id_text(rand::thread_rng().gen::<u64>())
}

/// `n` as 16 lowercase hex digits, as `{:016x}` formats it but without the formatting
/// machinery (`new_request_id` 385 instructions instead of 608 under callgrind).
fn request_id_text(n: u64) -> String {
    let mut digits = [0u8; 16];
    // Always fits (8 bytes, 16 digits), and hex digits are ASCII: nothing is lost either way.
    let _ = hex::encode_to_slice(n.to_be_bytes(), &mut digits);
    String::from_utf8_lossy(&digits).into_owned()
}

fn wants_json(req: &RequestHeader) -> bool {
    req.headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

fn is_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key(header::UPGRADE)
}

/// What an upstream response's header says of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// None: the response is complete with its header.
    Empty,
    /// A `Content-Length` body.
    Sized,
    /// A protocol switch (websocket) or a body of unknown length (server-sent events, chunked
    /// streams): it may outlive the request's authorization and its `timeout`.
    Stream,
}

/// The body of `resp`, the answer to `req`; `None` for an interim (1xx) response.
fn body_kind(req: &RequestHeader, resp: &ResponseHeader) -> Option<BodyKind> {
    Some(match resp.status.as_u16() {
        101 => BodyKind::Stream,
        100..=199 => return None,
        204 | 304 => BodyKind::Empty,
        _ if req.method == http::Method::HEAD => BodyKind::Empty,
        _ => match resp.headers.get(header::CONTENT_LENGTH) {
            Some(v) if v.as_bytes() == b"0" => BodyKind::Empty,
            Some(_) => BodyKind::Sized,
            None => BodyKind::Stream,
        },
    })
}

/// The bearer token in `Authorization`, when it is one of ours
/// (`Bearer Portcullis-<token>`, `Portcullis <token>`, or `Bearer <token>`).
fn bearer_token(req: &RequestHeader) -> Option<&str> {
    let value = req.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(token.strip_prefix("Portcullis-").unwrap_or(token))
    } else if scheme.eq_ignore_ascii_case("portcullis") {
        Some(token)
    } else {
        None
    }
}

/// Refuses requests that different servers could read differently.
fn reject_smuggling(req: &RequestHeader) -> Result<(), Refusal> {
    let te = req
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .count();
    let cl = req.headers.get_all(header::CONTENT_LENGTH).iter().count();
    if te > 0 && cl > 0 {
        return Err(Refusal::BadRequest(
            "Content-Length and Transfer-Encoding together are not allowed".into(),
        ));
    }
    if cl > 1 {
        return Err(Refusal::BadRequest("several Content-Length headers".into()));
    }
    if te > 0 {
        let chunked_only = req
            .headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .all(|v| {
                v.to_str()
                    .is_ok_and(|s| s.trim().eq_ignore_ascii_case("chunked"))
            });
        if !chunked_only || te > 1 {
            return Err(Refusal::BadRequest("unsupported Transfer-Encoding".into()));
        }
    }
    Ok(())
}

/// Whether raw HTTP/1 request headers have a `Content-Length` line. Pingora drops
/// `Content-Length` when `Transfer-Encoding` is also sent (RFC 9112 §6.3), so only the raw
/// header shows that a client sent both; such a request is refused, not repaired.
fn raw_has_content_length(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length:";
    raw.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME))
}

/// The request's host (lowercase, no port, no trailing dot), port and authority.
fn request_host(req: &RequestHeader, tls: bool) -> Result<(String, u16, String), Refusal> {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::BadRequest("several Host headers".into()));
    }
    let host_header = host_header
        .map(|v| {
            v.to_str()
                .map_err(|_| Refusal::BadRequest("invalid Host header".into()))
        })
        .transpose()?;
    let authority = match (req.uri.authority().map(|a| a.as_str()), host_header) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
            return Err(Refusal::BadRequest(
                "Host does not match the request target".into(),
            ))
        }
        (Some(a), _) => a,
        (None, Some(h)) => h,
        (None, None) => return Err(Refusal::BadRequest("missing Host header".into())),
    };
    if authority.is_empty()
        || !authority.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
        })
    {
        return Err(Refusal::BadRequest("invalid Host header".into()));
    }
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| Refusal::BadRequest("invalid Host header".into()))?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let port = port.unwrap_or(if tls { 443 } else { 80 });
    Ok((host, port, authority.to_string()))
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((v6, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((authority, None)),
    }
}

/// An address as a header value, formatted on the stack.
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    // The longest address (an IPv4-mapped IPv6 one) has 45 characters.
    let mut buf = [0u8; 64];
    let len = match ip {
        // Four numbers with itoa, a tenth of what `fmt` costs for the same text.
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let mut n = itoa::Buffer::new();
                let digits = n.format(octet).as_bytes();
                buf[len..len + digits.len()].copy_from_slice(digits);
                len += digits.len();
            }
            len
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}");
            usize::try_from(cursor.position()).unwrap_or(0)
        }
    };
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Removes the session cookie from every `Cookie` header, keeping the others.
fn strip_session_cookie(headers: &mut http::HeaderMap, name: &str) {
    // One lookup (hash and probe) serves the read and the edit. Most often one `Cookie` header:
    // left as it is, dropped (the session cookie was alone, no allocation), or replaced by what
    // is left of it; several are joined into one.
    let header::Entry::Occupied(mut cookies) = headers.entry(header::COOKIE) else {
        return;
    };
    let edit = match strip_cookies(cookies.iter(), name) {
        Some(Cow::Borrowed(_)) => return,
        edit => edit.map(Cow::into_owned),
    };
    match edit.and_then(|v| HeaderValue::from_maybe_shared(Bytes::from(v)).ok()) {
        // Either way, every value the name had goes.
        Some(v) => {
            let _ = cookies.insert(v);
        }
        None => {
            let _ = cookies.remove();
        }
    }
}

/// A header value from text the proxy already validated (a host, a request id).
fn header_value(text: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(text).explain_err(ErrorType::InternalError, |_| "invalid header value")
}

/// A placeholder while the upstream request is edited as parts (no allocation).
fn empty_request_header() -> RequestHeader {
    RequestHeader::from(http::Request::new(()).into_parts().0)
}

/// The peer for `upstream` with the route's TLS (or h2c) settings; timeouts are set by the
/// caller.
pub(crate) fn upstream_http_peer(upstream: &Upstream) -> HttpPeer {
    let settings = upstream.tls_settings.as_deref();
    let sni = settings
        .and_then(|t| t.server_name.clone())
        .unwrap_or_else(|| upstream.sni.clone());
    let mut peer = HttpPeer::new(upstream.addr, upstream.tls, sni);
    if upstream.h2c {
        // Cleartext HTTP/2 with prior knowledge; streams share one connection.
        peer.options.alpn = ALPN::H2;
        peer.options.max_h2_streams = 100;
    }
    if let Some(t) = settings {
        peer.options.verify_cert = !t.skip_verify;
        peer.options.verify_hostname = !t.skip_verify;
        peer.options.ca = t.ca.clone();
        peer.client_cert_key = t.client_cert.clone();
        peer.group_key = t.group_key;
    }
    peer
}

/// The path (with query) to send upstream.
fn rewrite_path<'a>(route: &Route, base_path: Option<&str>, uri: &'a http::Uri) -> Cow<'a, str> {
    let path = uri.path();
    let rewritten: Option<String> = if let Some((re, substitution)) = &route.regex_rewrite {
        match re.replace_all(path, substitution.as_str()) {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) if p.starts_with('/') => Some(p),
            Cow::Owned(p) => Some(format!("/{p}")),
        }
    } else if let Some(rewrite) = &route.prefix_rewrite {
        let prefix = match &route.path {
            PathMatcher::Prefix(p) => p.as_str(),
            _ => "/",
        };
        let rest = path.strip_prefix(prefix).unwrap_or(path);
        let mut p = String::with_capacity(rewrite.len() + rest.len());
        p.push_str(rewrite);
        if p.ends_with('/') && rest.starts_with('/') {
            p.push_str(&rest[1..]);
        } else if !p.ends_with('/') && !rest.is_empty() && !rest.starts_with('/') {
            p.push('/');
            p.push_str(rest);
        } else {
            p.push_str(rest);
        }
        Some(p)
    } else {
        match base_path {
            Some(base) if !base.is_empty() => Some(format!("{base}{path}")),
            _ => None,
        }
    };
    match (rewritten, uri.query()) {
        (None, _) => Cow::Borrowed(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")),
        (Some(p), None) => Cow::Owned(p),
        (Some(p), Some(q)) => Cow::Owned(format!("{p}?{q}")),
    }
}

/// A claim of the session as a header value (lists joined with `,`).
fn claim_value<'s>(s: &'s CachedSession, claim: &str) -> Option<Cow<'s, str>> {
    match claim {
        "email" => Some(Cow::Borrowed(s.email())),
        "sub" | "user" => Some(Cow::Borrowed(s.user_id())),
        "name" => Some(Cow::Borrowed(s.name())),
        "groups" => Some(join_list(s.identity.groups())),
        other => match s.identity.claim(other)? {
            Claim::Str(v) => Some(Cow::Borrowed(v)),
            Claim::List(items) => Some(join_list(items)),
            Claim::Json(serde_json::Value::String(v)) => Some(Cow::Borrowed(v)),
            Claim::Json(serde_json::Value::Array(items)) => Some(Cow::Owned(
                items
                    .iter()
                    .map(|i| match i {
                        serde_json::Value::String(v) => v.clone(),
                        v => v.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            )),
            Claim::Json(serde_json::Value::Null) => None,
            Claim::Json(v) => Some(Cow::Owned(v.to_string())),
        },
    }
}

/// A list claim joined with `,`; a single item is borrowed as it is.
fn join_list(items: &[Arc<str>]) -> Cow<'_, str> {
    match items {
        [one] => Cow::Borrowed(one),
        _ => Cow::Owned(items.join(",")),
    }
}

/// Marks the server ready (for `/readyz`).
pub fn mark_ready(state: &State) {
    state.metrics.ready.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_sixteen_lowercase_hex_digits() {
        for n in [0, 1, 0xdead_beef, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(request_id_text(n), format!("{n:016x}"));
        }
        assert_eq!(request_id_text(0xab), "00000000000000ab");
        let id = new_request_id();
        assert_eq!(id.len(), 16);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn forwarded_for_values_are_the_address_as_text() {
        for ip in [
            "127.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "10.20.3.45",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.168.100.200",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(addr), addr.to_string().as_str());
        }
    }

    #[test]
    fn the_session_cookie_is_stripped_and_only_it() {
        let strip = |values: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for v in values {
                headers.append(header::COOKIE, HeaderValue::from_str(v).unwrap());
            }
            strip_session_cookie(&mut headers, "_portcullis");
            headers
                .get_all(header::COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        // Alone (the fast path), with spaces around the name.
        assert!(strip(&["_portcullis=abc"]).is_empty());
        assert!(strip(&[" _portcullis =abc"]).is_empty());
        // Among others, in one header or several.
        assert_eq!(strip(&["a=1; _portcullis=abc; b=2"]), ["a=1; b=2"]);
        assert_eq!(strip(&["a=1", "_portcullis=abc"]), ["a=1"]);
        assert!(strip(&["_portcullis=abc", "_portcullis=def"]).is_empty());
        // A cookie whose name only starts or ends like it stays.
        assert_eq!(strip(&["_portcullis_x=1"]), ["_portcullis_x=1"]);
        assert_eq!(strip(&["x_portcullis=1"]), ["x_portcullis=1"]);
        assert_eq!(strip(&["other=_portcullis=1"]), ["other=_portcullis=1"]);
        // Several headers go upstream as one (as an HTTP/2 client's must reach HTTP/1).
        assert_eq!(strip(&["a=1", "b=2"]), ["a=1; b=2"]);
        // Another cookie's bytes need not be text.
        let mut headers = http::HeaderMap::new();
        let value = HeaderValue::from_bytes(b"theme=\xff; _portcullis=abc").unwrap();
        headers.insert(header::COOKIE, value);
        strip_session_cookie(&mut headers, "_portcullis");
        assert_eq!(headers[header::COOKIE].as_bytes(), b"theme=\xff");
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(split_host_port("a.test:8080"), Some(("a.test", Some(8080))));
        assert_eq!(split_host_port("a.test"), Some(("a.test", None)));
        assert_eq!(split_host_port("[::1]:443"), Some(("::1", Some(443))));
        assert_eq!(split_host_port("[::1]"), Some(("::1", None)));
        assert_eq!(split_host_port("a.test:x"), None);
        assert_eq!(split_host_port("[::1]x"), None);
    }

    #[test]
    fn bearer_forms() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("authorization", "Bearer Portcullis-abc")
            .unwrap();
        assert_eq!(bearer_token(&req), Some("abc"));
        req.insert_header("authorization", "Portcullis xyz")
            .unwrap();
        assert_eq!(bearer_token(&req), Some("xyz"));
        req.insert_header("authorization", "Basic dXNlcjpw")
            .unwrap();
        assert_eq!(bearer_token(&req), None);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header("content-length", "5").unwrap();
        req.append_header("transfer-encoding", "chunked").unwrap();
        assert!(reject_smuggling(&req).is_err());
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header("transfer-encoding", "gzip, chunked")
            .unwrap();
        assert!(reject_smuggling(&req).is_err());
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header("transfer-encoding", "chunked").unwrap();
        assert!(reject_smuggling(&req).is_ok());
        assert!(raw_has_content_length(
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 5\r\n\r\n"
        ));
        assert!(!raw_has_content_length(
            b"POST / HTTP/1.1\r\nHost: a\r\nX-Content-Length: 5\r\n\r\n"
        ));
    }
}
