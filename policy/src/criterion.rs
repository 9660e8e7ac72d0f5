//! The criteria a block can test, and how each is evaluated against a [`Request`].

use serde_json::{Map, Value};

use crate::matcher::{ClaimMatcher, ListMatcher, StringMatcher};
use crate::net::Cidr;
use crate::time::{DateRange, DayOfWeek, TimeOfDay};
use crate::{Claim, ClientCertificate, Identity, Request};

/// Names of all criteria (`claim/<name>` aside), for errors and suggestions.
pub(crate) const NAMES: &[&str] = &[
    "accept",
    "reject",
    "authenticated_user",
    "email",
    "domain",
    "user",
    "groups",
    "claim",
    "http_method",
    "http_path",
    "source_ip",
    "cors_preflight",
    "date",
    "day_of_week",
    "time_of_day",
    "client_certificate",
];

/// One compiled criterion.
#[derive(Clone, Debug)]
pub(crate) enum Criterion {
    Accept,
    Reject,
    AuthenticatedUser,
    /// Against the lower-cased email.
    Email(StringMatcher),
    /// Against the lower-cased domain of an email with exactly one `@`.
    Domain(StringMatcher),
    User(StringMatcher),
    Groups(ListMatcher),
    Claim {
        /// The name after `claim/`, nested with `/`.
        name: Box<str>,
        matcher: ClaimMatcher,
    },
    HttpMethod(StringMatcher),
    HttpPath(StringMatcher),
    SourceIp(Box<[Cidr]>),
    CorsPreflight,
    Date(DateRange),
    DayOfWeek(DayOfWeek),
    TimeOfDay(TimeOfDay),
    ClientCertificate(CertificateMatcher),
}

/// `client_certificate`: every part given must hold.
#[derive(Clone, Debug, Default)]
pub(crate) struct CertificateMatcher {
    /// Lower-case hex SHA-256 fingerprints without colons; any may match.
    pub(crate) fingerprints: Option<Box<[Box<str>]>>,
    pub(crate) san_dns: Option<StringMatcher>,
    pub(crate) san_email: Option<StringMatcher>,
    pub(crate) san_uri: Option<StringMatcher>,
}

impl Criterion {
    pub(crate) fn matches(&self, request: &Request<'_>) -> bool {
        let identity = request.identity;
        match self {
            Criterion::Accept => true,
            Criterion::Reject => false,
            Criterion::AuthenticatedUser => identity.is_some(),
            Criterion::Email(m) => identity.is_some_and(|id| m.matches(id.email_lower())),
            Criterion::Domain(m) => identity
                .and_then(|id| id.domain_lower())
                .is_some_and(|d| m.matches(d)),
            Criterion::User(m) => identity.is_some_and(|id| m.matches(id.user())),
            Criterion::Groups(m) => identity.is_some_and(|id| m.matches(&id.groups())),
            Criterion::Claim { name, matcher } => identity
                .and_then(|id| lookup_top_claim(id, name))
                .is_some_and(|v| matcher.matches(v)),
            Criterion::HttpMethod(m) => m.matches(request.method),
            Criterion::HttpPath(m) => m.matches(request.path),
            Criterion::SourceIp(networks) => request
                .source_ip
                .is_some_and(|ip| networks.iter().any(|n| n.contains(ip))),
            Criterion::CorsPreflight => {
                request.method.eq_ignore_ascii_case("OPTIONS")
                    && request.headers.get("origin").is_some()
                    && request
                        .headers
                        .get("access-control-request-method")
                        .is_some()
            }
            Criterion::Date(range) => range.matches(request.now_unix),
            Criterion::DayOfWeek(days) => days.matches(request.now_unix),
            Criterion::TimeOfDay(range) => range.matches(request.now_unix),
            Criterion::ClientCertificate(m) => {
                request.client_certificate.is_some_and(|c| m.matches(c))
            }
        }
    }
}

impl CertificateMatcher {
    fn matches(&self, cert: &ClientCertificate) -> bool {
        self.fingerprints.as_deref().is_none_or(|fps| {
            fps.iter()
                .any(|fp| same_fingerprint(fp, &cert.fingerprint_sha256))
        }) && self
            .san_dns
            .as_ref()
            .is_none_or(|m| m.matches_list(&cert.san_dns))
            && self
                .san_email
                .as_ref()
                .is_none_or(|m| m.matches_list(&cert.san_email))
            && self
                .san_uri
                .as_ref()
                .is_none_or(|m| m.matches_list(&cert.san_uri))
    }
}

/// Compares a normalized fingerprint with one as given, ignoring case and colons.
fn same_fingerprint(normalized: &str, given: &str) -> bool {
    let given = given
        .bytes()
        .filter(|b| *b != b':')
        .map(|b| b.to_ascii_lowercase());
    normalized.bytes().eq(given)
}

/// Finds claim `name` among the identity's claims; see [`lookup_claim`].
fn lookup_top_claim<'c>(id: &'c Identity, name: &str) -> Option<Claim<'c>> {
    if let Some(v) = id.claim(name) {
        return Some(v);
    }
    name.rmatch_indices('/').find_map(|(i, _)| {
        let (head, tail) = (name.get(..i)?, name.get(i + 1..)?);
        match id.claim(head)? {
            Claim::Json(Value::Object(inner)) => lookup_claim(inner, tail).map(Claim::Json),
            _ => None,
        }
    })
}

/// Finds claim `name`: a top-level key first (claim names such as `https://x.example/roles`
/// contain `/`), else the longest top-level key before a `/` that holds a table, recursively.
pub(crate) fn lookup_claim<'c>(claims: &'c Map<String, Value>, name: &str) -> Option<&'c Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    name.rmatch_indices('/').find_map(|(i, _)| {
        let (head, tail) = (name.get(..i)?, name.get(i + 1..)?);
        match claims.get(head)? {
            Value::Object(inner) => lookup_claim(inner, tail),
            _ => None,
        }
    })
}
