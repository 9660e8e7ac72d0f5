//! Configuration errors and the collector that gathers every one of them with its key path.

use std::fmt;

use super::schema::{did_you_mean, Field};

/// One configuration problem, with the key path it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

// === impl ConfigError ===

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// === impl Errors ===

#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<ConfigError>);

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(super) fn into_result(self) -> ConfigErrors {
        ConfigErrors(self.0)
    }

    /// The value of an optional key; reports a wrong type.
    pub(super) fn opt<T>(&mut self, path: &str, field: Field<T>) -> Option<T> {
        match field {
            Field::Missing => None,
            Field::Value(v) => Some(v),
            Field::Invalid(e) => {
                self.push(path, e);
                None
            }
        }
    }

    /// The value of a key with a default.
    pub(super) fn or<T>(&mut self, path: &str, field: Field<T>, default: T) -> T {
        self.opt(path, field).unwrap_or(default)
    }

    /// The value of a required key.
    pub(super) fn required<T>(&mut self, path: &str, field: Field<T>) -> Option<T> {
        if !field.is_present() {
            self.push(path, "is required");
        }
        self.opt(path, field)
    }

    pub(super) fn unknown(
        &mut self,
        prefix: &str,
        keys: impl IntoIterator<Item = String>,
        known: &[&str],
    ) {
        for key in keys {
            let message = match did_you_mean(&key, known) {
                Some(k) => format!("unknown key (did you mean \"{k}\"?)"),
                None => "unknown key".to_string(),
            };
            let path = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            self.push(path, message);
        }
    }
}
