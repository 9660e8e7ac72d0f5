//! The lines logged for every request: `access` (one per request) and `authorize` (one per
//! refusal by policy).
//!
//! With `log_format = "json"` they are serialized with `serde_json` straight into a reused
//! buffer and queued on the log writer, not through `tracing`'s JSON formatter, which writes
//! every field through `fmt::Write` adaptors with a UTF-8 check per piece: these lines are
//! written for every request, so their cost is part of every request's.
//!
//! The lines are the same as `tracing` would write: same keys in the same order, same
//! timestamp format, same level filter (`log_level`, or `RUST_LOG`, read once at start). With
//! `log_format = "pretty"`, or in a process that did not set up logging (in-process tests),
//! the lines go through `tracing` as before.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::observe::log_writer::LogWriter;
use serde::Serialize;

/// The access log line of one request.
#[derive(Serialize)]
pub struct Access<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    /// The client's address (see `Validated::client_ip`), or empty.
    pub ip: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub route: &'a str,
    pub user: &'a str,
    pub decision: &'a str,
    pub error: &'a str,
}

/// The line of a request the route's policy refused (403, 401 or a sign-in redirect).
#[derive(Serialize)]
pub struct Refused<'a> {
    pub request_id: &'a str,
    pub route: &'a str,
    pub user: &'a str,
    pub email: &'a str,
    pub decision: &'a str,
    pub reason: &'a str,
}

const REFUSED_MESSAGE: &str = "request refused by policy";

impl Access<'_> {
    /// The fields as `serde_json` writes them, without the braces, by hand: this line is
    /// written for every request, and strings that need no escaping (nearly all) are copied
    /// as they are, not byte by byte.
    fn write_fields(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        buf.extend_from_slice(b"\"request_id\":");
        push_json_str(buf, self.request_id)?;
        buf.extend_from_slice(b",\"method\":");
        push_json_str(buf, self.method)?;
        buf.extend_from_slice(b",\"host\":");
        push_json_str(buf, self.host)?;
        buf.extend_from_slice(b",\"path\":");
        push_json_str(buf, self.path)?;
        buf.extend_from_slice(b",\"ip\":");
        push_json_str(buf, self.ip)?;
        buf.extend_from_slice(b",\"status\":");
        buf.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        buf.extend_from_slice(b",\"duration_ms\":");
        serde_json::to_writer(&mut *buf, &self.duration_ms)?;
        buf.extend_from_slice(b",\"route\":");
        push_json_str(buf, self.route)?;
        buf.extend_from_slice(b",\"user\":");
        push_json_str(buf, self.user)?;
        buf.extend_from_slice(b",\"decision\":");
        push_json_str(buf, self.decision)?;
        buf.extend_from_slice(b",\"error\":");
        push_json_str(buf, self.error)
    }
}

