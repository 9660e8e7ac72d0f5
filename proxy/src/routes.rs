//! The route table: finds the first route (in file order) whose host and path match.
//!
//! Hosts are indexed — exact names in a hash map, `*.` wildcards by suffix — so a lookup
//! costs the same with ten routes or ten thousand; only the routes of the matching host are
//! tried against the path.

// foldhash, seeded per process: the table is built once from the configuration, so a lookup by a
// client-chosen host cannot lengthen any chain; SipHash would cost more than the lookup.
use hashbrown::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::authority::Listener;
use crate::config::{HostPattern, PathMatcher, Route, Upstream};

/// The compiled routes with their host index.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Host name → indexes of routes with that exact host, ascending.
    exact: HashMap<String, Vec<usize>>,
    /// Suffix (".example.com") → indexes of wildcard routes, ascending.
    wildcard: HashMap<String, Vec<usize>>,
    /// Per route: the weighted round-robin schedule and its cursor.
    balancers: Vec<Balancer>,
    /// Which ports a route's `from` serves.
    listener: Listener,
}

#[derive(Debug)]
struct Balancer {
    schedule: Vec<usize>,
    next: AtomicUsize,
    /// Per upstream of the route, in `to` order.
    health: Arc<[Health]>,
}

/// How long a connection failure takes a backend out of the rotation (passive health).
pub const PASSIVE_EJECTION: Duration = Duration::from_secs(10);

/// The health of one backend of one route.
#[derive(Debug, Default)]
pub struct Health {
    /// Milliseconds (since [`epoch`]) until which a connection failure keeps it out.
    down_until_ms: AtomicU64,
    /// The active health check (when the route has one) found it unhealthy.
    active_down: AtomicBool,
}

/// The process-wide clock origin for [`Health`].
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        !self.active_down.load(Ordering::Relaxed)
            && self.down_until_ms.load(Ordering::Relaxed) <= now_ms()
    }

    /// A connection to it failed: out of the rotation for [`PASSIVE_EJECTION`].
    pub fn connection_failed(&self) {
        let until = now_ms().saturating_add(PASSIVE_EJECTION.as_millis() as u64);
        self.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// The active health check's verdict.
    pub fn set_active(&self, healthy: bool) {
        self.active_down.store(!healthy, Ordering::Relaxed);
    }
}

// === impl RouteTable ===

