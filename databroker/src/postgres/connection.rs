//! The connections of a [`super::PgStore`]: every call on a pooled one within a deadline
//! ([`within`]), the dedicated LISTEN connection, and the text of their errors.

use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use futures::{stream, StreamExt};
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::warn;

use super::CHANNEL;
use crate::Error;

/// LISTENs on a dedicated connection and announces every version some replica wrote;
/// reconnects with backoff for as long as the store lives. Connecting and the LISTEN itself
/// get `limit` each; an idle connection may wait as long as it likes (the change streams poll
/// anyway).
pub(super) async fn listen(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    limit: Duration,
    latest: watch::Sender<u64>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = match tokio::time::timeout(limit, config.connect(tls.clone())).await {
            Ok(connected) => connected.map_err(|e| describe(&e)),
            Err(_) => Err(format!("no answer within {limit:?}")),
        };
        match connected {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                let _ = tx.send(n.payload().parse::<u64>().unwrap_or(0));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                warn!(error = describe(&e), "databroker: LISTEN connection failed");
                                break;
                            }
                        }
                    }
                });
                let sql = format!("LISTEN {CHANNEL}");
                let listen = client.batch_execute(&sql);
                let listening = match tokio::time::timeout(limit, listen).await {
                    Ok(listening) => listening.map_err(|e| describe(&e)),
                    Err(_) => Err(format!("no answer within {limit:?}")),
                };
                match listening {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        // Changes made while we were not listening: wake everyone once.
                        latest.send_modify(|_| {});
                        while let Some(version) = rx.recv().await {
                            latest.send_modify(|v| *v = (*v).max(version));
                        }
                    }
                    Err(e) => warn!(error = %e, "databroker: LISTEN failed"),
                }
                driver.abort();
            }
            Err(e) => warn!(error = %e, "databroker: cannot connect to LISTEN; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Runs `call` on a pooled connection, all within `limit` (the wait for the connection
/// included). Past it the call fails with [`Error::Unavailable`] and its connection is closed
/// instead of pooled again: a statement may still be queued on it, or the server may never
/// answer on it again.
pub(super) async fn within<T>(
    pool: &Pool,
    limit: Duration,
    call: impl AsyncFnOnce(&mut Object) -> Result<T, Error>,
) -> Result<T, Error> {
    let deadline = Instant::now() + limit;
    let mut client = match timeout_at(deadline, pool.get()).await {
        Ok(got) => got.map_err(|e| Error::Unavailable(format!("postgres: {}", describe(&e))))?,
        Err(_) => return Err(no_answer(limit)),
    };
    match timeout_at(deadline, call(&mut client)).await {
        Ok(result) => result,
        Err(_) => {
            // Dropping the detached client ends its connection task and closes the socket.
            drop(Object::take(client));
            Err(no_answer(limit))
        }
    }
}

fn no_answer(limit: Duration) -> Error {
    Error::Unavailable(format!("postgres: no answer within {limit:?}"))
}

pub(super) fn db(e: tokio_postgres::Error) -> Error {
    Error::Unavailable(format!("postgres: {}", describe(&e)))
}

/// `e` and its causes: tokio-postgres names only the kind of an error (`db error`, `error
/// performing TLS handshake`) and keeps what happened in its source.
pub(super) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        // Some wrappers repeat their source's text in their own.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}
