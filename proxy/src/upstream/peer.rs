//! Peer choice: how Portcullis connects to one backend of a route (TLS or h2c settings, and
//! the route's timeouts).

use std::time::Duration;

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{Route, Upstream};

/// Backends tried per request when connections fail.
pub const MAX_CONNECT_ATTEMPTS: u32 = 3;

/// The peer for `upstream` with the route's TLS (or h2c) settings; timeouts are set by the
/// caller.
pub fn upstream_http_peer(upstream: &Upstream) -> HttpPeer {
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

/// The peer for a request to `upstream` of `route`, with the route's timeouts.
pub fn for_request(route: &Route, upstream: &Upstream) -> HttpPeer {
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
    peer
}
