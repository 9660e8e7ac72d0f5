//! Observability: Prometheus metrics, the access and refusal log lines, and the thread that
//! writes every log line.

pub mod log_writer;
pub mod metrics;
pub mod request_log;
