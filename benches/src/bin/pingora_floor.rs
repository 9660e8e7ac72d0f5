//! `pingora-floor`: Pingora with nothing of Portcullis, a bench peer.
//!
//! A `ProxyHttp` whose only hook is `upstream_peer` (every request to one upstream, over a
//! pooled keep-alive connection), on the Pingora build Portcullis links (the workspace's
//! patched `pingora-proxy` included) and with the settings of Portcullis that change a request's
//! cost: mimalloc, one thread per CPU (or `--threads`), the 16 KiB client read buffer, fast
//! timers only for waits of a minute or less. No routing, no authorization, no header changes,
//! no access log. What a request costs here, any proxy built on Pingora pays: the bench runs it
//! as scenario `pingora-floor`, to tell Pingora's share of a gap to nginx from Portcullis's.
//! With `--tls-listen`, a second listener serves HTTPS through Pingora's own rustls acceptor
//! (scenario `pingora-floor-tls`).

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::Server;
use pingora::services::listening::Service;

/// The allocator of the `portcullis` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Pingora alone in front of one upstream.
#[derive(Parser, Debug)]
#[command(name = "pingora-floor")]
struct Args {
    /// Where to listen (loopback only).
    #[arg(long)]
    listen: SocketAddr,
    /// The upstream every request goes to (loopback only).
    #[arg(long)]
    upstream: SocketAddr,
    /// Worker threads (default: one per CPU, as Portcullis).
    #[arg(long)]
    threads: Option<usize>,
    /// A second listener, on HTTPS (loopback only); needs --cert and --key.
    #[arg(long, requires_all = ["cert", "key"])]
    tls_listen: Option<SocketAddr>,
    /// PEM certificate chain of the HTTPS listener.
    #[arg(long)]
    cert: Option<String>,
    /// PEM private key of the HTTPS listener.
    #[arg(long)]
    key: Option<String>,
}

struct Floor {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    for addr in [Some(args.listen), Some(args.upstream), args.tls_listen]
        .into_iter()
        .flatten()
    {
        if !addr.ip().is_loopback() {
            eprintln!("pingora-floor: {addr} is not a loopback address");
            return std::process::ExitCode::from(2);
        }
    }
    // Portcullis's own settings: threads, timers, shutdown, per-process pid file.
    let mut conf = portcullis::server::server_conf();
    if let Some(threads) = args.threads {
        conf.threads = threads;
    }

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let app = pingora::proxy::http_proxy(
        &server.configuration,
        Floor {
            upstream: args.upstream,
        },
    );
    let mut service = Service::new("pingora floor".to_string(), app);
    let buffers = L4BufferSettings::new(
        portcullis::server::CLIENT_READ_BUFFER_BYTES,
        DEFAULT_L4_WRITE_BUFFER_SIZE,
    );
    service.add_listener(ListenerConfig::tcp(args.listen.to_string()).l4_buffer(buffers));
    if let (Some(addr), Some(cert), Some(key)) = (args.tls_listen, &args.cert, &args.key) {
        let settings = match TlsSettings::intermediate(cert, key) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pingora-floor: --cert/--key: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        service.add_listener(
            ListenerConfig::tcp(addr.to_string())
                .tls(settings)
                .l4_buffer(buffers),
        );
    }
    server.add_service(service);
    server.run_forever()
}
