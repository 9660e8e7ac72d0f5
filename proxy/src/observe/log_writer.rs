//! The log writer: every thread appends its lines to one shared buffer, and one writer thread
//! writes what has gathered to stdout.
//!
//! A line costs an uncontended lock and a copy, and a busy proxy writes in large pieces; a
//! queue of one message per line would wake the writer thread for every line.
//!
//! - The per-request lines ([`crate::observe::request_log`], through [`LogWriter::append`])
//!   wait at most [`FLUSH_INTERVAL`], or until [`FLUSH_BYTES`] have gathered.
//! - Every other line (`tracing` events: start, reloads, warnings) wakes the writer at once, and
//!   takes what gathered before it along, in order.
//!
//! Lossless: when the writer cannot keep up and [`MAX_PENDING`] bytes wait, a thread that logs
//! waits for room rather than drop a line. Dropping the [`Guard`] writes what is left.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The `tracing` targets of the per-request lines ([`crate::observe::request_log`]): their
/// lines may wait for the next flush.
pub const REQUEST_TARGETS: [&str; 2] = ["access", "authorize"];
/// How long a per-request line may wait in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(5);
/// The writer is woken early once this much has gathered.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Threads that log wait for room beyond this.
pub const MAX_PENDING: usize = 8 * 1024 * 1024;
/// A buffer that grew past this while the writer lagged is given back once written: the two
/// buffers would otherwise keep their largest size (up to twice [`MAX_PENDING`]) for good.
const RETAINED_BYTES: usize = 4 * FLUSH_BYTES;

/// A handle that appends lines; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
    /// Whether a line given to `write` wakes the writer at once (an event line); per-request
    /// lines wait like [`LogWriter::append`]'s.
    urgent: bool,
}

/// Stops the writer thread when dropped, after it wrote everything appended before.
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// The writer waits here (with a timeout) for lines.
    gathered: Condvar,
    /// Threads that log wait here when `MAX_PENDING` bytes wait.
    room: Condvar,
    closed: AtomicBool,
    max_pending: usize,
    /// The writer is woken early from this many bytes on.
    wake_at: usize,
    /// [`FLUSH_INTERVAL`], except in tests.
    interval: Duration,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// A line that must not wait is in `bytes`.
    urgent: bool,
}

impl LogWriter {
    /// Starts the writer thread, writing to `out`.
    pub fn start(out: impl Write + Send + 'static) -> (LogWriter, Guard) {
        LogWriter::start_with(out, MAX_PENDING, FLUSH_INTERVAL)
    }

