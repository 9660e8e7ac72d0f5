//! Observability: Prometheus metrics, the access and refusal log lines, and the thread that
//! writes every log line.

pub mod log_writer;
pub mod metrics;
pub mod outcome;
pub mod request_log;

use crate::config::{Config, LogFormat};

/// Sets up logging: JSON lines (or pretty) on stdout, at `log_level`.
///
/// Lines are gathered and written by a background thread ([`log_writer`]), so a request
/// never waits for a write to stdout (the access log writes one line per request). Keep the
/// returned guard alive for the life of the process: dropping it writes what is still queued.
pub fn init_logging(config: &Config) -> log_writer::Guard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},pingora_core=warn,pingora_proxy=warn,pingora=warn",
            level = config.log_level
        ))
    });
    let (writer, guard) = log_writer::LogWriter::start(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone());
    match config.log_format {
        LogFormat::Json => {
            let installed = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .try_init();
            if installed.is_ok() {
                request_log::install(writer);
            }
        }
        LogFormat::Pretty => {
            let _ = builder.with_ansi(false).try_init();
        }
    }
    guard
}
