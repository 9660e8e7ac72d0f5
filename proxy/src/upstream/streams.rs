//! The watch over live streams: a websocket or a streamed response (server-sent events, any
//! body of unknown length) on a protected route is authorized again every
//! `stream_recheck_interval` for as long as it lives, and closed once its session is signed out
//! or the configuration (after a reload) no longer lets it through. The re-check is
//! [`crate::authorize::authorize`], the code that authorizes every request.
//!
//! An idle websocket runs no filter at all, so the watch ends a stream through one of its
//! sockets, with a [`Tripwire`]; the client sees its connection close.
//!
//! - An HTTP/1 client connection (every websocket) is the socket: it belongs to this request
//!   until `logging`, which stops the watch before Pingora closes the connection or reads the
//!   next request on it.
//! - Otherwise (HTTP/2 client) an HTTP/1 upstream connection: the watch stops at the end of the
//!   response body, before Pingora may return the connection to its pool.
//! - Otherwise (HTTP/2 on both sides: connections shared with other requests) no socket; the
//!   stream ends at its next body chunk, with an error.

use std::os::unix::io::RawFd;
use std::sync::{Arc, OnceLock};

use pingora::http::RequestHeader;
use tracing::{debug, info};

use crate::authorize::{authorize, Asker, Found};
use crate::clock::now_unix;
use crate::observe::outcome::Outcome;
use crate::request::Validated;
use crate::respond::Refusal;
use crate::state::State;
use crate::upstream::tripwire::Tripwire;

/// Why a stream was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its session ended (sign-out, deletion, expiry).
    SignedOut,
    /// The policy (or the route table) no longer lets it through.
    Policy,
}

/// What a stream was authorized as, to authorize it again.
pub struct Subject {
    /// The client's request, path normalized, as `request_filter` judged it.
    pub request: RequestHeader,
    /// What validation learned of it.
    pub asked: Validated,
    /// The stream was authorized with a session (not by a policy that needs none).
    pub signed_in: bool,
    /// For the log line.
    pub request_id: String,
    pub email: String,
}

/// A watch over one live stream; stops when dropped (it lives in the request's `Ctx`).
pub struct StreamWatch {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    /// The stream's socket, when it has one it may shut down.
    socket: Tripwire,
    /// The watch was armed with a socket.
    has_socket: bool,
    /// Set once the watcher found the stream no longer allowed.
    closed: OnceLock<CloseReason>,
}

// === impl CloseReason ===

impl CloseReason {
    /// The metric label (`portcullis_streams_closed_total{reason}`).
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::SignedOut => "signed_out",
            CloseReason::Policy => "policy",
        }
    }

    /// The access log's `decision` for a stream closed for this reason.
    pub fn outcome(self) -> Outcome {
        match self {
            CloseReason::SignedOut => Outcome::StreamClosedSignedOut,
            CloseReason::Policy => Outcome::StreamClosedPolicy,
        }
    }
}

// === impl StreamWatch ===

impl StreamWatch {
    /// Starts watching a stream. `fd` is the socket to shut down when it must end (see the
    /// module docs for which one); it must be open and belong to this request now.
    pub fn start(state: Arc<State>, subject: Subject, fd: Option<RawFd>) -> StreamWatch {
        let socket = Tripwire::default();
        let has_socket = fd.is_some_and(|fd| socket.arm(fd));
        let shared = Arc::new(Shared {
            socket,
            has_socket,
            closed: OnceLock::new(),
        });
        let task = tokio::spawn(watch(state, subject, shared.clone()));
        StreamWatch { shared, task }
    }

    /// Why the watch closed the stream, if it did.
    pub fn closed(&self) -> Option<CloseReason> {
        self.shared.closed.get().copied()
    }

    /// The stream must end now and no socket was shut down for it: the body filters end it.
    pub fn must_end_here(&self) -> Option<CloseReason> {
        self.closed().filter(|_| !self.shared.has_socket)
    }

    /// Stops watching: from when this returns, no socket is shut down by this watch.
    pub fn stop(&self) {
        self.task.abort();
        self.shared.socket.disarm();
    }
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Re-checks the stream every `stream_recheck_interval` (read again each time, so a reload
/// changes it) until it must end, then ends it.
async fn watch(state: Arc<State>, subject: Subject, shared: Arc<Shared>) {
    loop {
        let interval = state.runtime.load().config.stream_recheck_interval;
        tokio::time::sleep(interval).await;
        let Some((reason, why, route)) = recheck(&state, &subject).await else {
            continue;
        };
        let _ = shared.closed.set(reason);
        shared.socket.trip();
        state
            .metrics
            .streams_closed
            .with_label_values(&[reason.as_str()])
            .inc();
        info!(
            target: "authorize",
            request_id = %subject.request_id,
            route = %route,
            email = %subject.email,
            decision = reason.outcome().as_str(),
            reason = %why,
            "stream closed: its authorization ended"
        );
        return;
    }
}

/// `None` while the stream may go on; otherwise why it must end, in words, and the route name.
async fn recheck(state: &State, subject: &Subject) -> Option<(CloseReason, String, String)> {
    let runtime = state.runtime.load_full();
    let asker = Asker::from(&subject.asked);
    let mut found = Found::default();
    let authorized = authorize(
        state,
        &runtime,
        &subject.request,
        &asker,
        now_unix(),
        &mut found,
    )
    .await;
    let route_name = |found: &Found| {
        found
            .route
            .and_then(|i| runtime.routes.routes().get(i))
            .map(|r| r.name.clone())
            .unwrap_or_default()
    };
    match authorized {
        Ok((_, decision)) if decision.allowed => None,
        Ok(_) if subject.signed_in && found.session.is_none() => Some((
            CloseReason::SignedOut,
            "the session ended (signed out, deleted or expired)".into(),
            route_name(&found),
        )),
        Ok((route, decision)) => Some((
            CloseReason::Policy,
            decision.explain(&route.policy),
            route.name.clone(),
        )),
        // The store cannot say: the stream goes on, and the next re-check asks again (new
        // requests get 503 meanwhile, never an allow).
        Err(Refusal::Unavailable(_)) => {
            debug!(request_id = %subject.request_id, "stream re-check: the session store is unavailable");
            None
        }
        Err(Refusal::NotFound) => Some((
            CloseReason::Policy,
            "no route matches the stream's host and path any more".into(),
            String::new(),
        )),
        Err(refusal) => Some((
            CloseReason::Policy,
            match refusal {
                Refusal::BadRequest(why) => why.text().into_owned(),
                other => other.outcome().as_str().to_owned(),
            },
            route_name(&found),
        )),
    }
}