impl RouteTable {
    pub fn new(routes: Vec<Route>, listener: Listener) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            match &r.from.host {
                HostPattern::Exact(h) => exact.entry(h.clone()).or_default().push(i),
                HostPattern::Wildcard(s) => wildcard.entry(s.clone()).or_default().push(i),
            }
        }
        let balancers = routes.iter().map(|r| Balancer::new(&r.upstreams)).collect();
        Self {
            routes,
            exact,
            wildcard,
            balancers,
            listener,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether any route serves the authority `host` (lowercase, no port, no trailing dot) on
    /// `port`, whatever the path.
    pub fn serves(&self, host: &str, port: u16) -> bool {
        let serves = |&i: &usize| self.listener.serves(self.routes[i].from.port, port);
        self.exact
            .get(host)
            .is_some_and(|list| list.iter().any(serves))
            || self
                .wildcard_candidates(host)
                .any(|list| list.iter().any(serves))
    }

    /// The first route in file order matching `host` (lowercase, no port, no trailing dot),
    /// the request's `port` ([`Listener::serves`]), and the normalized `path`.
    pub fn find(&self, host: &str, port: u16, path: &str) -> Option<&Route> {
        let matches = |&i: &usize| {
            let r = &self.routes[i];
            self.listener.serves(r.from.port, port) && path_matches(&r.path, path)
        };
        let exact = self
            .exact
            .get(host)
            .and_then(|list| list.iter().copied().find(|i| matches(i)));
        let wildcard = self
            .wildcard_candidates(host)
            .filter_map(|list| list.iter().copied().find(|i| matches(i)))
            .min();
        let best = match (exact, wildcard) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(&self.routes[best])
    }

    /// The upstream for the next request on `route`.
    pub fn pick_upstream<'r>(&self, route: &'r Route) -> Option<(usize, &'r Upstream)> {
        self.pick_upstream_excluding(route, 0)
    }

    /// The next upstream of `route` in weighted round-robin order that is healthy and not in
    /// `tried` (bit `i` set: upstream `i` was tried already). When every untried upstream is
    /// unhealthy, the next untried one anyway (better a chance than a certain 502); `None` once
    /// all were tried.
    pub fn pick_upstream_excluding<'r>(
        &self,
        route: &'r Route,
        tried: u64,
    ) -> Option<(usize, &'r Upstream)> {
        let b = self.balancers.get(route.index)?;
        let len = b.schedule.len();
        if len == 0 {
            return None;
        }
        let n = b.next.fetch_add(1, Ordering::Relaxed);
        let untried = |i: usize| i >= 64 || tried & (1u64 << i) == 0;
        let mut fallback = None;
        for k in 0..len {
            let i = b.schedule[(n + k) % len];
            if !untried(i) {
                continue;
            }
            if b.health.get(i).is_none_or(Health::is_healthy) {
                return Some((i, route.upstreams.get(i)?));
            }
            fallback.get_or_insert(i);
        }
        let i = fallback?;
        Some((i, route.upstreams.get(i)?))
    }

    /// The health of upstream `upstream` of route `route`.
    pub fn health(&self, route: usize, upstream: usize) -> Option<&Health> {
        self.balancers.get(route)?.health.get(upstream)
    }

    /// The health records of a route's upstreams (for the active health checker).
    pub fn route_health(&self, route: usize) -> Option<Arc<[Health]>> {
        self.balancers.get(route).map(|b| b.health.clone())
    }

    fn wildcard_candidates<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Vec<usize>> {
        host.match_indices('.')
            .filter(move |(i, _)| *i > 0 && *i + 1 < host.len())
            .filter_map(move |(i, _)| self.wildcard.get(&host[i..]))
    }
}

fn path_matches(matcher: &PathMatcher, path: &str) -> bool {
    match matcher {
        PathMatcher::Prefix(p) => path.starts_with(p.as_str()),
        PathMatcher::Exact(p) => path == p,
        PathMatcher::Regex(re) => re.is_match(path),
    }
}

// === impl Balancer ===

