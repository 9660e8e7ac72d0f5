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
    let installed = match config.log_format {
        LogFormat::Json => tracing::subscriber::set_global_default(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish(),
        ),
        LogFormat::Pretty => {
            tracing::subscriber::set_global_default(builder.with_ansi(false).finish())
        }
    };
    if installed.is_ok() {
        // Pingora logs through `log`: its records reach the subscriber through this bridge.
        let max_level = tracing_log::AsLog::as_log(&tracing::level_filters::LevelFilter::current());
        let _ = tracing_log::LogTracer::init_with_filter(max_level);
        if config.log_format == LogFormat::Json {
            request_log::install(writer);
        }
    }
    guard
}
