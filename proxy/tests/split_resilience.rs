//! A split deployment when parts of it fail, on a real PostgreSQL (127.0.0.1:5432, user
//! `postgres`, trust auth; `.ci/deps` starts it; each test makes its own database):
//!
//! - the proxy holding the `identity_manager` lease is killed: the other proxy takes over
//!   refreshing within the lease TTL;
//! - a databroker process stops: sessions the proxy has cached keep working (for
//!   `databroker_cache_staleness`), unknown ones get 503, sign-in shows a 503 page, and
//!   everything recovers by itself within 5 s of the databroker coming back;
//! - PostgreSQL itself restarts (a server of the test's own, [`PrivatePostgres`], not the
//!   shared one): no session is lost, both proxies serve cached sessions meanwhile and refuse
//!   unknown ones, and sign-in, sign-out and uncached sessions work again within 5 s;
//! - (ignored, run by hand) the proxy's RSS growth per 100k cached sessions.

use std::time::{Duration, Instant};

use portcullis_auth::{Cipher, Secret, Session, SessionCookie};
use portcullis_databroker::{NewRecord, PgOptions, PgStore, Query, Store, SESSION_TYPE};
use portcullis_harness::{
    free_port, poll_until, random_secret, route, rss_kib, unix_now, ApiClient, IdpOptions,
    Portcullis, PrivatePostgres, TestDb, TestEnv, COOKIE,
};

/// The proxies of a split deployment are replicas behind one public origin, so a session
/// cookie of one is a session on the other: here both hosts' cookies share a scope, the cookie
/// domain (a session cookie is otherwise bound to the host and port that issued it).
const SHARED_COOKIE: &str = r#"cookie_domain = "localhost""#;

async fn start(binary: &str, config: &str) -> Portcullis {
    Portcullis::builder(binary)
        .config(config)
        .start_or_panic()
        .await
}

fn plain_client() -> ApiClient {
    ApiClient::new(&["app.localhost", "authenticate.localhost"], COOKIE)
}

/// A session for `user` written straight into the database, and a cookie naming it.
fn session(id: &str, user: &str, with_tokens: bool) -> Session {
    let now = unix_now();
    let mut claims = serde_json::Map::new();
    claims.insert("email".into(), format!("{user}@example.com").into());
    claims.insert("email_verified".into(), true.into());
    claims.insert("name".into(), format!("User {user}").into());
    claims.insert("groups".into(), serde_json::json!(["users"]));
    // Token sizes as node oidc-provider issues them: opaque 43-character access and refresh
    // tokens and an RS256 ID token of about 800 characters.
    let token = |n: usize| Some("x".repeat(n));
    Session {
        id: id.to_owned(),
        user_id: user.to_owned(),
        email: format!("{user}@example.com"),
        name: format!("User {user}"),
        groups: vec!["users".into()],
        claims,
        issued_at: now,
        expires_at: now + 3600,
        id_token: if with_tokens { token(800) } else { None },
        access_token: if with_tokens { token(43) } else { None },
        refresh_token: None,
        access_token_expires_at: None,
    }
}

fn cookie_for(cookie_secret: &str, id: &str) -> String {
    let secret = Secret::from_base64(cookie_secret).expect("cookie secret");
    let now = unix_now();
    SessionCookie {
        session_id: id.to_owned(),
        scope: "localhost".to_owned(),
        issued_at: now,
        expires_at: now + 3600,
    }
    .seal(&Cipher::new(&secret))
}

async fn seed(db: &TestDb, sessions: Vec<Session>) {
    seed_at(&db.url(), sessions).await;
}

async fn seed_at(url: &str, sessions: Vec<Session>) {
    let store = PgStore::connect(url, PgOptions::default())
        .await
        .expect("connect to the test database");
    for chunk in sessions.chunks(1000) {
        let records = chunk
            .iter()
            .map(|s| {
                NewRecord::new(
                    SESSION_TYPE,
                    s.id.clone(),
                    serde_json::to_value(s).expect("session JSON"),
                )
            })
            .collect();
        store.put(records).await.expect("seed sessions");
    }
}

