//! The per-request state that Pingora's phases share: one typed [`Ctx`] per request.

use std::os::unix::io::RawFd;
use std::sync::Arc;
use std::time::Instant;

use crate::authorize::Found;
use crate::config::Route;
use crate::observe::outcome::Outcome;
use crate::request::Validated;
use crate::state::Runtime;
use crate::upstream::deadline::Deadline;
use crate::upstream::streams::StreamWatch;

/// Per-request state shared by the phases.
pub struct Ctx {
    pub(crate) request_id: String,
    start: Instant,
    /// The configuration this request is served by (a reload does not change it mid-request).
    pub(crate) runtime: Option<Arc<Runtime>>,
    /// What validation learned of the request.
    pub(crate) request: Validated,
    /// The route and session authorization found, and how the credential came.
    pub(crate) found: Found,
    /// The upstream of the route this attempt goes to.
    pub(crate) upstream: Option<usize>,
    /// Upstreams of the route tried for this request (bit `i`: upstream `i`).
    pub(crate) tried: u64,
    pub(crate) outcome: Outcome,
    /// Counts this request in `portcullis_requests_in_flight` until it is dropped.
    _in_flight: InFlight,
    /// The upstream connection's socket, when the connection is HTTP/1 (this request's alone).
    pub(crate) upstream_fd: Option<RawFd>,
    /// The re-check of a live websocket or streamed response ([`crate::upstream::streams`]).
    pub(crate) stream: Option<StreamWatch>,
    /// The route's `timeout` for the upstream's whole response ([`crate::upstream::deadline`]).
    pub(crate) deadline: Option<Deadline>,
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

// === impl Ctx ===

impl Ctx {
    /// A new request's state, counted in `in_flight` while it lives.
    pub fn new(in_flight: &prometheus::IntGauge) -> Self {
        Ctx {
            request_id: new_request_id(),
            start: Instant::now(),
            runtime: None,
            request: Validated::default(),
            found: Found::default(),
            upstream: None,
            tried: 0,
            outcome: Outcome::None,
            _in_flight: InFlight::new(in_flight),
            upstream_fd: None,
            stream: None,
            deadline: None,
        }
    }

    /// What was decided for the request.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// When the request started.
    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    /// The request's runtime and matched route, once it has both.
    pub(crate) fn route(&self) -> Option<(&Runtime, &Route)> {
        let runtime = self.runtime.as_deref()?;
        let route = runtime.routes.routes().get(self.found.route?)?;
        Some((runtime, route))
    }

    /// Refusals are answered in JSON, not HTML.
    pub(crate) fn answers_json(&self) -> bool {
        self.request.json || self.found.bearer
    }
}

/// A 16-hex-digit random request id.
pub fn new_request_id() -> String {
    use rand::Rng as _;
    request_id_text(rand::thread_rng().gen::<u64>())
}

/// `n` as 16 lowercase hex digits, as `{:016x}` formats it, without the formatting machinery
/// (this runs for every request).
fn request_id_text(n: u64) -> String {
    let mut digits = [0u8; 16];
    // Always fits (8 bytes, 16 digits), and hex digits are ASCII: nothing is lost either way.
    let _ = hex::encode_to_slice(n.to_be_bytes(), &mut digits);
    String::from_utf8_lossy(&digits).into_owned()
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
}
