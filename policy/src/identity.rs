//! [`Identity`]: the facts about one signed-in user that criteria look at, kept compact because
//! a proxy holds one per cached session (100k sessions are 100k identities).
//!
//! Group names and claim names are interned: every identity naming group `users` shares one
//! `Arc<str>`. The user, email and name live end to end in one allocation (a request reads them
//! together, and with many sessions each separate string is one more cache miss), claims a
//! sorted boxed slice rather than a map, and the lower-cased email is only kept when it differs
//! from the email. Claims that
//! repeat an identity field (`sub`, `email`, `name`, `groups`, as ID tokens usually carry them)
//! are not stored twice: [`Identity::claim`] answers them from the field.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};

/// The facts about one signed-in user that criteria look at, built once per session.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The user (IdP subject), the email, the email lower-cased when that differs (once, so
    /// that evaluation compares without allocating), and the display name, end to end.
    text: Box<str>,
    /// Where the email, the lower-cased email and the name start in `text`. The lower-cased
    /// email is empty (`text[starts[1]..starts[2]]`) when the email is already lower case.
    starts: [u32; 3],
    /// Byte offset of the domain in the lower-cased email when the email has exactly one `@`,
    /// else 0 (a domain never starts at 0: the local part is not empty).
    domain_start: u32,
    groups: Box<[Arc<str>]>,
    /// Top-level claims sorted by name, names interned, without those that only repeat a field
    /// (see [`Identity::claim`]).
    claims: Box<[(Arc<str>, Value)]>,
}

