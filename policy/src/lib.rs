//! Portcullis's policy language: the rules that decide whether a request may reach a route.
//!
//! The language follows Pomerium's PPL. A policy is one rule or a list of rules; a rule is
//! `{ allow = BLOCK }` or `{ deny = BLOCK }`; a block combines criteria with the operators `and`,
//! `or`, `not` and `nor`. Access needs at least one matching `allow` rule and no matching `deny`
//! rule.
//!
//! ```toml
//! policy = [
//!   { allow = { or = [ { email = { is = "alice@example.com" } }, { groups = { has = "admins" } } ] } },
//!   { deny  = { and = [ { http_method = { is = "DELETE" } } ] } },
//! ]
//! ```
//!
//! The crate is pure: [`Policy::parse`] compiles the TOML once (every string lower-cased, every
//! CIDR, time and time zone parsed ahead), and [`Policy::evaluate`] decides a [`Request`] with no
//! I/O, no clock read (the time is passed in as [`Request::now_unix`]) and no allocation.
//!
//! ```
//! use portcullis_policy::{Identity, Policy, Request};
//!
//! let value: toml::Value = toml::from_str(
//!     r#"policy = { allow = { or = [ { domain = "example.com" } ] } }"#,
//! ).unwrap();
//! let policy = Policy::parse(&value["policy"], "routes[0].policy").unwrap();
//!
//! let alice = Identity::new("sub-1".into(), "Alice@Example.com".into(), vec![], Default::default());
//! let request = Request::new("GET", "/", 1_700_000_000).with_identity(&alice);
//! let decision = policy.evaluate(&request);
//! assert!(decision.allowed);
//! println!("{}", decision.explain(&policy)); // allowed by rule 0: allow = { or = [...] }
//! ```
//!
//! # Semantics decided here
//!
//! - `and` holds when every element matches (`and = []` holds), `or` when one does (`or = []`
//!   never holds), `not` when none does (`not = []` holds), and `nor` when not all do, i.e. NAND
//!   (`nor = []` never holds). A block with several operators needs all of them. A block with
//!   no operator at all is a parse error rather than a silent allow-all or deny-all.
//! - An element of an operator list is a table with exactly one criterion, or a nested block
//!   (a table whose keys are all operators).
//! - `accept`, `reject`, `authenticated_user` and `cors_preflight` take `true`; `false` is an
//!   error (negate with `not`).
//! - Identity criteria (`authenticated_user`, `email`, `domain`, `user`, `groups`, `claim/*`)
//!   never match an anonymous request, whatever the matcher (also `not`/`exclude`).
//! - `email` and `domain` compare case-insensitively; `domain` never matches an email without
//!   exactly one `@`. `http_method`, `client_certificate.san_dns` and `san_email` compare
//!   ASCII-case-insensitively; everything else is case-sensitive.
//! - List subjects (`groups`, a list claim, certificate SANs) and string matchers: the positive
//!   matchers (`is`, `contains`, `starts_with`, `ends_with`, `in`) hold when one element satisfies
//!   all of them, the negative ones (`not`, `not_in`) when every element satisfies them. For
//!   claims, `is` is the list matcher: the claim's elements, as a set, equal the value (one
//!   string or a list). A string claim is a one-element list, so `has`/`is` mean equality.
//! - A missing claim (or a `null` or table claim) never matches. Claim names may nest with `/`
//!   (`claim/address/country`); a top-level key that itself contains `/` (such as
//!   `https://example.com/roles`) is found first. Numbers and booleans compare by their JSON text.
//! - `date` and `time_of_day` ranges are half-open: `after` is inclusive, `before` exclusive; a
//!   `time_of_day` whose `after` is later than its `before` crosses midnight.
//! - Time zones are IANA names, looked up when the policy is parsed (the only I/O here: jiff
//!   reads the system tz database, or the copy bundled into the binary where there is none).
//!   Evaluation does no I/O.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

mod criterion;
mod error;
mod identity;
mod matcher;
mod net;
mod parse;
mod render;
mod time;

pub use error::PolicyError;
pub use identity::{Claim, Identity};
pub use net::{Cidr, CidrError};

use criterion::Criterion;

/// A compiled policy: an ordered list of allow and deny rules.
///
/// Cheap to clone (the rules sit behind an [`Arc`]); `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Policy {
    inner: Arc<PolicyInner>,
}

#[derive(Debug)]
struct PolicyInner {
    rules: Box<[Rule]>,
    public: bool,
}

/// One `{ allow = BLOCK }` or `{ deny = BLOCK }`.
#[derive(Clone, Debug)]
struct Rule {
    action: Action,
    block: Block,
    /// The rule as written, in inline TOML, for explanations.
    rendering: Box<str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
}