/// `s` as a JSON string: copied as it is when nothing in it needs escaping, else escaped by
/// `serde_json` (which escapes exactly control characters, `"` and `\`).
fn push_json_str(buf: &mut Vec<u8>, s: &str) -> Result<(), serde_json::Error> {
    // No early exit, so that the check compiles to a few vector instructions.
    let escape = s
        .bytes()
        .fold(false, |e, b| e | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if escape {
        return serde_json::to_writer(&mut *buf, s);
    }
    buf.push(b'"');
    buf.extend_from_slice(s.as_bytes());
    buf.push(b'"');
    Ok(())
}

/// The fields of a `Serialize` line, without the braces of their own object.
fn serde_fields<T: Serialize>(buf: &mut Vec<u8>, fields: &T) -> Result<(), serde_json::Error> {
    let fields_start = buf.len();
    serde_json::to_writer(&mut *buf, fields)?;
    if buf.get(fields_start) == Some(&b'{') && buf.last() == Some(&b'}') {
        buf.remove(fields_start);
        buf.pop();
    }
    Ok(())
}

/// Writes the access line of a request.
pub fn access(line: &Access<'_>) {
    write(
        |w| w.access,
        "access",
        None,
        |buf| line.write_fields(buf),
        || {
            tracing::info!(
                target: "access",
                request_id = line.request_id,
                method = line.method,
                host = line.host,
                path = line.path,
                ip = line.ip,
                status = line.status,
                duration_ms = line.duration_ms,
                route = line.route,
                user = line.user,
                decision = line.decision,
                error = line.error,
            )
        },
    );
}

/// Writes the line of a request refused by policy.
pub fn refused(line: &Refused<'_>) {
    write(
        |w| w.authorize,
        "authorize",
        Some(REFUSED_MESSAGE),
        |buf| serde_fields(buf, line),
        || {
            tracing::info!(
                target: "authorize",
                request_id = line.request_id,
                route = line.route,
                user = line.user,
                email = line.email,
                decision = line.decision,
                reason = line.reason,
                "{REFUSED_MESSAGE}"
            )
        },
    );
}

/// A line's fields, written into a buffer (see [`format_line`]).
trait Fields: FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error> {}
impl<F: FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>> Fields for F {}

/// A line through the installed writer when `enabled` there (its fields written by
/// `fields`), else through `tracing` (`via_tracing`).
fn write(
    enabled: fn(&Writer) -> bool,
    target: &'static str,
    message: Option<&'static str>,
    fields: impl Fields,
    via_tracing: impl FnOnce(),
) {
    match WRITER.get() {
        Some(w) if enabled(w) => w.emit(target, message, fields),
        Some(_) => {}
        None => via_tracing(),
    }
}

/// Sends the per-request lines to `out` from now on, for a JSON log whose subscriber is
/// installed (the level filter is read from it here, once).
pub(crate) fn install(out: LogWriter) {
    let _ = WRITER.set(Writer {
        out,
        access: tracing::enabled!(target: "access", tracing::Level::INFO),
        authorize: tracing::enabled!(target: "authorize", tracing::Level::INFO),
    });
}

static WRITER: OnceLock<Writer> = OnceLock::new();

struct Writer {
    out: LogWriter,
    access: bool,
    authorize: bool,
}

thread_local! {
    /// Each Pingora thread formats its lines here; the writer's queue gets a copy.
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl Writer {
    fn emit(&self, target: &'static str, message: Option<&'static str>, fields: impl Fields) {
        BUFFER.with(|buffer| {
            // Never re-entered (nothing here logs); should it be, the line goes unbuffered.
            let mut fresh = Vec::new();
            let mut borrowed = buffer.try_borrow_mut();
            let buf = match borrowed.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => &mut fresh,
            };
            buf.clear();
            if format_line(buf, SystemTime::now(), target, message, fields).is_ok() {
                // The writer is lossless: a full buffer makes this wait, it never drops a line.
                self.out.append(buf);
            }
        });
    }
}

/// One line as `tracing_subscriber`'s flattened JSON format writes it: timestamp, level,
/// message, the fields in order (written by `fields`), target.
fn format_line(
    buf: &mut Vec<u8>,
    now: SystemTime,
    target: &'static str,
    message: Option<&'static str>,
    fields: impl Fields,
) -> Result<(), serde_json::Error> {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    write!(buf, "{}", humantime::format_rfc3339_micros(now)).map_err(serde_json::Error::io)?;
    buf.extend_from_slice(b"\",\"level\":\"INFO\",");
    if let Some(message) = message {
        buf.extend_from_slice(b"\"message\":");
        serde_json::to_writer(&mut *buf, message)?;
        buf.push(b',');
    }
    fields(buf)?;
    buf.extend_from_slice(b",\"target\":");
    serde_json::to_writer(&mut *buf, target)?;
    buf.extend_from_slice(b"}\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_tracing_s_keys_in_tracing_s_order() {
        let fields = Refused {
            request_id: "0123456789abcdef",
            route: "http://app.localhost",
            user: "u1",
            email: "a\"b@example.com",
            decision: "forbidden",
            reason: "denied: no allow rule matched",
        };
        let mut buf = Vec::new();
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_500_000);
        format_line(&mut buf, at, "authorize", Some(REFUSED_MESSAGE), |buf| {
            serde_fields(buf, &fields)
        })
        .expect("formats");
        let text = String::from_utf8(buf).expect("UTF-8");
        assert_eq!(
            text,
            r#"{"timestamp":"1970-01-01T00:00:01.500000Z","level":"INFO","message":"request refused by policy","request_id":"0123456789abcdef","route":"http://app.localhost","user":"u1","email":"a\"b@example.com","decision":"forbidden","reason":"denied: no allow rule matched","target":"authorize"}"#.to_owned() + "\n"
        );
    }

    /// What `tracing_subscriber`'s flattened JSON format writes for these fields, timestamp
    /// blanked.
    fn tracing_line(emit: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let out = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        blank_timestamp(&text)
    }

    fn blank_timestamp(line: &str) -> String {
        let start = line.find("\"timestamp\":\"").unwrap() + 13;
        let end = start + line[start..].find('"').unwrap();
        format!("{}{}", &line[..start], &line[end..])
    }

    #[test]
    fn the_lines_are_the_ones_tracing_would_write() {
        // Plain strings (copied as they are) and ones that need escaping, in every field.
        let odd = "/a \"b\"\\c\u{1}\té\u{7f}\u{2028}";
        for (text, duration_ms) in [("plain", 1.25), (odd, 0.0), ("", 1e-7), (odd, 12345.678)] {
            let access = Access {
                request_id: "0123456789abcdef",
                method: if text.is_empty() { "GET" } else { text },
                host: text,
                path: text,
                ip: text,
                status: 200,
                duration_ms,
                route: "http://app.localhost:8000",
                user: text,
                decision: "allow",
                error: text,
            };
            let expected = tracing_line(|| {
                // Not installed here: this is the `tracing` path.
                super::access(&access);
            });
            let mut buf = Vec::new();
            format_line(&mut buf, SystemTime::now(), "access", None, |buf| {
                access.write_fields(buf)
            })
            .unwrap();
            assert_eq!(
                blank_timestamp(std::str::from_utf8(&buf).unwrap()),
                expected
            );
            // And the same as serde_json writes the struct.
            let mut by_serde = Vec::new();
            serde_fields(&mut by_serde, &access).unwrap();
            let mut by_hand = Vec::new();
            access.write_fields(&mut by_hand).unwrap();
            assert_eq!(by_hand, by_serde);
        }

        let refused = Refused {
            request_id: "0123456789abcdef",
            route: "http://app.localhost:8000",
            user: "u1",
            email: "bob@example.com",
            decision: "forbidden",
            reason: "denied: no allow rule matched",
        };
        let expected = tracing_line(|| super::refused(&refused));
        let mut buf = Vec::new();
        format_line(
            &mut buf,
            SystemTime::now(),
            "authorize",
            Some(REFUSED_MESSAGE),
            |buf| serde_fields(buf, &refused),
        )
        .unwrap();
        assert_eq!(
            blank_timestamp(std::str::from_utf8(&buf).unwrap()),
            expected
        );
    }
}