/// A claim's value as [`Identity::claim`] finds it: stored as the IdP sent it, or one of the
/// identity's own fields.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Claim<'a> {
    /// As the IdP sent it.
    Json(&'a Value),
    /// A text field (`sub`, `email`, `name`).
    Str(&'a str),
    /// The groups.
    List(&'a [Arc<str>]),
}

/// The claims answered from identity fields when the IdP did not send a different value.
const FIELD_CLAIMS: [&str; 4] = ["email", "groups", "name", "sub"];

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
        let lower = if lower == email { "" } else { lower.as_str() };
        // The offsets are `u32`: past 4 GiB (far beyond any token an IdP sends) a field would
        // read as cut or empty, never panic. The name comes last (`with_name`).
        let at = |end: usize| u32::try_from(end).unwrap_or(u32::MAX);
        let (email_at, lower_at) = (user.len(), user.len() + email.len());
        let mut identity = Identity {
            text: [user.as_str(), &email, lower].concat().into_boxed_str(),
            starts: [at(email_at), at(lower_at), at(lower_at + lower.len())],
            domain_start,
            groups: groups.iter().map(|g| intern(g)).collect(),
            claims: Box::default(),
        };
        let mut kept: Vec<(Arc<str>, Value)> = claims
            .into_iter()
            // `name` is compared once the name is known (`with_name`).
            .filter(|(k, v)| k != "name" && !identity.field_is(k, v))
            .map(|(k, v)| (intern(&k), shrink(v)))
            .collect();
        kept.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        identity.claims = kept.into_boxed_slice();
        identity
    }

    /// The same identity with display name `name`; a stored `name` claim equal to it is
    /// dropped (answered from the field).
    pub fn with_name(mut self, name: String) -> Identity {
        // The name is the last part of `text`: the rest and its offsets stay as they are.
        let kept = self.part(0, self.starts[2] as usize);
        self.text = [kept, &name].concat().into_boxed_str();
        if let Some(i) = self.stored_claim_index("name") {
            if self
                .claims
                .get(i)
                .is_some_and(|(_, v)| self.field_is("name", v))
            {
                let mut claims = std::mem::take(&mut self.claims).into_vec();
                claims.remove(i);
                self.claims = claims.into_boxed_slice();
            }
        }
        self
    }

    /// `text[from..to]`, or empty if out of range (never, by construction).
    fn part(&self, from: usize, to: usize) -> &str {
        self.text.get(from..to).unwrap_or_default()
    }

    /// The lower-cased email as stored: empty when it equals the email.
    fn stored_lower(&self) -> &str {
        let [_, lower, name] = self.starts;
        self.part(lower as usize, name as usize)
    }

    /// Whether claim `key` holding `value` says exactly what the identity field of that name
    /// says.
    fn field_is(&self, key: &str, value: &Value) -> bool {
        match (key, value) {
            ("sub", Value::String(v)) => v == self.user(),
            ("email", Value::String(v)) => v == self.email(),
            ("name", Value::String(v)) => v == self.name(),
            ("groups", Value::Array(items)) => {
                items.len() == self.groups.len()
                    && items
                        .iter()
                        .zip(self.groups.iter())
                        .all(|(i, g)| i.as_str() == Some(&**g))
            }
            _ => false,
        }
    }

    fn stored_claim_index(&self, name: &str) -> Option<usize> {
        self.claims.binary_search_by(|(k, _)| (**k).cmp(name)).ok()
    }

    /// The IdP subject.
    pub fn user(&self) -> &str {
        self.part(0, self.starts[0] as usize)
    }

    /// The email address as the IdP gave it.
    pub fn email(&self) -> &str {
        let [email, lower, _] = self.starts;
        self.part(email as usize, lower as usize)
    }

    /// Group names or ids.
    pub fn groups(&self) -> &[Arc<str>] {
        &self.groups
    }

    /// The display name; empty when unknown.
    pub fn name(&self) -> &str {
        self.part(self.starts[2] as usize, self.text.len())
    }

    /// The top-level claim called `name`: as the IdP sent it, or else, for `sub`, `email`,
    /// `name` and `groups`, the identity field.
    pub fn claim(&self, name: &str) -> Option<Claim<'_>> {
        if let Some((_, v)) = self
            .stored_claim_index(name)
            .and_then(|i| self.claims.get(i))
        {
            return Some(Claim::Json(v));
        }
        match name {
            "sub" => Some(Claim::Str(self.user())),
            "email" => Some(Claim::Str(self.email())),
            "name" => Some(Claim::Str(self.name())),
            "groups" => Some(Claim::List(&self.groups)),
            _ => None,
        }
    }

    /// Roughly how many heap bytes this identity holds beyond its own struct (for cache
    /// weighing; interned names count as shared).
    pub fn heap_bytes(&self) -> usize {
        self.text.len()
            + self.groups.len() * std::mem::size_of::<Arc<str>>()
            + self
                .claims
                .iter()
                .map(|(_, v)| std::mem::size_of::<(Arc<str>, Value)>() + value_heap_bytes(v))
                .sum::<usize>()
    }

    /// Every top-level claim as JSON, sorted by name (for pages and APIs, not the hot path).
    pub fn claims_json(&self) -> Map<String, Value> {
        let mut all: Map<String, Value> = self
            .claims
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        for key in FIELD_CLAIMS {
            if !all.contains_key(key) {
                if let Some(claim) = self.claim(key) {
                    all.insert(key.to_owned(), claim.to_json());
                }
            }
        }
        all
    }

    /// The email lower-cased.
    pub(crate) fn email_lower(&self) -> &str {
        match self.stored_lower() {
            "" => self.email(),
            lower => lower,
        }
    }

    /// The lower-cased domain of the email, when the email has exactly one `@`.
    pub(crate) fn domain_lower(&self) -> Option<&str> {
        let i = usize::try_from(self.domain_start).ok()?;
        (i > 0).then(|| self.email_lower().get(i..)).flatten()
    }
}

// === impl Claim ===

impl Claim<'_> {
    /// The value as JSON (allocates).
    pub fn to_json(&self) -> Value {
        match self {
            Claim::Json(v) => (*v).clone(),
            Claim::Str(s) => Value::String((*s).to_owned()),
            Claim::List(items) => {
                Value::Array(items.iter().map(|g| Value::String(g.to_string())).collect())
            }
        }
    }
}

fn value_heap_bytes(value: &Value) -> usize {
    const SLOT: usize = std::mem::size_of::<Value>();
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(|v| SLOT + value_heap_bytes(v)).sum(),
        // A map node per entry: key, value and the tree's own links.
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| k.len() + 2 * SLOT + value_heap_bytes(v))
            .sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
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