/// A table of operators; every operator present must hold.
#[derive(Clone, Debug, Default)]
struct Block {
    and: Option<Box<[Node]>>,
    or: Option<Box<[Node]>>,
    not: Option<Box<[Node]>>,
    nor: Option<Box<[Node]>>,
}

/// An element of an operator list.
#[derive(Clone, Debug)]
enum Node {
    Criterion(Criterion),
    Block(Block),
}

/// Looks up a request header by name (given in lower case; implementations should compare
/// names case-insensitively).
pub trait HeaderLookup {
    /// The value of the first header called `name`, if any and if it is valid text.
    fn get(&self, name: &str) -> Option<&str>;
}

/// The downstream client certificate presented over mutual TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCertificate {
    /// SHA-256 of the DER certificate, lower-case hex.
    pub fingerprint_sha256: String,
    /// DNS names among the subject alternative names.
    pub san_dns: Vec<String>,
    /// Email addresses (rfc822Name) among the subject alternative names.
    pub san_email: Vec<String>,
    /// URIs among the subject alternative names.
    pub san_uri: Vec<String>,
}

/// Everything a policy may look at for one request. All of it is borrowed and passed in, the
/// time included, so that evaluation is pure.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The signed-in user, or `None` for an anonymous request.
    pub identity: Option<&'a Identity>,
    /// The HTTP method, e.g. `"GET"`.
    pub method: &'a str,
    /// The normalized path, without the query.
    pub path: &'a str,
    /// The peer address of the TCP connection.
    pub source_ip: Option<IpAddr>,
    /// Seconds since the Unix epoch.
    pub now_unix: i64,
    /// Request headers (only `cors_preflight` reads them).
    pub headers: &'a dyn HeaderLookup,
    /// The downstream client certificate, when mutual TLS is in use.
    pub client_certificate: Option<&'a ClientCertificate>,
}

/// The outcome of [`Policy::evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go through.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
}

/// Why a [`Decision`] came out the way it did. Rule numbers are indexes into the policy's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first allow rule that matched (and no deny rule matched).
    Allowed {
        /// Index of the rule.
        rule: usize,
    },
    /// The first deny rule that matched.
    Denied {
        /// Index of the rule.
        rule: usize,
    },
    /// No deny rule matched, but no allow rule did either.
    NoAllowMatched,
    /// The route is public: every request is allowed.
    Public,
}

// === impl Policy ===

impl Policy {
    /// Parses and compiles the policy found at key path `path` (e.g. `"routes[2].policy"`).
    ///
    /// `value` is one rule table or an array of rule tables (an empty array denies everything).
    /// Every error is collected, each naming its full key path.
    pub fn parse(value: &toml::Value, path: &str) -> Result<Policy, Vec<PolicyError>> {
        let rules = parse::policy(value, path)?;
        Ok(Policy::from_rules(rules, false))
    }

    /// A policy with no rules: it denies every request.
    pub fn deny_all() -> Policy {
        Policy::from_rules(Vec::new(), false)
    }

    /// A policy that allows every request, anonymous ones included
    /// (`allow_public_unauthenticated_access`).
    pub fn public() -> Policy {
        Policy::from_rules(Vec::new(), true)
    }

    /// Adds the rule `{ allow = { or = [ { authenticated_user = true } ] } }`
    /// (`allow_any_authenticated_user`). Deny rules still apply. A public policy stays public.
    pub fn allow_any_authenticated_user(self) -> Policy {
        if self.inner.public {
            return self;
        }
        let mut rules = self.inner.rules.to_vec();
        rules.push(Rule {
            action: Action::Allow,
            block: Block {
                or: Some(Box::new([Node::Criterion(Criterion::AuthenticatedUser)])),
                ..Block::default()
            },
            rendering:
                "allow = { or = [{ authenticated_user = true }] } (allow_any_authenticated_user)"
                    .into(),
        });
        Policy::from_rules(rules, false)
    }

    /// Whether this policy lets anonymous requests through unconditionally.
    pub fn is_public(&self) -> bool {
        self.inner.public
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.inner.rules.len()
    }

    /// Whether the policy has no rules (so it denies everything unless it is public).
    pub fn is_empty(&self) -> bool {
        self.inner.rules.is_empty()
    }

    /// Rule `index` as written, in inline TOML.
    pub fn rule_text(&self, index: usize) -> Option<&str> {
        self.inner.rules.get(index).map(|r| &*r.rendering)
    }

