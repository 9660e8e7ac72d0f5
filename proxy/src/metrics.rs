//! Prometheus metrics and the metrics listener (`/metrics`, `/healthz`, `/readyz`).
//!
//! The metrics listener is its own Pingora service on `metrics_address`, never on the proxy
//! listener, so that nothing a route serves can shadow it and no user can read it through a
//! route host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric Portcullis exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub decisions: IntCounterVec,
    pub duration: HistogramVec,
    pub session_cache_hits: IntCounter,
    pub session_cache_misses: IntCounter,
    pub identity_signatures: IntGauge,
    /// The part of `identity_signatures` a request waited for (the rest: background renewals).
    pub identity_signatures_on_request_path: IntGauge,
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
    /// Set once the session follower is in sync with the store.
    pub ready: AtomicBool,
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
        let identity_signatures = IntGauge::new(
            "portcullis_identity_jwt_signatures_total",
            "ES256 identity assertions signed since start (cached assertions are not counted)",
        )?;
        let identity_signatures_on_request_path = IntGauge::new(
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
            identity_signatures,
            identity_signatures_on_request_path,
            sign_ins,
            session_refreshes,
            identity_manager_leader,
            session_sync_connected,
            reload_success,
            reload_timestamp,
            in_flight,
            streams_closed,
            ready: AtomicBool::new(false),
        })
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for valid metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
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
