//! Upstreams written on raw TCP, for what the recording [`crate::Upstream`] does not do:
//! websocket echoes, event streams that stay open, and answers cut or trickled at will.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::raw::{read_head, WEBSOCKET_101};
use crate::LOOPBACK;

/// A raw upstream on 127.0.0.1: for every connection it reads one request head, answers with
/// `head`, then runs `then` on the socket. Returns its port and the number of connections
/// accepted so far.
pub async fn raw_upstream<F, Fut>(head: &'static str, then: F) -> (u16, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((LOOPBACK, 0))
        .await
        .expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let then = Arc::new(then);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let then = then.clone();
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                then(s).await;
            });
        }
    });
    (port, accepted)
}

/// Echoes every byte `s` receives until it ends.
pub async fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n @ 1..) = s.read(&mut buf).await {
        if s.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A raw HTTP/1.1 upstream for long-lived streams, one request per connection, on 127.0.0.1:
/// a websocket handshake (an `Upgrade` header) gets `101` and then an echo of every byte;
/// a path ending in `/events` gets an event stream (chunked) with one event, then nothing
/// until the proxy closes the connection; anything else gets `200 ok`. Returns its port.
pub async fn stream_upstream() -> u16 {
    let listener = TcpListener::bind((LOOPBACK, 0))
        .await
        .expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Some(head) = read_head(&mut s).await else {
                    return;
                };
                let head = head.to_ascii_lowercase();
                if head.contains("\r\nupgrade: websocket") {
                    // Pingora 0.9.1 tears an upgrade down when it reads the 101 before it has
                    // handled the handshake's own (empty) request body (cloudflare/pingora#946):
                    // a fast answer on a busy machine makes these tests flaky, so answer late.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if s.write_all(WEBSOCKET_101.as_bytes()).await.is_ok() {
                        echo(s).await;
                    }
                } else if head
                    .split(' ')
                    .nth(1)
                    .is_some_and(|path| path.ends_with("/events"))
                {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
                              d\r\ndata: first\n\n\r\n",
                        )
                        .await;
                    // Idle until the proxy goes away.
                    let mut buf = [0u8; 1024];
                    while let Ok(1..) = s.read(&mut buf).await {}
                } else {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
        }
    });
    port
}
