//! [`Identity`]: the facts about one signed-in user that criteria look at, kept compact because
//! a proxy holds one per cached session (100k sessions are 100k identities).
//!
//! Group names and claim names are interned: every identity naming group `users` shares one
//! `Arc<str>`. Strings that never change are `Box<str>`, claims a sorted boxed slice rather than
//! a map, and the lower-cased email is only kept when it differs from the email.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};

/// The facts about one signed-in user that criteria look at, built once per session.
#[derive(Clone, Debug)]
pub struct Identity {
    user: Box<str>,
    email: Box<str>,
    /// `email` lower-cased once, so that evaluation compares without allocating; `None` when
    /// the email is already lower case.
    email_lower: Option<Box<str>>,
    /// Byte offset of the domain in the lower-cased email when the email has exactly one `@`,
    /// else 0 (a domain never starts at 0: the local part is not empty).
    domain_start: u32,
    groups: Box<[Arc<str>]>,
    /// Top-level claims sorted by name, names interned.
    claims: Box<[(Arc<str>, Value)]>,
}

impl Identity {
    /// `user` is the IdP subject; `claims` all ID-token and userinfo claims.
    pub fn new(
        user: String,
        email: String,
        groups: Vec<String>,
        claims: Map<String, Value>,
    ) -> Identity {
        let lower = email.to_lowercase();
        let domain_start = match lower.split_once('@') {
            Some((local, domain))
                if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
            {
                u32::try_from(local.len() + 1).unwrap_or(0)
            }
            _ => 0,
        };
        let email_lower = (lower != email).then(|| lower.into_boxed_str());
        let mut claims: Vec<(Arc<str>, Value)> = claims
            .into_iter()
            .map(|(k, v)| (intern(&k), shrink(v)))
            .collect();
        claims.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Identity {
            user: user.into_boxed_str(),
            email: email.into_boxed_str(),
            email_lower,
            domain_start,
            groups: groups.iter().map(|g| intern(g)).collect(),
            claims: claims.into_boxed_slice(),
        }
    }

    /// The IdP subject.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The email address as the IdP gave it.
    pub fn email(&self) -> &str {
        &self.email
    }

    /// Group names or ids.
    pub fn groups(&self) -> &[Arc<str>] {
        &self.groups
    }

    /// All top-level claims, sorted by name.
    pub fn claims(&self) -> &[(Arc<str>, Value)] {
        &self.claims
    }

    /// The top-level claim called `name`.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims
            .binary_search_by(|(k, _)| (**k).cmp(name))
            .ok()
            .and_then(|i| self.claims.get(i))
            .map(|(_, v)| v)
    }

    /// The email lower-cased.
    pub(crate) fn email_lower(&self) -> &str {
        self.email_lower.as_deref().unwrap_or(&self.email)
    }

    /// The lower-cased domain of the email, when the email has exactly one `@`.
    pub(crate) fn domain_lower(&self) -> Option<&str> {
        let i = usize::try_from(self.domain_start).ok()?;
        (i > 0).then(|| self.email_lower().get(i..)).flatten()
    }
}

/// Shrinks a claim value's buffers to fit (deserialized strings and arrays may have spare
/// capacity), interning nothing inside: nested values are rare.
fn shrink(value: Value) -> Value {
    match value {
        Value::String(mut s) => {
            s.shrink_to_fit();
            Value::String(s)
        }
        Value::Array(items) => {
            let mut items: Vec<Value> = items.into_iter().map(shrink).collect();
            items.shrink_to_fit();
            Value::Array(items)
        }
        other => other,
    }
}

/// Names used over and over (group and claim names), shared.
struct Interner {
    names: HashSet<Arc<str>>,
    /// Drop names nobody uses any more when the set grows past this.
    prune_at: usize,
}

const MIN_PRUNE_AT: usize = 1024;

fn intern(name: &str) -> Arc<str> {
    static INTERNER: OnceLock<Mutex<Interner>> = OnceLock::new();
    let interner = INTERNER.get_or_init(|| {
        Mutex::new(Interner {
            names: HashSet::new(),
            prune_at: MIN_PRUNE_AT,
        })
    });
    let Ok(mut interner) = interner.lock() else {
        // A panic while holding the lock: carry on without sharing.
        return Arc::from(name);
    };
    if let Some(shared) = interner.names.get(name) {
        return Arc::clone(shared);
    }
    if interner.names.len() >= interner.prune_at {
        interner.names.retain(|n| Arc::strong_count(n) > 1);
        interner.prune_at = (interner.names.len() * 2).max(MIN_PRUNE_AT);
    }
    let shared: Arc<str> = Arc::from(name);
    interner.names.insert(Arc::clone(&shared));
    shared
}
