//! The route's `timeout` as a deadline for the upstream's whole response.
//!
//! Pingora's upstream timeouts bound each wait for a byte, so an upstream that trickles its
//! response a byte at a time never trips them. A [`Deadline`] starts when the request goes to
//! the upstream (its first connection attempt: sending the request body counts) and ends when
//! the response is complete, or as soon as it turns out to be a stream (websocket, server-sent
//! events, a body of unknown length), which lives by `idle_timeout` instead. When it passes
//! first (found by one sweeper thread, at most [`SWEEP_EVERY`] late), it shuts the upstream
//! connection down ([`Tripwire`]): Pingora's wait ends with an error, which
//! `error_while_proxy` turns into a timeout (a 504 page when no response header was sent yet, a
//! cut response otherwise) and never into a retry.
//!
//! Only HTTP/1 upstream connections get one: an HTTP/2 connection carries other requests too,
//! so there the route's `timeout` bounds each wait, as before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::upstream::tripwire::{Socket, Tripwire};

/// How often the sweeper looks for passed deadlines: a deadline passes at most this late.
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// A running deadline; stops when dropped (it lives in the request's `Ctx`).
///
/// Starting one costs an allocation and a push under a lock: no task and no timer per request.
/// One sweeper thread for the whole process trips the deadlines that passed.
pub struct Deadline {
    shared: Arc<Shared>,
}

struct Shared {
    at: Instant,
    socket: Tripwire,
    passed: AtomicBool,
}

/// The deadlines started since the last sweep or still running; the dropped ones go at the next
/// sweep.
static PENDING: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

// === impl Deadline ===

impl Deadline {
    /// Starts a deadline at `at` for the upstream connection `socket`, which must be open and
    /// this request's now.
    pub fn start(at: Instant, socket: Socket) -> Deadline {
        let shared = Arc::new(Shared {
            at,
            socket: Tripwire::default(),
            passed: AtomicBool::new(false),
        });
        shared.socket.arm_socket(Some(socket));
        start_sweeper();
        pending().push(Arc::downgrade(&shared));
        Deadline { shared }
    }

    /// The request went to another upstream connection (a retry): the deadline goes on, for
    /// that one.
    pub fn retarget(&self, socket: Socket) {
        if !self.passed() {
            self.shared.socket.arm_socket(Some(socket));
        }
    }

    /// Whether the deadline passed before the response was complete.
    pub fn passed(&self) -> bool {
        self.shared.passed.load(Ordering::Acquire)
    }

    /// Stops the deadline: from when this returns, nothing is shut down.
    pub fn stop(&self) {
        self.shared.socket.disarm();
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pending() -> std::sync::MutexGuard<'static, Vec<Weak<Shared>>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the sweeper thread once. A plain thread, not a task: it must outlive any runtime.
fn start_sweeper() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("portcullis-deadlines".into())
            .spawn(|| loop {
                std::thread::sleep(SWEEP_EVERY);
                sweep(Instant::now());
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the deadline sweeper; route timeouts bound each wait only");
        }
    });
}

/// Trips every live deadline that passed by `now` and forgets those passed or dropped.
fn sweep(now: Instant) {
    pending().retain(|weak| {
        let Some(shared) = weak.upgrade() else {
            return false;
        };
        if shared.at > now {
            return true;
        }
        // `passed` first: the request reads it as soon as its wait for the upstream fails.
        if shared.socket.is_armed() {
            shared.passed.store(true, Ordering::Release);
            shared.socket.trip();
        }
        false
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd as _;
    use std::time::Duration;
    use tokio::io::AsyncReadExt as _;

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_passed_deadline_ends_the_wait_for_the_upstream() {
        let (mut proxy_side, _upstream) = pair().await;
        let started = Instant::now();
        let socket = Socket::of(proxy_side.as_raw_fd()).unwrap();
        let deadline = Deadline::start(started + Duration::from_millis(200), socket);
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), proxy_side.read(&mut buf))
            .await
            .expect("the wait ends")
            .unwrap();
        assert_eq!(n, 0);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(deadline.passed());
    }

    #[tokio::test]
    async fn a_stopped_deadline_does_nothing() {
        let (mut proxy_side, mut upstream) = pair().await;
        let socket = Socket::of(proxy_side.as_raw_fd()).unwrap();
        let deadline = Deadline::start(Instant::now() + Duration::from_millis(100), socket);
        deadline.stop();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!deadline.passed());
        use tokio::io::AsyncWriteExt as _;
        upstream.write_all(b"late").await.unwrap();
        let mut buf = [0u8; 4];
        proxy_side.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"late");
    }
}
