//! `--memory`: what sessions and routes cost the proxy in resident memory.
//!
//! Sessions: the proxy's VmRSS before and after every seeded session sent one request, first
//! on a route without identity headers (the session cache, the opened-cookie memo), then on
//! the authorized route (each allowed session's identity JWT signed, its signature cached),
//! a second time there (the JWT now kept ready to send), then once more after those JWTs went
//! unused long enough to be dropped (each assertion then keeps its signature only), each growth
//! scaled to 100,000 sessions. Routes: proxy processes against the same databroker, one
//! with the bench's routes and others with `routes` more (each a host of its own, a policy of
//! three criteria like the authorized route's: every policy different, then 50 policies each
//! repeated by many routes, which share one compiled copy), their VmRSS once ready; the
//! difference divided by `routes`.
//!
//! RSS moves by whole pages and the allocator keeps freed memory, so small counts say little:
//! use 100,000 sessions and 10,000 routes (the defaults here).

use std::time::Duration;

use portcullis_harness::free_port;
use portcullis_harness::route::three_criteria_table;
use serde::Serialize;

use crate::procstat::rss_mib;

/// What `--memory` measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub sessions: usize,
    pub rss_idle_mib: f64,
    /// After one request per session on a route without identity headers.
    pub rss_sessions_mib: f64,
    /// After one more request per session on the authorized route (identity JWT on).
    pub rss_with_jwt_mib: f64,
    /// After a second request per session there: its JWT is then kept ready to send.
    pub rss_jwt_kept_mib: f64,
    /// The same once those JWTs went unused for
    /// [`portcullis_auth::jwt::ASSERTION_KEEP_JWT_SECS`] and a renewal run dropped them.
    pub rss_jwt_idle_mib: f64,
    pub routes: usize,
    pub rss_few_routes_mib: f64,
    /// Every route's policy its own.
    pub rss_many_routes_mib: f64,
    /// 50 policies, each repeated by many routes.
    pub rss_repeated_policies_mib: f64,
}

impl Report {
    /// MiB per 100,000 sessions, session cache only.
    pub fn sessions_mib_per_100k(&self) -> f64 {
        per_100k(self.rss_sessions_mib - self.rss_idle_mib, self.sessions)
    }

    /// MiB per 100,000 sessions with their identity JWTs.
    pub fn with_jwt_mib_per_100k(&self) -> f64 {
        per_100k(self.rss_with_jwt_mib - self.rss_idle_mib, self.sessions)
    }

    /// MiB per 100,000 sessions with their identity JWTs, each asked for twice (kept).
    pub fn jwt_kept_mib_per_100k(&self) -> f64 {
        per_100k(self.rss_jwt_kept_mib - self.rss_idle_mib, self.sessions)
    }

    /// MiB per 100,000 sessions whose identity JWTs went unused (signatures kept).
    pub fn jwt_idle_mib_per_100k(&self) -> f64 {
        per_100k(self.rss_jwt_idle_mib - self.rss_idle_mib, self.sessions)
    }

    /// Bytes per route, every policy its own.
    pub fn bytes_per_route(&self) -> f64 {
        self.per_route(self.rss_many_routes_mib)
    }

    /// Bytes per route when routes repeat 50 policies.
    pub fn bytes_per_route_repeated(&self) -> f64 {
        self.per_route(self.rss_repeated_policies_mib)
    }

    fn per_route(&self, rss_mib: f64) -> f64 {
        (rss_mib - self.rss_few_routes_mib) * 1024.0 * 1024.0 / self.routes.max(1) as f64
    }

    pub fn table(&self) -> String {
        let goal = |ok: bool| if ok { "MET" } else { "MISSED" };
        let with_jwt = self.with_jwt_mib_per_100k();
        let jwt_kept = self.jwt_kept_mib_per_100k();
        let per_route = self.bytes_per_route();
        format!(
            "| what | RSS before | RSS after | cost | goal |\n\
             | --- | ---: | ---: | ---: | --- |\n\
             | {n} sessions, one request each, no identity headers | {a:.1} MiB | {b:.1} MiB | {s:.1} MiB per 100k | |\n\
             | the same sessions, identity JWT on | {a:.1} MiB | {c:.1} MiB | {j:.1} MiB per 100k | ≤ 40 MiB per 100k: {jg} |\n\
             | the same, a second request each (JWTs kept) | {a:.1} MiB | {k:.1} MiB | {jk:.1} MiB per 100k | ≤ 40 MiB per 100k: {kg} |\n\
             | the same, their JWTs unused for {keep} s | {a:.1} MiB | {g:.1} MiB | {ji:.1} MiB per 100k | |\n\
             | {r} routes, every policy its own | {d:.1} MiB | {e:.1} MiB | {pr:.0} bytes per route | ≤ 2 KB per route: {rg} |\n\
             | {r} routes, 50 policies repeated | {d:.1} MiB | {f:.1} MiB | {rr:.0} bytes per route | |\n",
            n = self.sessions,
            a = self.rss_idle_mib,
            b = self.rss_sessions_mib,
            c = self.rss_with_jwt_mib,
            s = self.sessions_mib_per_100k(),
            j = with_jwt,
            jg = goal(with_jwt <= 40.0),
            k = self.rss_jwt_kept_mib,
            jk = jwt_kept,
            kg = goal(jwt_kept <= 40.0),
            keep = portcullis_auth::jwt::ASSERTION_KEEP_JWT_SECS,
            g = self.rss_jwt_idle_mib,
            ji = self.jwt_idle_mib_per_100k(),
            r = self.routes,
            d = self.rss_few_routes_mib,
            e = self.rss_many_routes_mib,
            f = self.rss_repeated_policies_mib,
            rr = self.bytes_per_route_repeated(),
            pr = per_route,
            rg = goal(per_route <= 2048.0),
        )
    }
}

fn per_100k(mib: f64, n: usize) -> f64 {
    mib * 100_000.0 / n.max(1) as f64
}

/// The proxy's RSS once it stopped moving (background work after a burst settles).
pub async fn settled_rss(pid: u32) -> f64 {
    let mut last = rss_mib(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_mib(pid);
        if (now - last).abs() < 0.25 {
            return now;
        }
        last = now;
    }
    last
}

/// `config` with its listener and metrics listener on free ports, for a second proxy beside the
/// first (its routes keep their hosts, ports included).
pub fn on_new_ports(config: &str) -> String {
    config
        .lines()
        .map(|line| {
            if line.starts_with("address = ") {
                format!("address = \"127.0.0.1:{}\"", free_port())
            } else if line.starts_with("metrics_address = ") {
                format!("metrics_address = \"127.0.0.1:{}\"", free_port())
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// `routes` extra routes, each on a host of its own, in the form the proxy config takes: each
/// policy names a group of its own when `distinct`, else one of 50.
pub fn extra_routes(routes: usize, port: u16, upstream: &str, distinct: bool) -> String {
    (0..routes)
        .map(|i| {
            let group = format!("team-{}", if distinct { i } else { i % 50 });
            three_criteria_table(
                &format!("http://r{i}.example.localhost:{port}"),
                upstream,
                &group,
            )
        })
        .collect()
}
