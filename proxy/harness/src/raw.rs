//! Raw HTTP/1.1 over TCP, for what a client library would not send or would hide: smuggling
//! shapes, hop-by-hop headers, websocket handshakes, and streams read byte by byte.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::{TestEnv, COOKIE, LOOPBACK};

/// The `Sec-WebSocket-Key` every handshake here sends (RFC 6455, section 1.3).
pub const WEBSOCKET_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// An upstream's `101` to a handshake with [`WEBSOCKET_KEY`].
pub const WEBSOCKET_101: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// Writes `request` as is on a fresh connection to 127.0.0.1:`port` and reads the whole
/// answer (10 s at most; the request should carry `Connection: close`). Returns the status
/// code (0 when there was no answer) and the raw response text.
pub async fn raw_request(port: u16, request: &str) -> (u16, String) {
    raw_request_bytes(port, request.as_bytes()).await
}

/// [`raw_request`] of bytes that need not be text (a request line with bytes outside ASCII,
/// or not UTF-8 at all).
pub async fn raw_request_bytes(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect((LOOPBACK, port))
        .await
        .expect("connect to the proxy");
    stream.write_all(request).await.expect("write the request");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// [`raw_request`] of a `GET` for `path` with `Host: host` (`name:port`), `extra_headers`
/// (each ending in `\r\n`) and `Connection: close`.
pub async fn raw_get(port: u16, host: &str, path: &str, extra_headers: &str) -> (u16, String) {
    raw_request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra_headers}Connection: close\r\n\r\n"),
    )
    .await
}

/// Reads an HTTP head (up to and with the blank line) byte by byte; `None` at end of file.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Reads from `s` into `got` until the bytes read so far contain `needle`; panics when a read
/// takes over five seconds or the stream ends first.
pub async fn read_until<S: AsyncRead + Unpin>(s: &mut S, got: &mut Vec<u8>, needle: &str) {
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(got).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{needle:?} in time"))
            .expect("read");
        assert!(n > 0, "{}", String::from_utf8_lossy(got));
        got.extend_from_slice(&buf[..n]);
    }
}

/// Whether `msg` written on `s` comes back within two seconds.
pub async fn echoes(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).await.is_err() {
        return false;
    }
    let mut got = vec![0u8; msg.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got)).await,
        Ok(Ok(_))
    ) && got == msg
}

/// Reads (and drops) whatever `s` receives until its end, for at most `limit`: the time the
/// end came after, or `None` if it stayed open.
pub async fn ends_within<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end)
        .await
        .ok()
        .map(|()| started.elapsed())
}

/// A websocket handshake for `path` on `host` (`HOST.localhost:PORT`), with `extra_headers`
/// (each ending in `\r\n`).
pub fn websocket_handshake(host: &str, path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WEBSOCKET_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
}

// === impl TestEnv ===

impl TestEnv {
    /// Opens a websocket through the proxy to `http://{host}.localhost:{port}{path}` with the
    /// session cookie `cookie` (when given) and returns the connection after its `101`; panics
    /// with the answer otherwise.
    pub async fn open_websocket(&self, host: &str, path: &str, cookie: Option<&str>) -> TcpStream {
        let mut s = TcpStream::connect((LOOPBACK, self.port))
            .await
            .expect("connect to the proxy");
        let cookie = cookie
            .map(|c| format!("Cookie: {COOKIE}={c}\r\n"))
            .unwrap_or_default();
        let handshake =
            websocket_handshake(&format!("{host}.localhost:{}", self.port), path, &cookie);
        s.write_all(handshake.as_bytes())
            .await
            .expect("write the handshake");
        let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut s))
            .await
            .expect("handshake answer in time")
            .unwrap_or_default();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "websocket to {host}{path}: {head}\n--- logs ---\n{}",
            self.logs()
        );
        s
    }
}
