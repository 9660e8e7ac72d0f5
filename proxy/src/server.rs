//! Start-up: builds the shared state and the Pingora server, and runs it until a signal.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use portcullis_auth::jwt::{ASSERTION_RENEW_INTERVAL, ASSERTION_RENEW_SPREAD};
use portcullis_databroker::Store;
use tracing::info;

use crate::config::{Config, Services};
use crate::observe::metrics::{Metrics, MetricsApp};
use crate::request::head::GuardedProxy;
use crate::service::Proxy;
use crate::sessions::SessionCache;
use crate::state::State;
use crate::tls::{self, SniResolver};

/// How long a shutdown waits for in-flight requests at most.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The read buffer of a client connection, which it keeps (zeroed when the connection is
/// accepted) for as long as it is open, kept-alive and idle included: one TLS record's worth.
/// Pingora's default of 64 KiB made each idle connection cost 64 KiB of resident memory and
/// a 64 KiB memset per accept, for reads that are mostly a request head of a few hundred bytes.
/// A read at least as large as the buffer (Pingora reads bodies in larger chunks) bypasses it.
pub const CLIENT_READ_BUFFER_BYTES: usize = 16 * 1024;

/// Waits bounded by more than this use Tokio's timers instead of Pingora's fast timers.
///
/// Pingora keeps a fast timer (one per 10 ms bucket and thread) until its deadline, even when
/// the wait it bounded ended long before. Upstream reads and writes wait under the route's
/// `idle_timeout` (5 minutes by default): under load that kept about 30,000 timers, 4 MB, per
/// worker thread, a rise in RSS over the first `idle_timeout` of any run. Tokio's timers are
/// freed when the wait ends. Waits of a minute or less (the client's kept-alive wait under
/// `timeout_idle`, a route's `timeout`) stay on the cheaper fast timers, whose retention is
/// then bounded by a minute.
const FAST_TIMER_MAX_SECS: u64 = 60;

/// Both SIGTERM and SIGINT drain in-flight requests, then exit 0.
///
/// Pingora's graceful shutdown only waits a fixed grace period before it stops its runtimes
/// (cancelling whatever is still running), so the drain happens here, before the signal is
/// reported: readiness turns off, and the shutdown starts once no request is in flight (or
/// after [`DRAIN_TIMEOUT`]).
struct Signals {
    metrics: Arc<Metrics>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        crate::shutdown::termination_requested().await;
        info!("shutdown requested; draining in-flight requests");
        self.metrics.ready.store(false, Ordering::Release);
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while self.metrics.in_flight.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Background work: IdP discovery, the session follower, readiness.
struct Background {
    state: Arc<State>,
    listen: SocketAddr,
    config_path: PathBuf,
}

#[async_trait]
impl BackgroundService for Background {
    async fn start(&self, shutdown: ShutdownWatch) {
        let state = self.state.clone();
        let discovery_shutdown = shutdown.clone();
        tokio::spawn(async move { state.discover_in_background(discovery_shutdown).await });

        let state = self.state.clone();
        let path = self.config_path.clone();
        let reload_shutdown = shutdown.clone();
        tokio::spawn(async move { crate::reload::watch(state, path, reload_shutdown).await });

        let state = self.state.clone();
        let listen = self.listen;
        tokio::spawn(async move {
            // Ready once the proxy listener accepts connections and the session cache's first
            // preload has ended, so that the first requests find their sessions cached.
            let probe = if listen.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], listen.port()))
            } else {
                listen
            };
            loop {
                let ok = tokio::task::spawn_blocking(move || {
                    TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok()
                })
                .await
                .unwrap_or(false);
                if ok && state.sessions.first_preload_ended() {
                    state.metrics.ready.store(true, Ordering::Release);
                    info!(address = %listen, "ready");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });

        // Session refresh: one replica at a time, elected through the databroker's lease.
        let state = self.state.clone();
        let manager_shutdown = shutdown.clone();
        tokio::spawn(async move { crate::identity_manager::run(state, manager_shutdown).await });

        // Identity assertions in use are signed again before they expire, off the request path.
        let state = self.state.clone();
        let mut renew_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ASSERTION_RENEW_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = renew_shutdown.changed() => return,
                }
                let state = state.clone();
                let stop = renew_shutdown.clone();
                // ECDSA signing is CPU work: keep it off the async workers, and spread it out
                // (a crowd of sessions comes due at once) so that it never holds a CPU for long.
                let _ = tokio::task::spawn_blocking(move || {
                    let now = crate::clock::now_unix();
                    state.assertions.renew_due(
                        &state.assertion_signer,
                        now,
                        ASSERTION_RENEW_SPREAD,
                        &|| *stop.borrow(),
                        &|id, audience| {
                            let session = state.sessions.cached(id, now)?;
                            let claims = crate::upstream::identity::claims(audience, &session);
                            Some((session.assertion_content, claims))
                        },
                    )
                })
                .await;
            }
        });

        // A changed session gets a new identity assertion by its content fingerprint
        // (`CachedSession::assertion_content`): the follower only evicts sessions.
        self.state.sessions.follow(shutdown).await;
    }
}

