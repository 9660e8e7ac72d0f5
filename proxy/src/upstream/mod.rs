//! The upstream side of a request: health checks, the route's deadline, and the re-check of
//! live streams.

pub mod deadline;
pub mod health;
pub mod streams;
pub mod tripwire;
