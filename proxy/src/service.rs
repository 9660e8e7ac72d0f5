//! The Pingora service: one [`ProxyHttp`] implementation with one typed [`Ctx`], each phase
//! handing its work to the module of its stage.
//!
//! - `request_filter` decides ([`crate::decide`]): it validates and normalizes the request,
//!   serves Portcullis's own endpoints, finds the route, looks the session up and evaluates
//!   the route's policy. Any refusal is answered here ([`crate::respond`]); nothing refused
//!   reaches an upstream.
//! - `upstream_peer` picks a backend of the route ([`crate::upstream::peer`]).
//! - `upstream_request_filter` edits the request for the backend
//!   ([`crate::upstream::request`]).
//! - `connected_to_upstream` starts the route's deadline ([`crate::upstream::deadline`]).
//! - `response_filter` sets the default and the route's response headers and starts the watch of a live
//!   stream ([`crate::upstream::streams`]); `logging` records the request
//!   ([`crate::observe`]).

use std::os::unix::io::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::ErrorType;
use tracing::warn;

use crate::ctx::Ctx;
use crate::decide::{decide, Flow};
use crate::observe::outcome::Outcome;
use crate::observe::request_log;
use crate::respond::Refusal;
use crate::state::State;
use crate::upstream::deadline::Deadline;
use crate::upstream::request::ip_header_value;
use crate::upstream::response::{body_kind, set_headers, BodyKind};
use crate::upstream::streams::{StreamWatch, Subject};
use crate::upstream::{self, peer, tripwire};

/// The proxy service.
pub struct Proxy {
    pub state: Arc<State>,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(&self.state.metrics.in_flight)
    }

    /// No downstream modules. Pingora's default adds a response compression module at level 0
    /// (off), which still costs every request an allocation and a call at each of its four
    /// filter points. Portcullis passes responses on as the upstream encoded them.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// A client that half-closes its connection after a complete request still gets the
    /// answer (RFC 9112, section 9.6); a connection that is gone fails at the answer's write.
    /// A protected stream turns this back on in `response_filter`.
    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        session.set_abort_on_close(false);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let runtime = self.state.runtime.load_full();
        ctx.runtime = Some(runtime.clone());
        let flow = decide(&self.state, session, ctx, &runtime).await;
        let reply = match flow {
            Ok(Flow::Proxy) => return Ok(false),
            Ok(Flow::Reply(reply)) => {
                if ctx.outcome == Outcome::None {
                    ctx.outcome = Outcome::Portcullis;
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
                    ctx.answers_json(),
                    runtime.config.show_error_details,
                )
            }
        };
        reply.send(session, self.state.tls).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (runtime, route) = ctx
            .route()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        let (index, upstream) = runtime
            .routes
            .pick_upstream_excluding(route, ctx.tried)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "route has no upstream"))?;
        let peer = peer::for_request(route, upstream);
        ctx.upstream = Some(index);
        if index < 64 {
            ctx.tried |= 1 << index;
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (runtime, route) = ctx
            .route()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        upstream::request::rewrite(upstream_request, &self.state, runtime, route, ctx).await
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
        let timeout = ctx.route().map(|(_, route)| route.timeout);
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
        let Some((_, route)) = ctx.route() else {
            return Ok(());
        };
        set_headers(
            upstream_response,
            &route.options().set_response_headers,
            self.state.tls,
        )?;
        if upstream_response.status == 101 {
            // An upgraded connection is a stream: the client may be silent for a long while.
            session.set_read_timeout(Some(route.idle_timeout));
        }
        let protected = !route.policy.is_public();
        let body = body_kind(session.req_header(), upstream_response);
        if body.is_some_and(|b| b != BodyKind::Sized) {
            // Complete already, or a stream, which lives by `idle_timeout`.
            ctx.deadline = None;
        }
        if body == Some(BodyKind::Stream) && protected && ctx.stream.is_none() {
            // The re-check ends a stream by shutting its client connection down, which the
            // proxy must take as the client leaving (see `early_request_filter`).
            session.set_abort_on_close(true);
            watch_stream(&self.state, session, ctx);
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
                return Error::e_explain(ErrorType::ConnectionClosed, reason.outcome().as_str());
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
            return Error::e_explain(ErrorType::ConnectionClosed, reason.outcome().as_str());
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
        let Some((runtime, route)) = ctx.route() else {
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
        e.set_retry(untried && attempts < peer::MAX_CONNECT_ATTEMPTS);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let refusal = Refusal::for_proxy_error(e);
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
            let reply = refusal.reply(&ctx.request_id, ctx.answers_json(), show);
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
        let route = ctx.route();
        let route_name = route.map(|(_, r)| r.name.as_str()).unwrap_or("");
        let series = route.and_then(|(runtime, r)| runtime.route_series(r.index));
        let elapsed = ctx.start().elapsed();
        self.state
            .metrics
            .finished(route_name, series, status, elapsed.as_secs_f64());
        let req = session.req_header();
        let user = ctx.found.session.as_ref().map(|s| s.email()).unwrap_or("");
        let ip = ctx.request.client_ip.map(ip_header_value);
        request_log::access(&request_log::Access {
            request_id: &ctx.request_id,
            method: req.method.as_str(),
            host: &ctx.request.authority,
            path: &ctx.request.path,
            ip: ip.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
            status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            route: route_name,
            user,
            decision: ctx.outcome.as_str(),
            error: e.map(|e| e.etype().as_str()).unwrap_or(""),
        });
    }
}

/// Starts re-checking a websocket or streamed response every `stream_recheck_interval`.
fn watch_stream(state: &Arc<State>, session: &Session, ctx: &mut Ctx) {
    // The client connection when it is HTTP/1 (it is this request's until `logging`), else
    // the upstream one when it is HTTP/1; see `crate::upstream::streams`.
    let fd = match session.as_http1() {
        Some(h1) => Some(h1.stream().id()),
        None => ctx.upstream_fd,
    };
    let session_found = ctx.found.session.as_ref();
    let subject = Subject {
        request: session.req_header().clone(),
        asked: ctx.request.clone(),
        request_id: ctx.request_id.clone(),
        signed_in: session_found.is_some(),
        email: session_found
            .map(|s| s.email().to_owned())
            .unwrap_or_default(),
    };
    ctx.stream = Some(StreamWatch::start(state.clone(), subject, fd));
}
