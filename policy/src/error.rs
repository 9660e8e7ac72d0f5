//! Configuration errors, each tied to the key path where it was found.

use std::fmt;

/// One problem in a policy, found at `path` (e.g. `routes[2].policy[0].allow.or[1]`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyError {
    /// Full key path of the offending value.
    pub path: String,
    /// What is wrong, with a "did you mean" where one is close.
    pub message: String,
}

/// What can be wrong with a policy. Rendered into [`PolicyError::message`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub(crate) enum ErrorKind {
    /// A value of the wrong TOML type.
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    /// A name that is not known in this position.
    Unknown {
        what: &'static str,
        name: String,
        suggestion: Option<String>,
    },
    /// A known name used where it does not belong, with a hint about what to write instead.
    Misplaced { name: String, hint: String },
    /// Anything else: an invalid value with its explanation.
    Invalid(String),
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::WrongType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            ErrorKind::Unknown {
                what,
                name,
                suggestion,
            } => {
                write!(f, "unknown {what} {name:?}")?;
                if let Some(s) = suggestion {
                    write!(f, " (did you mean {s:?}?)")?;
                }
                Ok(())
            }
            ErrorKind::Misplaced { name, hint } => {
                write!(f, "{name:?} is not allowed here: {hint}")
            }
            ErrorKind::Invalid(message) => f.write_str(message),
        }
    }
}

/// The closest candidate to `name`, if one is close enough to be a likely typo.
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = name.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&lower, &c.to_lowercase()), c))
        .filter(|&(distance, c)| distance <= (c.chars().count() / 3).max(1))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, c)| c)
}
