//! Hot reload: the configuration file is watched (inotify) and re-read on SIGHUP.
//!
//! A changed file is parsed, validated and compiled off the request path, then swapped in
//! atomically: requests already running keep the runtime they started with, the next one sees
//! the new routes and policies. A file with errors changes nothing: the old configuration keeps
//! serving, every error is logged, and `portcullis_config_last_reload_success` drops to 0.
//! Keys that only take effect at start (listener, secrets, certificates, IdP, storage) are
//! reported as needing a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tracing::{error, info, warn};

use crate::clock::now_unix;
use crate::config::Config;
use crate::state::{Runtime, State};
use crate::upstream::health;

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Swapped in; the listed keys changed but need a restart to take effect.
    Applied { restart_needed: Vec<&'static str> },
    /// The file had errors; the old configuration stays.
    Rejected { errors: Vec<String> },
}

/// Re-reads `path` and swaps the result in when it is valid.
pub fn reload(state: &State, path: &Path) -> Outcome {
    let outcome = match Config::load(path) {
        Ok(config) => {
            let current = state.runtime.load();
            let restart_needed = restart_only_changes(&current.config, &config);
            let routes = config.routes.len();
            let runtime = Arc::new(Runtime::new(config));
            health::spawn(&runtime.routes);
            state.runtime.store(runtime);
            // The parsed file and the replaced routes (once no request holds them) are freed.
            crate::allocator::return_freed_memory();
            info!(routes, "configuration reloaded");
            for key in &restart_needed {
                warn!(
                    key = *key,
                    "this key changed but only takes effect after a restart"
                );
            }
            Outcome::Applied { restart_needed }
        }
        Err(errors) => {
            let errors: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            for e in &errors {
                error!(error = %e, "configuration reload rejected; the previous configuration stays");
            }
            Outcome::Rejected { errors }
        }
    };
    let ok = matches!(outcome, Outcome::Applied { .. });
    state.metrics.reload_success.set(i64::from(ok));
    if ok {
        state.metrics.reload_timestamp.set(now_unix());
    }
    outcome
}

/// The keys whose new value differs but cannot be applied without a restart.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |key: &'static str, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    check("services", old.services != new.services);
    check("address", old.address != new.address);
    check(
        "insecure_server",
        old.insecure_server != new.insecure_server,
    );
    check("certificates", old.certificates != new.certificates);
    // Compared through a derived value: the secrets themselves have no equality.
    check(
        "shared_secret",
        old.shared_secret.derive("reload-compare") != new.shared_secret.derive("reload-compare"),
    );
    check(
        "cookie_secret",
        old.cookie_secret.derive("reload-compare") != new.cookie_secret.derive("reload-compare"),
    );
    check("signing_key", old.signing_key != new.signing_key);
    check(
        "metrics_address",
        old.metrics_address != new.metrics_address,
    );
    check(
        "idp_*",
        old.idp
            .as_ref()
            .map(|i| (&i.provider_url, &i.client_id, &i.client_secret, &i.scopes))
            != new
                .idp
                .as_ref()
                .map(|i| (&i.provider_url, &i.client_id, &i.client_secret, &i.scopes)),
    );
    check(
        "authenticate_service_url",
        old.authenticate.url != new.authenticate.url,
    );
    check(
        "databroker_*, grpc_*",
        (
            old.databroker.storage_type,
            &old.databroker.connection_string,
            old.databroker.storage_timeout,
            &old.databroker.service_url,
            old.databroker.grpc_address,
            old.databroker.tls_digest,
        ) != (
            new.databroker.storage_type,
            &new.databroker.connection_string,
            new.databroker.storage_timeout,
            &new.databroker.service_url,
            new.databroker.grpc_address,
            new.databroker.tls_digest,
        ),
    );
    check(
        "log_level/log_format",
        old.log_level != new.log_level || old.log_format != new.log_format,
    );
    changed
}

/// Watches `path` and listens for SIGHUP until `shutdown`, reloading on either.
pub async fn watch(
    state: Arc<State>,
    path: PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);

    // Editors replace files (rename over), so watch the directory and filter by name.
    let file_name = path.file_name().map(|n| n.to_os_string());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let notify_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let ours = event
            .paths
            .iter()
            .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name);
        if ours {
            let _ = notify_tx.try_send(());
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                warn!(error = %e, "cannot watch the configuration file; reload with SIGHUP");
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "cannot watch the configuration file; reload with SIGHUP");
            None
        }
    };

    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = rx.recv() => {}
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                info!("SIGHUP: reloading the configuration");
            }
        }
        // Let a burst of events (truncate, write, rename) settle into one reload.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}
        let state = state.clone();
        let path = path.clone();
        let _ = tokio::task::spawn_blocking(move || reload(&state, &path)).await;
    }
}
