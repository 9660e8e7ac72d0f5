//! The databroker at start-up: which store a proxy uses, and the `databroker` service.
//!
//! - `services = "all"` (or `"proxy"` without `databroker_service_url`): the store lives in
//!   this process, in memory or in PostgreSQL (`databroker_storage_type`).
//! - `services = "proxy"` with `databroker_service_url`: a [`RemoteStore`] reaches a separate
//!   databroker over gRPC. When it is unreachable, cached sessions keep working for
//!   `databroker_cache_staleness` and unknown ones get 503 (the session cache fails closed on
//!   store errors).
//! - PostgreSQL unreachable at start: start-up retries for 30 s, then fails with the error.
//!   Once running, each PostgreSQL call fails after `databroker_storage_timeout` when the
//!   server does not answer, so requests that need the store get 503 in time.
//! - `services = "databroker"`: only the gRPC databroker on `grpc_address` (plus
//!   `/metrics`, `/healthz`, `/readyz` on `metrics_address` when set), over TLS with
//!   `grpc_tls_certificate_file` (and client certificates required with
//!   `grpc_client_ca_file`); a proxy reaches it at an `https://` `databroker_service_url`.
//!
//! The proxy side always wraps its store in a [`SealedStore`]: IdP tokens are encrypted
//! before they leave the proxy, so neither a databroker nor PostgreSQL ever holds them in clear.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use portcullis_databroker::grpc::{ServerTls, TokenKey, TOKEN_KEY_INFO};
use portcullis_databroker::{
    Error as StoreError, MemoryStore, PgOptions, PgStore, RemoteStore, SealedStore, Store,
    AT_REST_KEY_INFO,
};
use tracing::{error, info, warn};

use crate::config::{Config, StorageType};
use crate::observe::metrics::{Metrics, MetricsApp};

/// Runs the store's own tasks (PostgreSQL LISTEN and compaction, the gRPC channel) for the
/// life of the process, apart from Pingora's per-service runtimes.
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The gRPC databroker as a Pingora background service.
struct Grpc {
    store: Arc<dyn Store>,
    key: TokenKey,
    tls: Option<ServerTls>,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    address: SocketAddr,
    metrics: Arc<Metrics>,
}

/// SIGTERM and SIGINT stop the databroker gracefully.
struct Signals;

// === impl Grpc ===

#[async_trait]
impl BackgroundService for Grpc {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "databroker: cannot use the gRPC listener");
                return;
            }
        };
        self.metrics.ready.store(true, Ordering::Release);
        info!(address = %self.address, tls = self.tls.is_some(), "databroker: serving gRPC; ready");
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = portcullis_databroker::grpc::serve(
            self.store.clone(),
            self.key.clone(),
            listener,
            self.tls.as_ref(),
            stop,
        )
        .await
        {
            error!(error = %e, "databroker: gRPC server failed");
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        crate::shutdown::termination_requested().await;
        info!("shutdown requested");
        ShutdownSignal::GracefulTerminate
    }
}

/// The store a proxy uses: remote when `databroker_service_url` is set, otherwise in-process;
/// sealed either way.
pub fn proxy_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    let inner: Arc<dyn Store> = match &config.databroker.service_url {
        Some(url) => {
            let _runtime = runtime()?.enter();
            let url = url.as_str().trim_end_matches('/');
            let tls = config.databroker.service_tls.as_ref();
            info!(url, "databroker: remote");
            Arc::new(
                RemoteStore::connect_lazy(url, token_key(config), tls)
                    .map_err(|e| e.to_string())?,
            )
        }
        None => local_store(config)?,
    };
    Ok(Arc::new(SealedStore::new(
        inner,
        config.shared_secret.derive(AT_REST_KEY_INFO),
    )))
}

/// `services = "databroker"`: serves the store on `grpc_address` until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<(), String> {
    let _log_writer = crate::observe::init_logging(&config);
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
    // Proxies seal tokens before they send them, so this side stores what it gets.
    let store = local_store(&config)?;
    let address = config.databroker.grpc_address;
    let listener = std::net::TcpListener::bind(address)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("grpc_address {address}: {e}"))?;
    if config.databroker.grpc_tls.is_none() && !address.ip().is_loopback() {
        warn!(address = %address, "databroker: gRPC in plain HTTP/2 on a non-loopback address; \
            set grpc_tls_certificate_file unless the network is private");
    }

    let mut conf = ServerConf::default();
    let tmp = std::env::temp_dir();
    let pid = std::process::id();
    conf.pid_file = tmp
        .join(format!("portcullis-databroker-{pid}.pid"))
        .display()
        .to_string();
    conf.upgrade_sock = tmp
        .join(format!("portcullis-databroker-{pid}-upgrade.sock"))
        .display()
        .to_string();
    conf.threads = 2;
    conf.grace_period_seconds = Some(0);
    conf.graceful_shutdown_timeout_seconds = Some(10);
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    if let Some(addr) = config.metrics_address {
        let app = MetricsApp::new(metrics.clone(), Box::new(|_: &Metrics| {}));
        let mut service = Service::new("portcullis metrics".to_string(), app);
        service.add_tcp(&addr.to_string());
        server.add_service(service);
    }
    server.add_service(background_service(
        "portcullis databroker",
        Grpc {
            store,
            key: token_key(&config),
            tls: config.databroker.grpc_tls.clone(),
            listener: std::sync::Mutex::new(Some(listener)),
            address,
            metrics,
        },
    ));
    info!(address = %address, storage = ?config.databroker.storage_type, "starting the databroker");
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
    info!("stopped");
    Ok(())
}

fn local_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    match config.databroker.storage_type {
        StorageType::Memory => Ok(Arc::new(MemoryStore::new())),
        StorageType::Postgres => {
            let url = config
                .databroker
                .connection_string
                .as_deref()
                .ok_or("databroker_storage_connection_string is required")?;
            let options = PgOptions::default().with_timeout(config.databroker.storage_timeout);
            let store = runtime()?.block_on(connect_postgres(url, options))?;
            info!("databroker: PostgreSQL storage");
            Ok(Arc::new(store))
        }
    }
}

/// How long start-up waits for PostgreSQL (it may be starting alongside us) before giving up.
const POSTGRES_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to PostgreSQL, retrying with backoff (capped at 2 s) while it is unreachable for up
/// to [`POSTGRES_START_TIMEOUT`]; then start-up fails with the last error. A malformed
/// connection string fails at once.
async fn connect_postgres(url: &str, options: PgOptions) -> Result<PgStore, String> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match PgStore::connect(url, options.clone()).await {
            Ok(store) => return Ok(store),
            Err(StoreError::Unavailable(e)) if started.elapsed() < POSTGRES_START_TIMEOUT => {
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "databroker storage: PostgreSQL unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                return Err(format!(
                    "databroker storage: cannot use PostgreSQL (gave up after {:.0?}): {e}",
                    started.elapsed()
                ))
            }
        }
    }
}

fn token_key(config: &Config) -> TokenKey {
    TokenKey::new(config.shared_secret.derive(TOKEN_KEY_INFO))
}

fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("portcullis-databroker")
        .enable_all()
        .build()
        .map_err(|e| format!("databroker runtime: {e}"))?;
    Ok(RUNTIME.get_or_init(|| rt))
}
