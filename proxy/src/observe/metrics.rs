//! Prometheus metrics and the metrics listener (`/metrics`, `/healthz`, `/readyz`).
//!
//! The metrics listener is its own Pingora service on `metrics_address`, never on the proxy
//! listener, so that nothing a route serves can shadow it and no user can read it through a
//! route host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::observe::outcome::Outcome;

/// The statuses whose `portcullis_requests_total` series a route keeps (others are looked up
/// by label).
const KEPT_STATUSES: [u16; 11] = [200, 201, 204, 301, 302, 304, 401, 403, 404, 502, 503];

/// The decision outcomes whose series are kept: those of the requests a proxy sees most.
const KEPT_OUTCOMES: [&str; 4] = ["allow", "public", "deny", "sign_in"];

/// Every metric Portcullis exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub decisions: IntCounterVec,
    pub duration: HistogramVec,
    pub session_cache_hits: IntCounter,
    pub session_cache_misses: IntCounter,
    /// Sessions the last preload put in the cache from the store's snapshot.
    pub session_cache_preloaded: IntGauge,
    /// ES256 identity assertions signed since start; a counter that catches up with the
    /// signer's own count at each scrape ([`Metrics::count_identity_signatures`]).
    identity_signatures: IntCounter,
    /// The part of `identity_signatures` a request waited for (the rest: background renewals).
    identity_signatures_on_request_path: IntCounter,
    /// Held while the two counters above catch up, so that two scrapes at once add each
    /// signature once.
    identity_signatures_lock: Mutex<()>,
    pub sign_ins: IntCounterVec,
    /// Session refreshes by result (`success`, `invalid_grant`, `transient`, ...).
    pub session_refreshes: IntCounterVec,
    /// 1 while this process holds the `identity_manager` lease.
    pub identity_manager_leader: IntGauge,
    /// 1 while the session follower is connected to the databroker's change stream.
    pub session_sync_connected: IntGauge,
    pub reload_success: IntGauge,
    pub reload_timestamp: IntGauge,
    /// Requests read and not yet finished (a shutdown waits for this to reach 0).
    pub in_flight: IntGauge,
    /// Websockets and streamed responses closed because their authorization ended, by reason
    /// (`signed_out`, `policy`).
    pub streams_closed: IntCounterVec,
    /// TLS handshakes on the proxy listener that failed or ran past the head deadline.
    pub tls_handshake_failures: IntCounter,
    /// Set once the proxy listener accepts connections and the session cache's first preload
    /// has ended (a databroker process: once it serves gRPC).
    pub ready: AtomicBool,
    /// `decisions`' series for [`KEPT_OUTCOMES`].
    kept_decisions: Kept<&'static str, IntCounter, { KEPT_OUTCOMES.len() }>,
}

/// Series of a metric vector kept for a fixed set of label values, each resolved the first time
/// it is counted in. `with_label_values` hashes the labels and takes the vector's lock, which
/// every thread shares, on each call; a kept series costs neither. As with `with_label_values`,
/// a series appears in `/metrics` once something is counted in it, not before.
struct Kept<K, M, const N: usize> {
    keys: [K; N],
    series: [OnceLock<M>; N],
}

/// A route's series of `portcullis_requests_total` (for [`KEPT_STATUSES`]) and of
/// `portcullis_request_duration_seconds`, kept by the runtime for as long as its configuration
/// is current.
pub struct RouteSeries {
    requests: Kept<u16, IntCounter, { KEPT_STATUSES.len() }>,
    duration: OnceLock<Histogram>,
}