    /// Decides `request`: allowed when an allow rule matches and no deny rule does.
    ///
    /// Pure and allocation-free.
    pub fn evaluate(&self, request: &Request<'_>) -> Decision {
        if self.inner.public {
            return Decision {
                allowed: true,
                reason: Reason::Public,
            };
        }
        let mut allowed_by = None;
        for (index, rule) in self.inner.rules.iter().enumerate() {
            match rule.action {
                Action::Deny => {
                    if rule.block.matches(request) {
                        return Decision {
                            allowed: false,
                            reason: Reason::Denied { rule: index },
                        };
                    }
                }
                Action::Allow => {
                    if allowed_by.is_none() && rule.block.matches(request) {
                        allowed_by = Some(index);
                    }
                }
            }
        }
        match allowed_by {
            Some(rule) => Decision {
                allowed: true,
                reason: Reason::Allowed { rule },
            },
            None => Decision {
                allowed: false,
                reason: Reason::NoAllowMatched,
            },
        }
    }

    fn from_rules(rules: Vec<Rule>, public: bool) -> Policy {
        Policy {
            inner: Arc::new(PolicyInner {
                rules: rules.into_boxed_slice(),
                public,
            }),
        }
    }
}

// === impl Block ===

impl Block {
    fn matches(&self, request: &Request<'_>) -> bool {
        let all = |nodes: &[Node]| nodes.iter().all(|n| n.matches(request));
        let any = |nodes: &[Node]| nodes.iter().any(|n| n.matches(request));
        self.and.as_deref().is_none_or(all)
            && self.or.as_deref().is_none_or(any)
            && self.not.as_deref().is_none_or(|nodes| !any(nodes))
            && self.nor.as_deref().is_none_or(|nodes| !all(nodes))
    }
}

// === impl Node ===

impl Node {
    fn matches(&self, request: &Request<'_>) -> bool {
        match self {
            Node::Criterion(c) => c.matches(request),
            Node::Block(b) => b.matches(request),
        }
    }
}

// === impl Decision ===

impl Decision {
    /// A one-line human explanation naming the rule that decided, for logs and the deny page.
    pub fn explain(&self, policy: &Policy) -> String {
        let rule = |index: usize| {
            policy
                .rule_text(index)
                .map(render::truncate)
                .unwrap_or("(not a rule of this policy)")
        };
        match self.reason {
            Reason::Public => "allowed: the route is public".to_owned(),
            Reason::Allowed { rule: i } => format!("allowed by rule {i}: {}", rule(i)),
            Reason::Denied { rule: i } => format!("denied by rule {i}: {}", rule(i)),
            Reason::NoAllowMatched if policy.is_empty() => {
                "denied: the policy has no rules".to_owned()
            }
            Reason::NoAllowMatched => "denied: no allow rule matched".to_owned(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Allowed { rule } => write!(f, "allowed by rule {rule}"),
            Reason::Denied { rule } => write!(f, "denied by rule {rule}"),
            Reason::NoAllowMatched => f.write_str("no allow rule matched"),
            Reason::Public => f.write_str("public route"),
        }
    }
}

// === impl Request ===

impl<'a> Request<'a> {
    /// An anonymous request with no headers, no source address and no client certificate.
    pub fn new(method: &'a str, path: &'a str, now_unix: i64) -> Request<'a> {
        Request {
            identity: None,
            method,
            path,
            source_ip: None,
            now_unix,
            headers: &(),
            client_certificate: None,
        }
    }

    /// The same request made by `identity`.
    pub fn with_identity(self, identity: &'a Identity) -> Request<'a> {
        Request {
            identity: Some(identity),
            ..self
        }
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("identity", &self.identity.map(|i| i.user()))
            .field("method", &self.method)
            .field("path", &self.path)
            .field("source_ip", &self.source_ip)
            .field("now_unix", &self.now_unix)
            .field("client_certificate", &self.client_certificate.is_some())
            .finish_non_exhaustive()
    }
}

// === impl HeaderLookup ===

impl HeaderLookup for () {
    fn get(&self, _: &str) -> Option<&str> {
        None
    }
}

impl HeaderLookup for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

impl<const N: usize> HeaderLookup for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<&str> {
        HeaderLookup::get(&self[..], name)
    }
}

impl HeaderLookup for Vec<(&str, &str)> {
    fn get(&self, name: &str) -> Option<&str> {
        HeaderLookup::get(&self[..], name)
    }
}

impl HeaderLookup for &[(&str, &str)] {
    fn get(&self, name: &str) -> Option<&str> {
        HeaderLookup::get(*self, name)
    }
}

impl HeaderLookup for http::HeaderMap {
    fn get(&self, name: &str) -> Option<&str> {
        http::HeaderMap::get(self, name).and_then(|v| v.to_str().ok())
    }
}

#[cfg(test)]
mod tests;
