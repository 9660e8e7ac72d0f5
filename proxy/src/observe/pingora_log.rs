//! Pingora's `log` records on their way to tracing: a failed TLS handshake is counted
//! (`portcullis_tls_handshake_failures_total`) and logged at debug under `portcullis::tls`, not
//! at ERROR.
//!
//! Pingora's accept loop logs every handshake that fails or times out at ERROR, so a TLS
//! scanner or a plain-HTTP client on the TLS port would fill the log; Pingora has no callback
//! for a failed handshake, so this is where it is seen.

use std::fmt::{self, Write as _};

use log::{Level, Log, Metadata, Record};
use tracing_log::LogTracer;

use crate::observe::metrics::TLS_HANDSHAKE_FAILURES;

/// The module whose records carry Pingora's accept loop errors.
const LISTENING_TARGET: &str = "pingora_core::services::listening";

/// The target a failed handshake is logged under instead, at debug: Pingora's own targets
/// are filtered at warn ([`crate::observe::init_logging`]), so `log_level = "debug"` shows it.
const LOWERED_TARGET: &str = "portcullis::tls";

/// How each of those records starts ("Downstream handshake error from …: …", "Downstream
/// handshake timeout").
const HANDSHAKE_FAILURE: &str = "Downstream handshake ";

/// Forwards `log` records to tracing, lowering failed handshakes to debug.
pub struct PingoraLog {
    tracer: LogTracer,
}

impl PingoraLog {
    /// Installs the bridge as the `log` logger, passing records up to `max_level`.
    pub fn install(max_level: log::LevelFilter) -> Result<(), log::SetLoggerError> {
        log::set_boxed_logger(Box::new(Self {
            tracer: LogTracer::new(),
        }))?;
        log::set_max_level(max_level);
        Ok(())
    }
}

impl Log for PingoraLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.tracer.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !is_handshake_failure(record) {
            return self.tracer.log(record);
        }
        TLS_HANDSHAKE_FAILURES.inc();
        self.tracer.log(
            &Record::builder()
                .args(*record.args())
                .level(Level::Debug)
                .target(LOWERED_TARGET)
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.tracer.flush()
    }
}

fn is_handshake_failure(record: &Record<'_>) -> bool {
    if record.level() != Level::Error || record.target() != LISTENING_TARGET {
        return false;
    }
    let mut prefix = Prefix {
        rest: HANDSHAKE_FAILURE,
    };
    // Formatting stops (with an error) as soon as the text departs from the prefix or has
    // matched all of it.
    let _ = write!(prefix, "{}", record.args());
    prefix.rest.is_empty()
}

/// A writer that checks the text written to it starts with `rest`, without keeping it.
struct Prefix {
    rest: &'static str,
}

impl fmt::Write for Prefix {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.rest.len());
        if s.as_bytes()[..n] != self.rest.as_bytes()[..n] {
            self.rest = "\u{0}";
            return Err(fmt::Error);
        }
        self.rest = &self.rest[n..];
        if self.rest.is_empty() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_is_failure(level: Level, target: &str, args: fmt::Arguments<'_>) -> bool {
        is_handshake_failure(
            &Record::builder()
                .level(level)
                .target(target)
                .args(args)
                .build(),
        )
    }

    #[test]
    fn only_pingoras_handshake_errors_are_lowered() {
        let addr = "127.0.0.1:4242";
        let e = "TLS accept() failed: received corrupt message";
        assert!(record_is_failure(
            Level::Error,
            LISTENING_TARGET,
            format_args!("Downstream handshake error from {addr}: {e}")
        ));
        assert!(record_is_failure(
            Level::Error,
            LISTENING_TARGET,
            format_args!("Downstream handshake timeout")
        ));
        assert!(!record_is_failure(
            Level::Error,
            LISTENING_TARGET,
            format_args!("Accept() failed {e}")
        ));
        assert!(!record_is_failure(
            Level::Error,
            "pingora_core::other",
            format_args!("Downstream handshake timeout")
        ));
        assert!(!record_is_failure(
            Level::Error,
            LISTENING_TARGET,
            format_args!("Downstream")
        ));
    }
}