/// The metrics listener's HTTP app.
pub struct MetricsApp {
    metrics: Arc<Metrics>,
    refresh: Box<dyn Fn(&Metrics) + Send + Sync>,
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("portcullis_requests_total", "Requests by route and status"),
            &["route", "status"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_decisions_total",
                "Authorization decisions by outcome",
            ),
            &["outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from request to end of response, by route",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )?;
        let session_cache_hits = IntCounter::new(
            "portcullis_session_cache_hits_total",
            "Session lookups answered by the cache",
        )?;
        let session_cache_misses = IntCounter::new(
            "portcullis_session_cache_misses_total",
            "Session lookups that went to the databroker",
        )?;
        let session_cache_preloaded = IntGauge::new(
            "portcullis_session_cache_preloaded",
            "Sessions the last preload put in the session cache from the databroker's snapshot",
        )?;
        let identity_signatures = IntCounter::new(
            "portcullis_identity_jwt_signatures_total",
            "ES256 identity assertions signed since start (cached assertions are not counted)",
        )?;
        let identity_signatures_on_request_path = IntCounter::new(
            "portcullis_identity_jwt_request_path_signatures_total",
            "Of those, the ones a request waited for (the others were renewals signed in the background)",
        )?;
        let sign_ins = IntCounterVec::new(
            Opts::new("portcullis_sign_ins_total", "Completed and failed sign-ins"),
            &["result"],
        )?;
        let reload_success = IntGauge::new(
            "portcullis_config_last_reload_success",
            "1 when the last configuration load or reload succeeded, 0 when it was rejected",
        )?;
        let reload_timestamp = IntGauge::new(
            "portcullis_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load or reload",
        )?;
        registry.register(Box::new(reload_success.clone()))?;
        registry.register(Box::new(reload_timestamp.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(session_cache_hits.clone()))?;
        registry.register(Box::new(session_cache_misses.clone()))?;
        registry.register(Box::new(session_cache_preloaded.clone()))?;
        registry.register(Box::new(identity_signatures.clone()))?;
        registry.register(Box::new(identity_signatures_on_request_path.clone()))?;
        let in_flight = IntGauge::new(
            "portcullis_requests_in_flight",
            "Requests being handled right now",
        )?;
        registry.register(Box::new(sign_ins.clone()))?;
        let session_refreshes = IntCounterVec::new(
            Opts::new(
                "portcullis_session_refreshes_total",
                "Session refreshes with the identity provider, by result",
            ),
            &["result"],
        )?;
        let identity_manager_leader = IntGauge::new(
            "portcullis_identity_manager_leader",
            "1 while this process holds the identity_manager lease and refreshes sessions",
        )?;
        let session_sync_connected = IntGauge::new(
            "portcullis_session_sync_connected",
            "1 while the session cache follows the databroker's change stream",
        )?;
        registry.register(Box::new(session_refreshes.clone()))?;
        registry.register(Box::new(identity_manager_leader.clone()))?;
        registry.register(Box::new(session_sync_connected.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        let streams_closed = IntCounterVec::new(
            Opts::new(
                "portcullis_streams_closed_total",
                "Websockets and streamed responses closed by a re-check of their authorization, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(streams_closed.clone()))?;
        let tls_handshake_failures = IntCounter::new(
            "portcullis_tls_handshake_failures_total",
            "TLS handshakes on the proxy listener that failed or timed out",
        )?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        // Both series exist from the start, so that a dashboard sees 0 rather than nothing.
        for reason in ["signed_out", "policy"] {
            streams_closed.with_label_values(&[reason]);
        }
        Ok(Self {
            registry,
            requests,
            decisions,
            duration,
            session_cache_hits,
            session_cache_misses,
            session_cache_preloaded,
            identity_signatures,
            identity_signatures_on_request_path,
            identity_signatures_lock: Mutex::new(()),
            sign_ins,
            session_refreshes,
            identity_manager_leader,
            session_sync_connected,
            reload_success,
            reload_timestamp,
            in_flight,
            streams_closed,
            tls_handshake_failures,
            ready: AtomicBool::new(false),
            kept_decisions: Kept::new(KEPT_OUTCOMES),
        })
    }

    /// Brings `portcullis_identity_jwt_signatures_total` and
    /// `portcullis_identity_jwt_request_path_signatures_total` up to the signer's counts since
    /// start (`total`, and the part a request waited for).
    pub fn count_identity_signatures(&self, total: u64, on_request_path: u64) {
        let _held = self
            .identity_signatures_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (counter, now) in [
            (&self.identity_signatures, total),
            (&self.identity_signatures_on_request_path, on_request_path),
        ] {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
    }

    /// Counts an authorization decision.
    pub fn decided(&self, outcome: Outcome) {
        let outcome = outcome.as_str();
        let by_label = || self.decisions.with_label_values(&[outcome]);
        match self.kept_decisions.get(outcome, by_label) {
            Some(counter) => counter.inc(),
            None => by_label().inc(),
        }
    }

    /// Counts a finished request of the route named `route` (`""`: none), and its duration;
    /// `series` are the route's kept series, when it has them.
    pub fn finished(&self, route: &str, series: Option<&RouteSeries>, status: u16, seconds: f64) {
        let requests = || {
            let mut code = itoa::Buffer::new();
            self.requests
                .with_label_values(&[route, code.format(status)])
        };
        match series.and_then(|s| s.requests.get(status, requests)) {
            Some(counter) => counter.inc(),
            None => requests().inc(),
        }
        let duration = || self.duration.with_label_values(&[route]);
        match series {
            Some(s) => s.duration.get_or_init(duration).observe(seconds),
            None => duration().observe(seconds),
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for valid metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

// === impl Kept ===

impl<K: Copy + PartialEq, M, const N: usize> Kept<K, M, N> {
    fn new(keys: [K; N]) -> Self {
        Self {
            keys,
            series: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The series for `key`, resolved by `resolve` the first time; `None` when `key` is not
    /// one of the kept label values.
    fn get(&self, key: K, resolve: impl FnOnce() -> M) -> Option<&M> {
        let i = self.keys.iter().position(|k| *k == key)?;
        Some(self.series[i].get_or_init(resolve))
    }
}

// === impl RouteSeries ===

impl RouteSeries {
    pub fn new() -> Self {
        Self {
            requests: Kept::new(KEPT_STATUSES),
            duration: OnceLock::new(),
        }
    }
}

impl Default for RouteSeries {
    fn default() -> Self {
        Self::new()
    }
}

// === impl MetricsApp ===

impl MetricsApp {
    pub fn new(metrics: Arc<Metrics>, refresh: Box<dyn Fn(&Metrics) + Send + Sync>) -> Self {
        Self { metrics, refresh }
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let (status, content_type, body) = match path.as_str() {
            "/metrics" => {
                (self.refresh)(&self.metrics);
                (200, "text/plain; version=0.0.4", self.metrics.render())
            }
            "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.metrics.ready.load(Ordering::Acquire) {
                    (200, "text/plain", b"ready\n".to_vec())
                } else {
                    (503, "text/plain", b"not ready\n".to_vec())
                }
            }
            _ => (404, "text/plain", b"not found\n".to_vec()),
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(metrics: &Metrics) -> String {
        String::from_utf8(metrics.render()).expect("the exposition is text")
    }

    /// The value of the exposition line that starts with `series` (name and labels).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn kept_and_looked_up_series_are_one_series() {
        let metrics = Metrics::new().expect("metrics");
        let series = RouteSeries::new();
        let route = "http://app.localhost";
        assert!(
            !rendered(&metrics).contains("portcullis_requests_total{"),
            "a kept series appears only once counted in"
        );
        // 200 is kept; 418 is not, and is looked up by label each time.
        for status in [200, 200, 418] {
            metrics.finished(route, Some(&series), status, 0.002);
        }
        metrics.finished(route, None, 200, 0.002);
        metrics.finished("", None, 404, 0.0001);
        let text = rendered(&metrics);
        let requests = |status: &str| {
            let labels =
                format!(r#"portcullis_requests_total{{route="{route}",status="{status}"}}"#);
            value(&text, &labels)
        };
        assert_eq!(requests("200"), Some(3.0), "{text}");
        assert_eq!(requests("418"), Some(1.0), "{text}");
        assert_eq!(
            value(&text, r#"portcullis_requests_total{route="",status="404"}"#),
            Some(1.0),
            "{text}"
        );
        let count = format!(r#"portcullis_request_duration_seconds_count{{route="{route}"}}"#);
        assert_eq!(value(&text, &count), Some(4.0), "{text}");
        let fast =
            format!(r#"portcullis_request_duration_seconds_bucket{{route="{route}",le="0.0025"}}"#);
        assert_eq!(value(&text, &fast), Some(4.0), "{text}");
    }

    #[test]
    fn decisions_count_in_their_outcomes_series() {
        let metrics = Metrics::new().expect("metrics");
        assert!(!rendered(&metrics).contains("portcullis_decisions_total{"));
        for outcome in [
            Outcome::Allow,
            Outcome::Allow,
            Outcome::Deny,
            Outcome::NotFound,
        ] {
            metrics.decided(outcome);
        }
        metrics.decisions.with_label_values(&["allow"]).inc();
        let text = rendered(&metrics);
        let decisions = |o: &str| {
            value(
                &text,
                &format!(r#"portcullis_decisions_total{{outcome="{o}"}}"#),
            )
        };
        assert_eq!(decisions("allow"), Some(3.0), "{text}");
        assert_eq!(decisions("deny"), Some(1.0), "{text}");
        assert_eq!(decisions("not_found"), Some(1.0), "{text}");
        assert_eq!(
            decisions("public"),
            None,
            "nothing counted, no series: {text}"
        );
    }

    #[test]
    fn identity_signatures_are_counters_that_catch_up() {
        let metrics = Metrics::new().expect("metrics");
        metrics.count_identity_signatures(5, 2);
        metrics.count_identity_signatures(5, 2);
        metrics.count_identity_signatures(7, 2);
        let text = rendered(&metrics);
        assert!(
            text.contains("# TYPE portcullis_identity_jwt_signatures_total counter"),
            "{text}"
        );
        assert_eq!(
            value(&text, "portcullis_identity_jwt_signatures_total"),
            Some(7.0)
        );
        assert_eq!(
            value(
                &text,
                "portcullis_identity_jwt_request_path_signatures_total"
            ),
            Some(2.0)
        );
    }
}