impl Balancer {
    /// Interleaves upstreams by weight (smooth weighted round robin), so weight 3:1 sends
    /// a,a,b,a rather than a,a,a,b.
    fn new(upstreams: &[Upstream]) -> Self {
        let total: i64 = upstreams.iter().map(|u| i64::from(u.weight)).sum();
        let mut current = vec![0i64; upstreams.len()];
        let mut schedule = Vec::with_capacity(total.max(0) as usize);
        for _ in 0..total.min(10_000) {
            for (c, u) in current.iter_mut().zip(upstreams) {
                *c += i64::from(u.weight);
            }
            let Some((best, _)) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, -(*i as i64)))
            else {
                break;
            };
            current[best] -= total;
            schedule.push(best);
        }
        Self {
            schedule,
            next: AtomicUsize::new(0),
            health: upstreams.iter().map(|_| Health::default()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(routes: &str) -> RouteTable {
        let text = format!(
            r#"
insecure_server = true
authenticate_service_url = "https://authenticate.example.com"
shared_secret = "{s}"
cookie_secret = "{s}"
idp_provider_url = "https://idp.example.com"
idp_client_id = "id"
idp_client_secret = "secret"
{routes}"#,
            s = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        );
        let config = Config::from_toml(&text, Vec::new(), std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"));
        let listener = config.listener();
        RouteTable::new(config.routes, listener)
    }

    #[test]
    fn first_match_in_file_order_across_exact_and_wildcard() {
        let t = table(
            r#"
[[routes]]
from = "https://*.example.com"
prefix = "/api"
to = "http://127.0.0.1:1"
allow_any_authenticated_user = true
[[routes]]
from = "https://app.example.com"
to = "http://127.0.0.1:2"
allow_any_authenticated_user = true
[[routes]]
from = "https://*.example.com"
to = "http://127.0.0.1:3"
allow_any_authenticated_user = true
"#,
        );
        assert_eq!(t.find("app.example.com", 443, "/api/x").unwrap().index, 0);
        assert_eq!(t.find("app.example.com", 443, "/other").unwrap().index, 1);
        assert_eq!(t.find("b.example.com", 443, "/other").unwrap().index, 2);
        assert_eq!(t.find("a.b.example.com", 443, "/").unwrap().index, 2);
        assert!(t.find("example.com", 443, "/").is_none());
        assert!(t.find("evil.com", 443, "/").is_none());
        assert!(t.find("app.example.com.evil.com", 443, "/").is_none());
        assert!(t.serves("app.example.com", 443) && t.serves("x.y.example.com", 80));
        assert!(!t.serves("app.example.com", 1) && !t.serves("x.example.com", 8443));
        assert!(!t.serves("example.com", 443));
    }

    #[test]
    fn path_kinds_and_ports() {
        let t = table(
            r#"
[[routes]]
from = "http://a.test:8080"
path = "/exact"
to = "http://127.0.0.1:1"
allow_any_authenticated_user = true
[[routes]]
from = "http://a.test"
regex = "/r/[0-9]+"
to = "http://127.0.0.1:1"
allow_any_authenticated_user = true
"#,
        );
        assert_eq!(t.find("a.test", 8080, "/exact").unwrap().index, 0);
        assert!(t.find("a.test", 8081, "/exact").is_none());
        assert!(t.find("a.test", 8080, "/exact/x").is_none());
        assert_eq!(t.find("a.test", 80, "/r/12").unwrap().index, 1);
        assert!(
            t.find("a.test", 80, "/r/12/x").is_none(),
            "regex is anchored"
        );
        // Without a port: the scheme's default (80 here, `insecure_server`) and the listener's
        // own (443, the default `address`), nothing else.
        assert_eq!(t.find("a.test", 443, "/r/12").unwrap().index, 1);
        assert!(t.find("a.test", 1, "/r/12").is_none());
        assert!(t.find("a.test", 8080, "/r/12").is_none());
        assert!(t.serves("a.test", 8080) && t.serves("a.test", 80) && t.serves("a.test", 443));
        assert!(!t.serves("a.test", 8081) && !t.serves("a.test", 1));
        assert!(!t.serves("b.test", 80));
    }

    #[test]
    fn weighted_round_robin_follows_weights() {
        let t = table(
            r#"
[[routes]]
from = "http://a.test"
to = ["http://127.0.0.1:1,3", "http://127.0.0.1:2"]
allow_any_authenticated_user = true
"#,
        );
        let route = &t.routes()[0];
        let mut counts = [0; 2];
        for _ in 0..400 {
            let (_, u) = t.pick_upstream(route).unwrap();
            counts[usize::from(u.addr.port() == 2)] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[test]
    fn unhealthy_and_tried_backends_are_skipped() {
        let t = table(
            r#"
[[routes]]
from = "http://a.test"
to = ["http://127.0.0.1:1,3", "http://127.0.0.1:2", "http://127.0.0.1:3"]
allow_any_authenticated_user = true
"#,
        );
        let route = &t.routes()[0];
        t.health(0, 0).unwrap().connection_failed();
        for _ in 0..50 {
            let (i, _) = t.pick_upstream(route).unwrap();
            assert_ne!(i, 0, "a backend whose connection failed is out for a while");
        }
        // Tried ones are skipped even when healthy; the last untried one is used even when down.
        assert_eq!(t.pick_upstream_excluding(route, 0b110).unwrap().0, 0);
        assert!(t.pick_upstream_excluding(route, 0b111).is_none());
        t.health(0, 1).unwrap().set_active(false);
        for _ in 0..20 {
            assert_eq!(t.pick_upstream(route).unwrap().0, 2);
        }
        t.health(0, 1).unwrap().set_active(true);
        assert!((0..20).any(|_| t.pick_upstream(route).unwrap().0 == 1));
    }
}
