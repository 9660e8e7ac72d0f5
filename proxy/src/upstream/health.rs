//! Active HTTP health checks (`health_check` on a route).
//!
//! One background thread per route table (started by whoever installs the table: start-up
//! and reload) probes every upstream of every route that has a
//! `health_check`, through the same peers (TLS settings, h2c) that requests use, and flips
//! the upstream's [`Health`] after `unhealthy_threshold` consecutive failures or
//! `healthy_threshold` consecutive successes. The thread stops by itself once the route table
//! is gone (after a reload replaced it).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use tracing::{info, warn};

use crate::config::HealthCheck;
use crate::routes::{Health, RouteTable};
use crate::upstream::peer::upstream_http_peer;

/// One upstream of one route to probe.
struct Target {
    route: String,
    upstream: String,
    index: usize,
    health: Weak<[Health]>,
    peer: HttpPeer,
    host: String,
    check: HealthCheck,
    successes: u32,
    failures: u32,
    healthy: bool,
    due: Instant,
}

/// Starts the checker for `table` when any route has a `health_check`.
pub fn spawn(table: &RouteTable) {
    let mut targets = Vec::new();
    for route in table.routes() {
        let Some(check) = &route.options().health_check else {
            continue;
        };
        let Some(health) = table.route_health(route.index) else {
            continue;
        };
        for (index, upstream) in route.upstreams.iter().enumerate() {
            let mut peer = upstream_http_peer(upstream);
            peer.options.connection_timeout = Some(check.timeout);
            peer.options.total_connection_timeout = Some(check.timeout);
            peer.options.read_timeout = Some(check.timeout);
            peer.options.write_timeout = Some(check.timeout);
            targets.push(Target {
                route: route.name.clone(),
                upstream: upstream.to_string(),
                index,
                health: Arc::downgrade(&health),
                peer,
                host: upstream.authority.clone(),
                check: check.clone(),
                successes: 0,
                failures: 0,
                healthy: true,
                due: Instant::now(),
            });
        }
    }
    if targets.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("health-checks".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(error = %e, "health checks: cannot start a runtime");
                    return;
                }
            };
            rt.block_on(run(targets));
        });
    if let Err(e) = spawned {
        warn!(error = %e, "health checks: cannot start the thread");
    }
}

async fn run(mut targets: Vec<Target>) {
    let connector = Connector::new(None);
    loop {
        let now = Instant::now();
        let mut alive = false;
        for t in &mut targets {
            let Some(health) = t.health.upgrade() else {
                continue;
            };
            alive = true;
            if t.due > now {
                continue;
            }
            t.due = now + t.check.interval;
            let ok = probe(&connector, t).await;
            if ok {
                t.successes = t.successes.saturating_add(1);
                t.failures = 0;
            } else {
                t.failures = t.failures.saturating_add(1);
                t.successes = 0;
            }
            let verdict = if t.healthy && t.failures >= t.check.unhealthy_threshold {
                Some(false)
            } else if !t.healthy && t.successes >= t.check.healthy_threshold {
                Some(true)
            } else {
                None
            };
            if let Some(healthy) = verdict {
                t.healthy = healthy;
                if let Some(h) = health.get(t.index) {
                    h.set_active(healthy);
                }
                if healthy {
                    info!(route = %t.route, upstream = %t.upstream, "health check: upstream healthy again");
                } else {
                    warn!(route = %t.route, upstream = %t.upstream, "health check: upstream unhealthy, out of the rotation");
                }
            }
        }
        if !alive {
            return;
        }
        let next = targets
            .iter()
            .filter(|t| t.health.strong_count() > 0)
            .map(|t| t.due)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::time::sleep_until(next.into()).await;
    }
}

/// One `GET` of the check path: healthy on a 2xx or 3xx answer in time.
async fn probe(connector: &Connector, t: &Target) -> bool {
    let attempt = async {
        let (mut session, _reused) = connector.get_http_session(&t.peer).await.ok()?;
        let mut req = RequestHeader::build("GET", t.check.path.as_bytes(), None).ok()?;
        req.insert_header(http::header::HOST, t.host.as_str())
            .ok()?;
        req.insert_header("user-agent", "portcullis-health-check")
            .ok()?;
        session.write_request_header(Box::new(req)).await.ok()?;
        session.finish_request_body().await.ok()?;
        session.read_response_header().await.ok()?;
        let status = session.response_header()?.status.as_u16();
        session.shutdown().await;
        Some((200..400).contains(&status))
    };
    matches!(
        tokio::time::timeout(t.check.timeout, attempt).await,
        Ok(Some(true))
    )
}