/// Pingora's server settings for the proxy process (the bench's `pingora-floor` runs Pingora
/// alone with them too).
pub fn server_conf() -> ServerConf {
    let mut conf = ServerConf::default();
    let pid = std::process::id();
    let tmp = std::env::temp_dir();
    conf.pid_file = tmp
        .join(format!("portcullis-{pid}.pid"))
        .display()
        .to_string();
    conf.upgrade_sock = tmp
        .join(format!("portcullis-{pid}-upgrade.sock"))
        .display()
        .to_string();
    conf.threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    conf.grace_period_seconds = Some(0);
    conf.graceful_shutdown_timeout_seconds = Some(10);
    conf.fast_timeout_to_tokio_threshold_seconds = Some(FAST_TIMER_MAX_SECS);
    conf
}

/// Runs the configured services until SIGTERM/SIGINT.
pub fn run(config: Config, config_path: &Path) -> Result<(), String> {
    if config.services == Services::Databroker {
        return crate::databroker::run(config);
    }
    let _log_writer = crate::observe::init_logging(&config);
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
    let store: Arc<dyn Store> = crate::databroker::proxy_store(&config)?;
    let sessions = Arc::new(SessionCache::new(
        store,
        metrics.clone(),
        config.databroker.session_cache_bytes,
        config.databroker.cache_staleness,
    ));

    let address = config.address;
    let metrics_address = config.metrics_address;
    let certificates = config.certificates.clone();
    let insecure = config.insecure_server;
    let timeout_idle = config.timeout_idle;
    let state = Arc::new(State::new(config, sessions, metrics.clone())?);
    // The configuration file's parsed tables are gone; what they took goes back to the system.
    crate::allocator::return_freed_memory();
    crate::upstream::health::spawn(&state.runtime.load().routes);
    metrics.reload_success.set(1);
    metrics.reload_timestamp.set(crate::clock::now_unix());

    let mut server = Server::new_with_opt_and_conf(None, server_conf());
    server.bootstrap();

    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        Proxy {
            state: state.clone(),
        },
    );
    // An idle HTTP/2 connection is closed after `timeout_idle` as read at start (an HTTP/1
    // connection's wait follows reloads: `GuardedProxy`).
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(timeout_idle);
    app.server_options = Some(options);
    // The listener is plain TCP to Pingora: `GuardedProxy` runs the TLS handshake.
    let acceptor = if insecure {
        None
    } else {
        Some(tls::acceptor(SniResolver::load(&certificates)?)?)
    };
    let mut proxy = Service::new(
        "portcullis proxy".to_string(),
        GuardedProxy::new(app, state.clone(), acceptor),
    );
    proxy.add_listener(
        ListenerConfig::tcp(address.to_string()).l4_buffer(L4BufferSettings::new(
            CLIENT_READ_BUFFER_BYTES,
            DEFAULT_L4_WRITE_BUFFER_SIZE,
        )),
    );
    server.add_service(proxy);

    if let Some(addr) = metrics_address {
        let refresh_state = state.clone();
        let app = MetricsApp::new(
            metrics.clone(),
            Box::new(move |m: &Metrics| {
                let assertions = &refresh_state.assertions;
                m.count_identity_signatures(
                    assertions.signatures_total(),
                    assertions.signatures_on_request_path(),
                );
            }),
        );
        let mut service = Service::new("portcullis metrics".to_string(), app);
        service.add_tcp(&addr.to_string());
        server.add_service(service);
    }
    server.add_service(background_service(
        "portcullis background",
        Background {
            state: state.clone(),
            listen: address,
            config_path: config_path.to_path_buf(),
        },
    ));

    info!(address = %address, tls = !insecure, "starting portcullis");
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals { metrics }),
    });
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_of_minutes_use_timers_that_are_freed_when_the_wait_ends() {
        let conf = server_conf();
        let threshold = conf
            .fast_timeout_to_tokio_threshold_seconds
            .expect("a threshold");
        // The default `idle_timeout` (5 min; upstream reads and writes) is above it: Tokio's
        // timers.
        assert!(threshold < 5 * 60, "{threshold} s");
        // The client's kept-alive wait (`timeout_idle`, 60 s by default) stays on fast timers.
        assert!(threshold >= 60, "{threshold} s");
    }
}