    fn start_with(
        mut out: impl Write + Send + 'static,
        max_pending: usize,
        interval: Duration,
    ) -> (LogWriter, Guard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                bytes: Vec::with_capacity(FLUSH_BYTES),
                urgent: false,
            }),
            gathered: Condvar::new(),
            room: Condvar::new(),
            closed: AtomicBool::new(false),
            max_pending,
            wake_at: FLUSH_BYTES.min(max_pending),
            interval,
        });
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("portcullis-log".into())
            .spawn(move || writer.run(&mut out))
            .ok();
        (
            LogWriter {
                shared: shared.clone(),
                urgent: true,
            },
            Guard { shared, thread },
        )
    }

    /// Appends `bytes` (whole lines) to what the writer thread writes within
    /// [`FLUSH_INTERVAL`].
    pub fn append(&self, bytes: &[u8]) {
        self.push(bytes, false);
    }

    fn push(&self, bytes: &[u8], urgent: bool) {
        let shared = &*self.shared;
        let mut pending = shared.lock();
        while pending.bytes.len() >= shared.max_pending && !shared.closed.load(Ordering::Acquire) {
            shared.gathered.notify_one();
            pending = shared.room.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        let before = pending.bytes.len();
        pending.bytes.extend_from_slice(bytes);
        // A wake is a syscall: once when the buffer crosses the threshold, and for a line
        // that must not wait, once until the writer takes it.
        let crossed = before < shared.wake_at && pending.bytes.len() >= shared.wake_at;
        let first_urgent = urgent && !pending.urgent;
        pending.urgent |= urgent;
        if crossed || first_urgent {
            shared.gathered.notify_one();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer thread: swaps the buffer out and writes it, until closed and empty.
    fn run(&self, out: &mut dyn Write) {
        let mut writing = Vec::with_capacity(FLUSH_BYTES);
        loop {
            let closed = {
                let mut pending = self.lock();
                if pending.bytes.len() < self.wake_at
                    && !pending.urgent
                    && !self.closed.load(Ordering::Acquire)
                {
                    pending = self
                        .gathered
                        .wait_timeout(pending, self.interval)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                std::mem::swap(&mut pending.bytes, &mut writing);
                pending.urgent = false;
                self.closed.load(Ordering::Acquire)
            };
            self.room.notify_all();
            if !writing.is_empty() {
                // Nowhere to report a failed write to stdout; the lines are dropped then.
                let _ = out.write_all(&writing);
                let _ = out.flush();
                writing.clear();
                if writing.capacity() > RETAINED_BYTES {
                    writing = Vec::with_capacity(FLUSH_BYTES);
                }
            }
            if closed && self.lock().bytes.is_empty() {
                return;
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        // Under the lock, so that the writer cannot miss it between its check and its wait.
        drop(self.shared.lock());
        self.shared.gathered.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `tracing_subscriber` formats a whole event, then writes it with one `write_all`: an event
/// line is written at once, except a per-request line (see `make_writer_for`).
impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.push(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }

    /// The per-request lines that go through `tracing` (`log_format = "pretty"`) wait like
    /// [`LogWriter::append`]'s: woken for each, the writer thread cost a futex wake per
    /// request.
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LogWriter {
            shared: self.shared.clone(),
            urgent: !REQUEST_TARGETS.contains(&meta.target()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An `out` whose bytes the test reads.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_burst_does_not_keep_its_buffers_once_written() {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::start_with(sink.clone(), MAX_PENDING, FLUSH_INTERVAL);
        // Far more than a flush at once, as when the writer fell behind for a while.
        let burst = vec![b'x'; 2 * 1024 * 1024];
        writer.append(&burst);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut written = 0;
        while written < burst.len() + 4 && Instant::now() < deadline {
            writer.append(b"\n");
            std::thread::sleep(FLUSH_INTERVAL * 2);
            written = sink.0.lock().unwrap().len();
        }
        // The two buffers take turns as the one lines are appended to: look at both.
        let mut kept = 0;
        for _ in 0..8 {
            writer.append(b"\n");
            // Not a multiple of the writer's period, so that both turns are seen.
            std::thread::sleep(FLUSH_INTERVAL * 3 / 2);
            kept = kept.max(guard.shared.lock().bytes.capacity());
        }
        assert!(kept <= RETAINED_BYTES, "{kept} bytes kept after the burst");
        drop(guard);
        assert!(sink.0.lock().unwrap().len() > burst.len());
    }

    #[test]
    fn every_line_of_every_thread_arrives_in_order_even_when_the_buffer_is_full() {
        let sink = Sink::default();
        // A bound of 1 KiB: the threads wait for room again and again.
        let (writer, guard) = LogWriter::start_with(sink.clone(), 1024, FLUSH_INTERVAL);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        writer.append(format!("t{t} line {i}\n").as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        for t in 0..4 {
            let prefix = format!("t{t} ");
            let numbers: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&prefix))
                .map(|l| l.trim_start_matches("line ").parse().unwrap())
                .collect();
            assert_eq!(numbers, (0..5_000).collect::<Vec<_>>(), "thread {t}");
        }
    }

    #[test]
    fn an_event_line_is_written_at_once_with_the_lines_before_it() {
        let sink = Sink::default();
        // Request lines would wait a minute here.
        let (mut writer, _guard) =
            LogWriter::start_with(sink.clone(), MAX_PENDING, Duration::from_secs(60));
        // Let the writer settle into its wait.
        std::thread::sleep(Duration::from_millis(50));
        writer.append(b"request line\n");
        writer.write_all(b"event line\n").unwrap();
        let start = Instant::now();
        while sink.0.lock().unwrap().len() < 24 {
            assert!(start.elapsed() < Duration::from_secs(5), "never written");
            std::thread::yield_now();
        }
        assert_eq!(&sink.0.lock().unwrap()[..], b"request line\nevent line\n");
    }

    #[test]
    fn a_per_request_line_through_tracing_waits_and_an_event_line_takes_it_along() {
        let sink = Sink::default();
        let (writer, _guard) =
            LogWriter::start_with(sink.clone(), MAX_PENDING, Duration::from_secs(60));
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(writer)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            std::thread::sleep(Duration::from_millis(50));
            for target in REQUEST_TARGETS {
                match target {
                    "access" => tracing::info!(target: "access", "a request line"),
                    "authorize" => tracing::info!(target: "authorize", "a refusal line"),
                    other => panic!("a request target this test does not know: {other}"),
                }
            }
            std::thread::sleep(Duration::from_millis(200));
            assert!(sink.0.lock().unwrap().is_empty(), "written at once");
            tracing::warn!("an event line");
        });
        let start = Instant::now();
        while !String::from_utf8_lossy(&sink.0.lock().unwrap()).contains("an event line") {
            assert!(start.elapsed() < Duration::from_secs(5), "never written");
            std::thread::yield_now();
        }
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let order: Vec<&str> = ["a request line", "a refusal line", "an event line"]
            .into_iter()
            .filter(|l| text.contains(l))
            .collect();
        assert_eq!(order.len(), 3, "{text}");
        assert!(text.find("a request line") < text.find("a refusal line"));
        assert!(text.find("a refusal line") < text.find("an event line"));
    }

    #[test]
    fn a_line_reaches_the_output_without_more_traffic() {
        let sink = Sink::default();
        let (writer, _guard) = LogWriter::start(sink.clone());
        writer.append(b"only line\n");
        let start = Instant::now();
        while sink.0.lock().unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&sink.0.lock().unwrap()[..], b"only line\n");
    }
}
