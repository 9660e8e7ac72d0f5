//! `portcullis sessions seed`: writes made-up sessions into the configured session store and
//! mints their cookies, for load tests.
//!
//! The sessions go where a running proxy with the same file would look for them: the remote
//! databroker at `databroker_service_url`, or PostgreSQL (`databroker_storage_type =
//! "postgres"`). An in-memory store lives inside one proxy process and cannot be reached from
//! outside, so it is refused. Each cookie is sealed with `cookie_secret` exactly as a sign-in
//! would seal it, so a proxy with the same secrets accepts it, on the one host it is sealed
//! for: `cookie_domain` when set, else the `--host` authority (by default the first route's,
//! with the listener's port when its `from` names none).
//!
//! Users are random (`seed-<hex>@example.com`) with a few groups out of [`GROUPS`]; every
//! tenth session has no `users` group so that a policy on `users` has something to deny.

use std::io::Write;
use std::sync::Arc;

use portcullis_auth::{Cipher, Session, SessionCookie};
use portcullis_databroker::{NewRecord, Record, Store, SESSION_TYPE};

use crate::clock::now_unix;
use crate::config::{Config, StorageType};

/// Groups handed out to seeded users. Everyone but every tenth user is in `users`.
pub const GROUPS: [&str; 4] = ["users", "engineering", "admins", "contractors"];
/// The email domain of seeded users.
pub const DOMAIN: &str = "example.com";
/// Records per `put` call.
const BATCH: usize = 500;

/// What to seed.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    pub count: usize,
    /// The authority (`host:port`) the cookies are for; `None` for the first route's.
    pub host: Option<String>,
}

// === seeding ===

/// Seeds `options.count` sessions into the store `config` names and writes one sealed cookie
/// value per line to `out`. Progress goes to stderr.
pub fn seed(config: &Config, options: &SeedOptions, out: &mut dyn Write) -> Result<(), String> {
    if config.databroker.service_url.is_none()
        && config.databroker.storage_type == StorageType::Memory
    {
        return Err(
            "sessions seed needs a store outside the proxy: set databroker_service_url (a \
             separate `services = \"databroker\"`) or databroker_storage_type = \"postgres\"; \
             the in-memory store lives inside one proxy process and cannot be seeded from outside"
                .into(),
        );
    }
    let scope = scope(config, options.host.as_deref())?;
    let store = crate::databroker::proxy_store(config)?;
    let cipher = Cipher::new(&config.cookie_secret);
    let now = now_unix();
    let ttl = i64::try_from(config.cookie.expire.as_secs()).unwrap_or(i64::MAX);
    let expires_at = now.saturating_add(ttl);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let mut rng = rand::thread_rng();
    let mut written = 0usize;
    while written < options.count {
        let n = BATCH.min(options.count - written);
        let sessions: Vec<Session> = (0..n)
            .map(|i| random_session(&mut rng, written + i, now, expires_at))
            .collect();
        put(&rt, &store, &sessions)?;
        for s in &sessions {
            let cookie = SessionCookie::for_session(s, scope.as_str());
            writeln!(out, "{}", cookie.seal(&cipher)).map_err(|e| format!("write: {e}"))?;
        }
        written += n;
        if options.count >= 10 * BATCH && written.is_multiple_of(10 * BATCH) {
            eprintln!("seeded {written}/{}", options.count);
        }
    }
    out.flush().map_err(|e| format!("write: {e}"))?;
    Ok(())
}

/// The scope the seeded cookies are sealed for, as the proxy computes it for a request to
/// `host` (`host:port`), or by default to the first route's host.
fn scope(config: &Config, host: Option<&str>) -> Result<String, String> {
    if let Some(domain) = config.cookie.domain_scope() {
        return Ok(domain);
    }
    if let Some(host) = host {
        let (name, port) = host
            .rsplit_once(':')
            .and_then(|(name, port)| Some((name, port.parse::<u16>().ok()?)))
            .filter(|(name, _)| !name.is_empty())
            .ok_or_else(|| format!("--host {host}: expected host:port"))?;
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        return Ok(format!("{name}:{port}"));
    }
    let route = config
        .routes
        .first()
        .ok_or("sessions seed: no route to seed cookies for; give --host host:port")?;
    match &route.from.host {
        crate::config::HostPattern::Exact(name) => Ok(format!(
            "{name}:{}",
            route.from.port.unwrap_or(config.address.port())
        )),
        crate::config::HostPattern::Wildcard(_) => Err(format!(
            "sessions seed: the first route ({}) names no single host; give --host host:port",
            route.name
        )),
    }
}

fn put(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn Store>,
    sessions: &[Session],
) -> Result<(), String> {
    rt.block_on(store_sessions(store.as_ref(), sessions))
        .map(|_| ())
}

/// Writes `sessions` to `store` as session records, in one batch; the records as written.
pub async fn store_sessions(
    store: &dyn Store,
    sessions: &[Session],
) -> Result<Vec<Record>, String> {
    let records = sessions
        .iter()
        .map(|s| {
            serde_json::to_value(s)
                .map(|data| NewRecord::new(SESSION_TYPE, s.id.clone(), data))
                .map_err(|e| format!("session does not serialize: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    store
        .put(records)
        .await
        .map_err(|e| format!("session store: {e}"))
}

/// A made-up session: user `seed-<16 hex>`, a few groups, no IdP tokens.
pub fn random_session(
    rng: &mut impl rand::Rng,
    index: usize,
    now: i64,
    expires_at: i64,
) -> Session {
    let user: u64 = rng.gen();
    let user_id = format!("seed-{user:016x}");
    let mut groups = Vec::new();
    if index % 10 != 9 {
        groups.push(GROUPS[0].to_owned());
    }
    for g in &GROUPS[1..] {
        if rng.gen_bool(0.3) {
            groups.push((*g).to_owned());
        }
    }
    Session {
        id: Session::new_id(),
        email: format!("{user_id}@{DOMAIN}"),
        name: format!("Seeded User {index}"),
        user_id,
        groups,
        claims: serde_json::Map::new(),
        issued_at: now,
        expires_at,
        id_token: None,
        access_token: None,
        refresh_token: None,
        access_token_expires_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tenth_user_is_not_in_users() {
        let mut rng = rand::thread_rng();
        for i in 0..30 {
            let s = random_session(&mut rng, i, 100, 200);
            assert_eq!(s.groups.iter().any(|g| g == "users"), i % 10 != 9, "{i}");
            assert!(s.email.ends_with("@example.com"));
            assert_eq!(s.expires_at, 200);
            assert!(s.access_token.is_none());
        }
    }

    #[test]
    fn memory_store_is_refused() {
        let secret = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let text = format!(
            "insecure_server = true\nauthenticate_service_url = \"https://auth.example.com\"\n\
             shared_secret = \"{secret}\"\ncookie_secret = \"{secret}\"\n"
        );
        let config = Config::from_toml(&text, Vec::new(), std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        let err = seed(
            &config,
            &SeedOptions {
                count: 1,
                host: None,
            },
            &mut out,
        )
        .unwrap_err();
        assert!(err.contains("databroker_service_url"), "{err}");
        assert!(out.is_empty());
    }
}
