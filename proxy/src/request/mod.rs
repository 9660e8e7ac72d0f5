//! Request validation: what a request must be before any route or policy sees it.

pub mod path;