/// Waits (10 s at most) until the proxies at `apps` have followed the change stream past every
/// write so far. A sign-in's own write can reach a proxy's follower after the proxy cached the
/// session from a later request, evicting it then; a test that cuts the store off must not
/// race that. Streams deliver in version order, so once a probe session written and deleted
/// now is refused everywhere, every earlier change has been seen.
async fn caught_up(store_url: &str, cookie_secret: &str, client: &ApiClient, apps: &[&str]) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = format!("probe-{nanos}");
    seed_at(store_url, vec![session(&id, "probe", false)]).await;
    let cookie = cookie_for(cookie_secret, &id);
    for app in apps {
        assert_eq!(client.status(app, &cookie).await, 200, "probe on {app}");
    }
    let store = PgStore::connect(store_url, PgOptions::default())
        .await
        .expect("connect to the test database");
    store
        .delete(SESSION_TYPE, &id)
        .await
        .expect("delete the probe");
    let t0 = Instant::now();
    for app in apps {
        while client.status(app, &cookie).await != 401 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{app} does not follow changes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_lease_holder_hands_refresh_to_the_other_proxy() {
    let binary = env!("CARGO_BIN_EXE_portcullis");
    let db = TestDb::create("portcullis_res");
    let mut env = TestEnv::builder(binary)
        .route(&route::any_user("app"))
        .config(SHARED_COOKIE)
        .config(&format!(
            "databroker_storage_type = \"postgres\"\ndatabroker_storage_connection_string = \"{}\"",
            db.url()
        ))
        .idp_options(IdpOptions {
            access_token_ttl_secs: 3,
            ..IdpOptions::default()
        })
        .start()
        .await;
    let (port_b, metrics_b) = (free_port(), free_port());
    let mut proxy_b = start(binary, &env.config_on_ports(port_b, metrics_b)).await;

    let browser = env.browser();
    assert_eq!(
        browser
            .sign_in(&env.url("app", "/"), "alice")
            .await
            .status(),
        200
    );
    let cookie = browser
        .cookie(&env.url("app", "/"), COOKIE)
        .expect("session cookie");
    let client = plain_client();

    // Exactly one of the two holds the lease.
    let leader = 'found: {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            let a = client
                .metric(env.metrics_port, "portcullis_identity_manager_leader")
                .await;
            let b = client
                .metric(metrics_b, "portcullis_identity_manager_leader")
                .await;
            match (a, b) {
                (Some(a), Some(b)) if a + b == 1.0 => {
                    break 'found if a == 1.0 { 'a' } else { 'b' }
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("no single lease holder\n{}", env.logs());
    };
    let grants = env.idp.token_grants("refresh_token").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        env.idp.token_grants("refresh_token").await > grants,
        "the holder refreshes"
    );

    // SIGKILL: no chance to give the lease up.
    let (survivor_port, survivor_metrics) = if leader == 'a' {
        env.proxy.signal("KILL");
        (port_b, metrics_b)
    } else {
        proxy_b.signal("KILL");
        (env.port, env.metrics_port)
    };
    let killed = Instant::now();
    let grants = env.idp.token_grants("refresh_token").await;
    let took_over = loop {
        if client
            .metric(survivor_metrics, "portcullis_identity_manager_leader")
            .await
            == Some(1.0)
        {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "no takeover\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    while env.idp.token_grants("refresh_token").await <= grants {
        assert!(
            killed.elapsed() < Duration::from_secs(25),
            "no refresh after takeover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refreshed = killed.elapsed();
    println!(
        "lease holder ({leader}) killed: the other proxy held the lease after {took_over:?} and refreshed after {refreshed:?}"
    );
    // The lease TTL (10 s) plus one acquisition interval (2 s).
    assert!(took_over <= Duration::from_secs(13), "{took_over:?}");
    let on_survivor = format!("http://app.localhost:{survivor_port}/");
    assert_eq!(client.status(&on_survivor, &cookie).await, 200);
    if leader == 'a' {
        let _ = env.proxy.try_wait();
    } else {
        let _ = proxy_b.try_wait();
    }
    drop(proxy_b);
    env.idp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_databroker_serves_cached_sessions_refuses_unknown_ones_and_recovers() {
    let binary = env!("CARGO_BIN_EXE_portcullis");
    let db = TestDb::create("portcullis_res");
    let shared_secret = random_secret();
    let grpc = free_port();
    let broker_config = db.databroker_config(grpc, &shared_secret);
    let broker = start(binary, &broker_config).await;
    let staleness = Duration::from_secs(6);

    let env = TestEnv::builder(binary)
        .route(&route::any_user("app"))
        .config(SHARED_COOKIE)
        .on_databroker(&format!("http://127.0.0.1:{grpc}"), &shared_secret)
        .config(&format!(
            "databroker_cache_staleness = \"{}s\"",
            staleness.as_secs()
        ))
        .start()
        .await;
    let client = plain_client();
    let app = env.url("app", "/");

    let alice = env.browser();
    assert_eq!(alice.sign_in(&app, "alice").await.status(), 200);
    let alice = alice.cookie(&app, COOKIE).expect("cookie");
    // Bob's session exists in the store but this proxy has never looked it up.
    seed(&db, vec![session("bob-session", "bob", true)]).await;
    let bob = cookie_for(env.cookie_secret(), "bob-session");
    caught_up(&db.url(), env.cookie_secret(), &client, &[&app]).await;
    assert_eq!(client.status(&app, &alice).await, 200);

    // The databroker goes away.
    let stopped = Instant::now();
    broker.stop().await;
    assert_eq!(client.status(&app, &alice).await, 200, "cached session");
    assert_eq!(client.status(&app, &bob).await, 503, "unknown session");
    // Sign-in cannot store a session: a clear 503 page, not a raw failure.
    let carol = env.browser();
    let page = carol.sign_in(&app, "carol").await;
    assert_eq!(page.status(), 503);
    let body = page.text().await.unwrap_or_default();
    assert!(body.contains("session store"), "{body}");

    // Past the staleness bound, cached sessions are refused too (fail closed).
    loop {
        let s = client.status(&app, &alice).await;
        if s == 503 {
            println!(
                "cached session refused {:?} after the databroker stopped (bound {staleness:?})",
                stopped.elapsed()
            );
            break;
        }
        assert_eq!(s, 200);
        assert!(stopped.elapsed() < staleness + Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stopped.elapsed() >= staleness - Duration::from_secs(1));

    // The databroker comes back on the same address: everything recovers by itself.
    let _broker = start(binary, &broker_config).await;
    let back = Instant::now();
    loop {
        let a = client.status(&app, &alice).await;
        let b = client.status(&app, &bob).await;
        let synced = client
            .metric(env.metrics_port, "portcullis_session_sync_connected")
            .await;
        if a == 200 && b == 200 && synced == Some(1.0) {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "not recovered 5 s after the databroker came back (alice {a}, bob {b}, sync {synced:?})\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "recovered {:?} after the databroker was ready again",
        back.elapsed()
    );
    let carol = env.browser();
    assert_eq!(carol.sign_in(&app, "carol").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_postgresql_loses_no_session_and_everything_recovers_within_5s() {
    let binary = env!("CARGO_BIN_EXE_portcullis");
    let pg = PrivatePostgres::start();
    let shared_secret = random_secret();
    let (grpc1, grpc2) = (free_port(), free_port());
    let broker1_url = format!("http://127.0.0.1:{grpc1}");
    let broker2_url = format!("http://127.0.0.1:{grpc2}");
    let broker1 = start(binary, &pg.databroker_config(grpc1, &shared_secret)).await;
    let broker2 = start(binary, &pg.databroker_config(grpc2, &shared_secret)).await;

    // Proxy A on databroker 1, proxy B on databroker 2.
    let mut env = TestEnv::builder(binary)
        .route(&route::any_user("app"))
        .config(SHARED_COOKIE)
        .on_databroker(&broker1_url, &shared_secret)
        .start()
        .await;
    let (port_b, metrics_b) = (free_port(), free_port());
    let proxy_b = Portcullis::builder(binary)
        .config(
            &env.config_on_ports(port_b, metrics_b)
                .replace(&broker1_url, &broker2_url),
        )
        .env("PORTCULLIS_SHARED_SECRET", &shared_secret)
        .start()
        .await
        .unwrap_or_else(|e| panic!("proxy B: {e}"));
    let logs = || {
        format!(
            "{}\n--- databroker 1 ---\n{}\n--- databroker 2 ---\n{}\n--- proxy B ---\n{}\n--- postgres ---\n{}",
            env.logs(),
            broker1.logs(),
            broker2.logs(),
            proxy_b.logs(),
            pg.log()
        )
    };
    let client = plain_client();
    let on_a = env.url("app", "/");
    let on_b = format!("http://app.localhost:{port_b}/");
    let sign_out_b = format!("http://app.localhost:{port_b}/.portcullis/sign_out");
    let synced = |metrics_port: u16| {
        let client = client.clone();
        async move {
            client
                .metric(metrics_port, "portcullis_session_sync_connected")
                .await
        }
    };

    // Alice signs in through A; both proxies have her session cached.
    let browser = env.browser();
    assert_eq!(browser.sign_in(&on_a, "alice").await.status(), 200);
    let alice = browser.cookie(&on_a, COOKIE).expect("session cookie");
    // Bob's session is in the database, but neither proxy has looked it up.
    seed_at(&pg.url(), vec![session("bob-session", "bob", true)]).await;
    let bob = cookie_for(env.cookie_secret(), "bob-session");
    caught_up(&pg.url(), env.cookie_secret(), &client, &[&on_a, &on_b]).await;
    assert_eq!(client.status(&on_a, &alice).await, 200);
    assert_eq!(client.status(&on_b, &alice).await, 200);
    let sessions_stored = || async {
        let store = PgStore::connect(&pg.url(), PgOptions::default())
            .await
            .expect("connect to the private PostgreSQL");
        store
            .query(Query::of_type(SESSION_TYPE))
            .await
            .expect("query sessions")
            .total
    };
    assert_eq!(sessions_stored().await, 2);

    // PostgreSQL goes down (fast shutdown: every connection is cut at once).
    tokio::task::block_in_place(|| pg.stop());
    let stopped = Instant::now();
    // Both followers notice (the databrokers' change streams fail)...
    poll_until(
        stopped + Duration::from_secs(5),
        "sync lost",
        &logs,
        || async {
            let (a, b) = (synced(env.metrics_port).await, synced(metrics_b).await);
            (a != Some(0.0) || b != Some(0.0)).then(|| format!("sync A {a:?}, B {b:?}"))
        },
    )
    .await;
    // ...and meanwhile cached sessions work and uncached ones are refused, never allowed.
    for _ in 0..5 {
        assert_eq!(client.status(&on_a, &alice).await, 200, "cached on A");
        assert_eq!(client.status(&on_b, &alice).await, 200, "cached on B");
        assert_eq!(client.status(&on_a, &bob).await, 503, "unknown on A");
        assert_eq!(client.status(&on_b, &bob).await, 503, "unknown on B");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let carol = env.browser();
    let page = carol.sign_in(&on_a, "carol").await;
    assert_eq!(page.status(), 503, "sign-in cannot store a session");
    println!("PostgreSQL was down for {:?}", stopped.elapsed());

    // PostgreSQL comes back on the same port with the same data.
    let restarting = Instant::now();
    tokio::task::block_in_place(|| pg.restart());
    let back = Instant::now();
    let startup = back - restarting;
    let deadline = back + Duration::from_secs(5);
    poll_until(deadline, "sessions served again", &logs, || async {
        let statuses = [
            client.status(&on_a, &alice).await,
            client.status(&on_b, &alice).await,
            client.status(&on_a, &bob).await,
            client.status(&on_b, &bob).await,
        ];
        let (a, b) = (synced(env.metrics_port).await, synced(metrics_b).await);
        (statuses != [200; 4] || a != Some(1.0) || b != Some(1.0))
            .then(|| format!("alice A/B, bob A/B {statuses:?}; sync A {a:?}, B {b:?}"))
    })
    .await;
    let served = back.elapsed();
    // No session was lost: both are still in the database.
    assert_eq!(
        sessions_stored().await,
        2,
        "sessions kept across the restart"
    );

    // A new sign-in stores a session both proxies see.
    let carol = env.browser();
    let page = carol.sign_in(&on_a, "carol").await;
    assert_eq!(page.status(), 200, "sign-in after the restart\n{}", logs());
    let carol = carol.cookie(&on_a, COOKIE).expect("carol's cookie");
    assert_eq!(client.status(&on_b, &carol).await, 200);

    // A sign-out through B ends alice's session on A too.
    client.sign_out(&sign_out_b, &alice).await;
    poll_until(deadline, "sign-out seen by A", &logs, || async {
        let (a, b) = (
            client.status(&on_a, &alice).await,
            client.status(&on_b, &alice).await,
        );
        ((a, b) != (401, 401)).then(|| format!("alice after sign-out: A {a}, B {b}"))
    })
    .await;
    let recovered = back.elapsed();
    println!(
        "PostgreSQL took {startup:?} to start; once ready: sessions served and both followers \
         in sync after {served:?}; a new sign-in and a sign-out propagated by {recovered:?}"
    );
    env.idp.stop().await;
}

/// The proxy's RSS growth per 100k cached sessions (sessions with ID and access tokens of
/// realistic size). Run it alone:
/// `cargo test -p portcullis --test split_resilience -- --ignored --nocapture rss`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: seeds 100k sessions and takes a minute or two"]
async fn rss_per_100k_cached_sessions() {
    const N: usize = 100_000;
    const WARM: usize = 1_000;
    let binary = env!("CARGO_BIN_EXE_portcullis");
    let db = TestDb::create("portcullis_res");
    let env = TestEnv::builder(binary)
        .route(&route::any_user("app"))
        .config(SHARED_COOKIE)
        .config(&format!(
            "databroker_storage_type = \"postgres\"\ndatabroker_storage_connection_string = \"{}\"\nlog_level = \"warn\"",
            db.url()
        ))
        .start()
        .await;
    let t0 = Instant::now();
    let ids: Vec<String> = (0..N + WARM).map(|i| format!("s{i:07}")).collect();
    seed(
        &db,
        ids.iter()
            .enumerate()
            .map(|(i, id)| session(id, &format!("user{i}"), true))
            .collect(),
    )
    .await;
    println!("seeded {} sessions in {:?}", ids.len(), t0.elapsed());
    let pid = env.proxy.pid().expect("proxy pid");
    let client = plain_client();
    let page = env.url("app", "/.portcullis/");
    let load = |ids: &[String]| {
        let cookies: Vec<String> = ids
            .iter()
            .map(|id| cookie_for(env.cookie_secret(), id))
            .collect();
        let client = client.clone();
        let page = page.clone();
        async move {
            use futures::StreamExt as _;
            let ok = futures::stream::iter(cookies)
                .map(|c| {
                    let client = client.clone();
                    let page = page.clone();
                    async move { client.status(&page, &c).await }
                })
                .buffer_unordered(32)
                .filter(|s| futures::future::ready(*s == 200))
                .count()
                .await;
            ok
        }
    };
    // Warm up (connections, allocator arenas, the first cache segments).
    assert_eq!(load(&ids[..WARM]).await, WARM, "{}", env.logs());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid).unwrap_or(0);
    let t0 = Instant::now();
    let ok = load(&ids[WARM..]).await;
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid).unwrap_or(0);
    assert_eq!(ok, N, "every seeded session answers 200");
    let growth_mib = (after.saturating_sub(before)) as f64 / 1024.0;
    let text = env.proxy.metrics().await;
    let misses = text
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_session_cache_misses_total "))
        .unwrap_or("?")
        .to_owned();
    println!(
        "RSS {before} KiB → {after} KiB after caching {N} more sessions in {took:?} (cache misses {misses}): {growth_mib:.1} MiB per 100k"
    );
}
