//! Compiles TOML into rules, collecting every error with its key path.

use jiff::tz::TimeZone;
use toml::Value;

use crate::criterion::{self, CertificateMatcher, Criterion};
use crate::error::{suggest, ErrorKind, PolicyError};
use crate::matcher::{
    sorted_set, Case, ClaimMatcher, ListMatcher, ListOp, StringMatcher, StringOp,
};
use crate::net::Cidr;
use crate::time::{self, DateRange, DayOfWeek, TimeOfDay};
use crate::{render, Action, Block, Node, Rule};

const OPERATORS: &[&str] = &["and", "or", "not", "nor"];
const STRING_MATCHERS: &[&str] = &[
    "is",
    "not",
    "contains",
    "starts_with",
    "ends_with",
    "in",
    "not_in",
];
const LIST_MATCHERS: &[&str] = &["has", "is", "exclude"];
const CLAIM_MATCHERS: &[&str] = &[
    "has",
    "is",
    "exclude",
    "not",
    "contains",
    "starts_with",
    "ends_with",
    "in",
    "not_in",
];

/// How needles of a string matcher are normalized, and so how it compares.
#[derive(Clone, Copy)]
enum Norm {
    /// As written, compared byte for byte.
    Exact,
    /// Lower-cased (Unicode); the subject is lower-cased ahead (emails, domains).
    Lowercase,
    /// ASCII lower-cased; compared ASCII-case-insensitively.
    AsciiFold,
}

impl Norm {
    fn apply(self, s: &str) -> Box<str> {
        match self {
            Norm::Exact => s.into(),
            Norm::Lowercase => s.to_lowercase().into(),
            Norm::AsciiFold => s.to_ascii_lowercase().into(),
        }
    }

    fn case(self) -> Case {
        match self {
            Norm::Exact | Norm::Lowercase => Case::Sensitive,
            Norm::AsciiFold => Case::AsciiInsensitive,
        }
    }
}

/// Compiles the policy at `path`: one rule table or an array of them.
pub(crate) fn policy(value: &Value, path: &str) -> Result<Vec<Rule>, Vec<PolicyError>> {
    let mut c = Compiler::default();
    let rules = match value {
        Value::Table(_) => c.rule(value, path).into_iter().collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| c.rule(item, &index(path, i)))
            .collect(),
        other => {
            c.wrong_type(path, "a rule table or an array of rule tables", other);
            Vec::new()
        }
    };
    if c.errors.is_empty() {
        Ok(rules)
    } else {
        Err(c.errors)
    }
}

fn child(path: &str, key: &str) -> String {
    let key = if render::is_bare_key(key) {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

#[derive(Default)]
struct Compiler {
    errors: Vec<PolicyError>,
}

impl Compiler {
    fn report(&mut self, path: &str, kind: ErrorKind) {
        self.errors.push(PolicyError {
            path: path.to_owned(),
            message: kind.to_string(),
        });
    }

    fn wrong_type(&mut self, path: &str, expected: &'static str, found: &Value) {
        self.report(
            path,
            ErrorKind::WrongType {
                expected,
                found: found.type_str(),
            },
        );
    }

    fn invalid(&mut self, path: &str, message: impl Into<String>) {
        self.report(path, ErrorKind::Invalid(message.into()));
    }

    fn unknown(&mut self, path: &str, what: &'static str, name: &str, candidates: &[&str]) {
        let suggestion = suggest(name, candidates.iter().copied()).map(str::to_owned);
        self.report(
            path,
            ErrorKind::Unknown {
                what,
                name: name.to_owned(),
                suggestion,
            },
        );
    }

    fn misplaced(&mut self, path: &str, name: &str, hint: impl Into<String>) {
        self.report(
            path,
            ErrorKind::Misplaced {
                name: name.to_owned(),
                hint: hint.into(),
            },
        );
    }

    // --- structure ---

    fn rule(&mut self, value: &Value, path: &str) -> Option<Rule> {
        let Value::Table(table) = value else {
            self.wrong_type(
                path,
                "a rule table ({ allow = ... } or { deny = ... })",
                value,
            );
            return None;
        };
        let mut ok = true;
        let mut found: Option<(Action, &str, &Value, Option<Block>)> = None;
        for (key, v) in table {
            let action = match key.as_str() {
                "allow" => Action::Allow,
                "deny" => Action::Deny,
                op if OPERATORS.contains(&op) => {
                    self.misplaced(
                        path,
                        op,
                        format!("operators go inside allow or deny, e.g. {{ allow = {{ {op} = [...] }} }}"),
                    );
                    ok = false;
                    continue;
                }
                other => {
                    self.unknown(path, "key", other, &["allow", "deny"]);
                    ok = false;
                    continue;
                }
            };
            let block = self.block(v, &child(path, key));
            if found.is_some() {
                self.invalid(
                    path,
                    "a rule has either allow or deny, not both (write two rules)",
                );
                ok = false;
            } else {
                found = Some((action, key, v, block));
            }
        }
        let Some((action, key, block_value, block)) = found else {
            if ok {
                self.invalid(path, "a rule needs allow or deny");
            }
            return None;
        };
        let block = block?;
        ok.then(|| Rule {
            action,
            block,
            rendering: render::key_value(key, block_value).into(),
        })
    }

    fn block(&mut self, value: &Value, path: &str) -> Option<Block> {
        let Value::Table(table) = value else {
            self.wrong_type(path, "a table of operators (and, or, not, nor)", value);
            return None;
        };
        if table.is_empty() {
            self.invalid(
                path,
                "empty block: expected at least one of and, or, not, nor",
            );
            return None;
        }
        let mut block = Block::default();
        let mut ok = true;
        for (key, v) in table {
            let slot = match key.as_str() {
                "and" => &mut block.and,
                "or" => &mut block.or,
                "not" => &mut block.not,
                "nor" => &mut block.nor,
                other => {
                    if is_criterion_name(other) {
                        self.misplaced(
                            path,
                            other,
                            format!(
                                "criteria go inside an operator list, e.g. {{ and = [{{ {} = ... }}] }}",
                                child("", other)
                            ),
                        );
                    } else {
                        self.unknown(path, "operator", other, OPERATORS);
                    }
                    ok = false;
                    continue;
                }
            };
            match self.list(v, &child(path, key)) {
                Some(nodes) => *slot = Some(nodes),
                None => ok = false,
            }
        }
        ok.then_some(block)
    }

    fn list(&mut self, value: &Value, path: &str) -> Option<Box<[Node]>> {
        let Value::Array(items) = value else {
            self.wrong_type(path, "an array of criteria", value);
            return None;
        };
        let mut ok = true;
        let mut nodes = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match self.node(item, &index(path, i)) {
                Some(node) => nodes.push(node),
                None => ok = false,
            }
        }
        ok.then(|| nodes.into())
    }

    fn node(&mut self, value: &Value, path: &str) -> Option<Node> {
        let Value::Table(table) = value else {
            self.wrong_type(
                path,
                "a criterion table like { email = { is = \"...\" } }",
                value,
            );
            return None;
        };
        if table.is_empty() {
            self.invalid(path, "empty table: expected one criterion or an operator");
            return None;
        }
        if table.keys().all(|k| OPERATORS.contains(&k.as_str())) {
            return self.block(value, path).map(Node::Block);
        }
        let mut entries = table.iter();
        match (entries.next(), entries.next()) {
            (Some((name, v)), None) => self.criterion(name, v, path).map(Node::Criterion),
            _ => {
                let keys: Vec<String> = table.keys().map(|k| format!("{k:?}")).collect();
                self.invalid(
                    path,
                    format!(
                        "a criterion table has exactly one key, found {}: {} (give each criterion its own table)",
                        keys.len(),
                        keys.join(", ")
                    ),
                );
                None
            }
        }
    }

    // --- criteria ---

    fn criterion(&mut self, name: &str, value: &Value, path: &str) -> Option<Criterion> {
        let vpath = child(path, name);
        let p = vpath.as_str();
        match name {
            "accept" => self.flag(value, p).then_some(Criterion::Accept),
            "reject" => self.flag(value, p).then_some(Criterion::Reject),
            "authenticated_user" => self.flag(value, p).then_some(Criterion::AuthenticatedUser),
            "cors_preflight" => self.flag(value, p).then_some(Criterion::CorsPreflight),
            "email" => self
                .string_matcher(value, p, Norm::Lowercase)
                .map(Criterion::Email),
            "domain" => self
                .string_matcher(value, p, Norm::Lowercase)
                .map(Criterion::Domain),
            "user" => self
                .string_matcher(value, p, Norm::Exact)
                .map(Criterion::User),
            "http_method" => self
                .string_matcher(value, p, Norm::AsciiFold)
                .map(Criterion::HttpMethod),
            "http_path" => self
                .string_matcher(value, p, Norm::Exact)
                .map(Criterion::HttpPath),
            "groups" => self.list_matcher(value, p).map(Criterion::Groups),
            "source_ip" => self.source_ip(value, p).map(Criterion::SourceIp),
            "date" => self.date(value, p).map(Criterion::Date),
            "day_of_week" => self.day_of_week(value, p).map(Criterion::DayOfWeek),
            "time_of_day" => self.time_of_day(value, p).map(Criterion::TimeOfDay),
            "client_certificate" => self
                .client_certificate(value, p)
                .map(Criterion::ClientCertificate),
            "claim" | "claim/" => {
                self.invalid(path, "claim needs a name, e.g. \"claim/department\"");
                None
            }
            _ => match name.strip_prefix("claim/") {
                Some(claim) => self
                    .claim_matcher(value, p)
                    .map(|matcher| Criterion::Claim {
                        name: claim.into(),
                        matcher,
                    }),
                None => {
                    self.unknown_criterion(name, path);
                    None
                }
            },
        }
    }

    fn unknown_criterion(&mut self, name: &str, path: &str) {
        // `claims/x` or `Claim/x` most likely meant `claim/x`.
        if let Some((head, tail)) = name.split_once('/') {
            if suggest(head, ["claim"]).is_some() {
                let fixed = format!("claim/{tail}");
                self.report(
                    path,
                    ErrorKind::Unknown {
                        what: "criterion",
                        name: name.to_owned(),
                        suggestion: Some(fixed),
                    },
                );
                return;
            }
        }
        let candidates: Vec<&str> = criterion::NAMES.iter().chain(OPERATORS).copied().collect();
        self.unknown(path, "criterion", name, &candidates);
    }

    /// `accept = true` and the like.
    fn flag(&mut self, value: &Value, path: &str) -> bool {
        match value {
            Value::Boolean(true) => true,
            Value::Boolean(false) => {
                self.invalid(path, "must be true (to negate it, put it in a `not` list)");
                false
            }
            other => {
                self.wrong_type(path, "true", other);
                false
            }
        }
    }

    // --- matchers ---

    fn string<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v str> {
        match value {
            Value::String(s) => Some(s),
            other => {
                self.wrong_type(path, "a string", other);
                None
            }
        }
    }

    fn strings<'v>(&mut self, value: &'v Value, path: &str) -> Option<Vec<&'v str>> {
        let Value::Array(items) = value else {
            self.wrong_type(path, "an array of strings", value);
            return None;
        };
        let mut ok = true;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match self.string(item, &index(path, i)) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn string_matcher(&mut self, value: &Value, path: &str, norm: Norm) -> Option<StringMatcher> {
        let case = norm.case();
        let table = match value {
            Value::String(s) => {
                return Some(StringMatcher::new(vec![StringOp::Is(norm.apply(s))], case))
            }
            Value::Table(table) => table,
            other => {
                self.wrong_type(path, "a string or a table of string matchers", other);
                return None;
            }
        };
        if table.is_empty() {
            self.invalid(
                path,
                "no matcher: expected one or more of is, not, contains, starts_with, ends_with, in, not_in",
            );
            return None;
        }
        let mut ok = true;
        let mut ops = Vec::with_capacity(table.len());
        for (key, v) in table {
            let p = child(path, key);
            let op = match self.string_op(key, v, &p, norm) {
                Some(Some(op)) => op,
                Some(None) => {
                    ok = false;
                    continue;
                }
                None => {
                    if LIST_MATCHERS.contains(&key.as_str()) {
                        self.misplaced(
                            path,
                            key,
                            "it is a list matcher; this criterion takes string matchers: is, not, contains, starts_with, ends_with, in, not_in",
                        );
                    } else {
                        self.unknown(path, "matcher", key, STRING_MATCHERS);
                    }
                    ok = false;
                    continue;
                }
            };
            ops.push(op);
        }
        ok.then(|| StringMatcher::new(ops, case))
    }

    /// A string matcher `key = value`: `None` when `key` is not a string matcher,
    /// `Some(None)` when its value is bad (reported).
    fn string_op(
        &mut self,
        key: &str,
        value: &Value,
        path: &str,
        norm: Norm,
    ) -> Option<Option<StringOp>> {
        let single = |c: &mut Self, f: fn(Box<str>) -> StringOp| {
            c.string(value, path).map(|s| f(norm.apply(s)))
        };
        let set = |c: &mut Self, f: fn(Box<[Box<str>]>) -> StringOp| {
            c.strings(value, path).map(|items| {
                f(sorted_set(
                    items.into_iter().map(|s| norm.apply(s)).collect(),
                    norm.case(),
                ))
            })
        };
        Some(match key {
            "is" => single(self, StringOp::Is),
            "not" => single(self, StringOp::Not),
            "contains" => single(self, StringOp::Contains),
            "starts_with" => single(self, StringOp::StartsWith),
            "ends_with" => single(self, StringOp::EndsWith),
            "in" => set(self, StringOp::In),
            "not_in" => set(self, StringOp::NotIn),
            _ => return None,
        })
    }

    fn list_matcher(&mut self, value: &Value, path: &str) -> Option<ListMatcher> {
        let table = match value {
            Value::String(s) => return Some(ListMatcher::new(vec![ListOp::Has((**s).into())])),
            Value::Table(table) => table,
            other => {
                self.wrong_type(path, "a string or a table of list matchers", other);
                return None;
            }
        };
        if table.is_empty() {
            self.invalid(path, "no matcher: expected one or more of has, is, exclude");
            return None;
        }
        let mut ok = true;
        let mut ops = Vec::with_capacity(table.len());
        for (key, v) in table {
            match self.list_op(key, v, &child(path, key), Self::owned_string) {
                Some(Some(op)) => ops.push(op),
                Some(None) => ok = false,
                None => {
                    if STRING_MATCHERS.contains(&key.as_str()) {
                        self.misplaced(
                            path,
                            key,
                            "it is a string matcher; groups takes list matchers: has, is, exclude",
                        );
                    } else {
                        self.unknown(path, "matcher", key, LIST_MATCHERS);
                    }
                    ok = false;
                }
            }
        }
        ok.then(|| ListMatcher::new(ops))
    }

    /// A list matcher `key = value`, reading strings with `scalar`.
    fn list_op(
        &mut self,
        key: &str,
        value: &Value,
        path: &str,
        scalar: fn(&mut Self, &Value, &str) -> Option<Box<str>>,
    ) -> Option<Option<ListOp>> {
        Some(match key {
            "has" => scalar(self, value, path).map(ListOp::Has),
            "exclude" => scalar(self, value, path).map(ListOp::Exclude),
            "is" => match value {
                Value::Array(items) => {
                    let mut ok = true;
                    let mut set = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        match scalar(self, item, &index(path, i)) {
                            Some(s) => set.push(s),
                            None => ok = false,
                        }
                    }
                    ok.then(|| ListOp::Is(sorted_set(set, Case::Sensitive)))
                }
                other => scalar(self, other, path).map(|s| ListOp::Is(Box::new([s]))),
            },
            _ => return None,
        })
    }

    fn claim_matcher(&mut self, value: &Value, path: &str) -> Option<ClaimMatcher> {
        let table = match value {
            Value::Table(table) => table,
            other => {
                let s = self.claim_scalar(other, path)?;
                return Some(ClaimMatcher {
                    list: ListMatcher::new(vec![ListOp::Has(s)]),
                    string: StringMatcher::empty(),
                });
            }
        };
        if table.is_empty() {
            self.invalid(path, "no matcher: expected one or more of has, is, exclude, not, contains, starts_with, ends_with, in, not_in");
            return None;
        }
        let mut ok = true;
        let mut list_ops = Vec::new();
        let mut string_ops = Vec::new();
        for (key, v) in table {
            let p = child(path, key);
            if let Some(op) = self.list_op(key, v, &p, Self::claim_scalar) {
                match op {
                    Some(op) => list_ops.push(op),
                    None => ok = false,
                }
                continue;
            }
            let op = match key.as_str() {
                "not" | "contains" | "starts_with" | "ends_with" => {
                    self.claim_scalar(v, &p).map(|s| match key.as_str() {
                        "not" => StringOp::Not(s),
                        "contains" => StringOp::Contains(s),
                        "starts_with" => StringOp::StartsWith(s),
                        _ => StringOp::EndsWith(s),
                    })
                }
                "in" | "not_in" => self.claim_scalars(v, &p).map(|items| {
                    let set = sorted_set(items, Case::Sensitive);
                    if key == "in" {
                        StringOp::In(set)
                    } else {
                        StringOp::NotIn(set)
                    }
                }),
                other => {
                    self.unknown(path, "matcher", other, CLAIM_MATCHERS);
                    None
                }
            };
            match op {
                Some(op) => string_ops.push(op),
                None => ok = false,
            }
        }
        ok.then(|| ClaimMatcher {
            list: ListMatcher::new(list_ops),
            string: StringMatcher::new(string_ops, Case::Sensitive),
        })
    }

    /// A claim value to compare with: a string, or a number or boolean by its text.
    fn claim_scalar(&mut self, value: &Value, path: &str) -> Option<Box<str>> {
        match value {
            Value::String(s) => Some((**s).into()),
            Value::Integer(i) => Some(i.to_string().into()),
            Value::Float(f) => Some(
                serde_json::Number::from_f64(*f)
                    .map_or_else(|| f.to_string(), |n| n.to_string())
                    .into(),
            ),
            Value::Boolean(b) => Some(b.to_string().into()),
            other => {
                self.wrong_type(path, "a string, number or boolean", other);
                None
            }
        }
    }

    fn owned_string(&mut self, value: &Value, path: &str) -> Option<Box<str>> {
        self.string(value, path).map(Into::into)
    }

    fn claim_scalars(&mut self, value: &Value, path: &str) -> Option<Vec<Box<str>>> {
        let Value::Array(items) = value else {
            self.wrong_type(path, "an array", value);
            return None;
        };
        let mut ok = true;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match self.claim_scalar(item, &index(path, i)) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    // --- network ---

    fn source_ip(&mut self, value: &Value, path: &str) -> Option<Box<[Cidr]>> {
        let items: Vec<(String, &Value)> = match value {
            Value::String(_) => vec![(path.to_owned(), value)],
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (index(path, i), v))
                .collect(),
            other => {
                self.wrong_type(path, "an IP address or CIDR, or an array of them", other);
                return None;
            }
        };
        let mut ok = true;
        let mut networks = Vec::with_capacity(items.len());
        for (p, item) in items {
            let Some(text) = self.string(item, &p) else {
                ok = false;
                continue;
            };
            match Cidr::parse(text) {
                Ok(network) => networks.push(network),
                Err(e) => {
                    self.invalid(&p, format!("bad IP address or CIDR {text:?}: {e}"));
                    ok = false;
                }
            }
        }
        ok.then(|| networks.into())
    }

    fn client_certificate(&mut self, value: &Value, path: &str) -> Option<CertificateMatcher> {
        const KEYS: &[&str] = &["fingerprint", "san_dns", "san_email", "san_uri"];
        let Value::Table(table) = value else {
            self.wrong_type(
                path,
                "a table of fingerprint, san_dns, san_email, san_uri",
                value,
            );
            return None;
        };
        if table.is_empty() {
            self.invalid(
                path,
                "expected one or more of fingerprint, san_dns, san_email, san_uri",
            );
            return None;
        }
        let mut ok = true;
        let mut m = CertificateMatcher::default();
        for (key, v) in table {
            let p = child(path, key);
            match key.as_str() {
                "fingerprint" => match self.fingerprints(v, &p) {
                    Some(fps) => m.fingerprints = Some(fps),
                    None => ok = false,
                },
                "san_dns" | "san_email" | "san_uri" => {
                    let norm = if key == "san_uri" {
                        Norm::Exact
                    } else {
                        Norm::AsciiFold
                    };
                    let slot = match key.as_str() {
                        "san_dns" => &mut m.san_dns,
                        "san_email" => &mut m.san_email,
                        _ => &mut m.san_uri,
                    };
                    match self.string_matcher(v, &p, norm) {
                        Some(matcher) => *slot = Some(matcher),
                        None => ok = false,
                    }
                }
                other => {
                    self.unknown(path, "key", other, KEYS);
                    ok = false;
                }
            }
        }
        ok.then_some(m)
    }

    fn fingerprints(&mut self, value: &Value, path: &str) -> Option<Box<[Box<str>]>> {
        let items: Vec<(String, &Value)> = match value {
            Value::String(_) => vec![(path.to_owned(), value)],
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (index(path, i), v))
                .collect(),
            other => {
                self.wrong_type(path, "a SHA-256 fingerprint or an array of them", other);
                return None;
            }
        };
        let mut ok = true;
        let mut out = Vec::with_capacity(items.len());
        for (p, item) in items {
            let Some(text) = self.string(item, &p) else {
                ok = false;
                continue;
            };
            let hex: String = text
                .chars()
                .filter(|c| *c != ':')
                .collect::<String>()
                .to_ascii_lowercase();
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push(hex.into());
            } else {
                self.invalid(
                    &p,
                    format!(
                        "bad SHA-256 fingerprint {text:?}: expected 64 hex digits (colons allowed)"
                    ),
                );
                ok = false;
            }
        }
        ok.then(|| out.into())
    }

    // --- time ---

    fn date(&mut self, value: &Value, path: &str) -> Option<DateRange> {
        let Value::Table(table) = value else {
            self.wrong_type(path, "a table with after and/or before", value);
            return None;
        };
        let mut ok = true;
        let mut range = DateRange {
            after: None,
            before: None,
        };
        for (key, v) in table {
            let p = child(path, key);
            let slot = match key.as_str() {
                "after" => &mut range.after,
                "before" => &mut range.before,
                other => {
                    self.unknown(path, "key", other, &["after", "before"]);
                    ok = false;
                    continue;
                }
            };
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Datetime(d)
                    if d.date.is_some() && d.time.is_some() && d.offset.is_some() =>
                {
                    d.to_string()
                }
                Value::Datetime(d) => {
                    self.invalid(
                        &p,
                        format!(
                            "bad timestamp {d}: needs a date, a time and a UTC offset (RFC 3339)"
                        ),
                    );
                    ok = false;
                    continue;
                }
                other => {
                    self.wrong_type(&p, "an RFC 3339 timestamp", other);
                    ok = false;
                    continue;
                }
            };
            match time::parse_instant(&text) {
                Some(t) => *slot = Some(t),
                None => {
                    self.invalid(&p, format!("bad timestamp {text:?}: expected RFC 3339, e.g. \"2025-01-31T09:00:00Z\""));
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        match (range.after, range.before) {
            (None, None) => {
                self.invalid(path, "expected after and/or before");
                None
            }
            (Some(a), Some(b)) if a >= b => {
                self.invalid(path, "after must be earlier than before");
                None
            }
            _ => Some(range),
        }
    }

    fn day_of_week(&mut self, value: &Value, path: &str) -> Option<DayOfWeek> {
        let (days_value, zone_value, days_path) = match value {
            Value::Table(table) => {
                let mut ok = true;
                for key in table.keys() {
                    if key != "days" && key != "timezone" {
                        self.unknown(path, "key", key, &["days", "timezone"]);
                        ok = false;
                    }
                }
                let Some(days) = table.get("days") else {
                    self.invalid(path, "expected days, e.g. days = \"mon-fri\"");
                    return None;
                };
                if !ok {
                    return None;
                }
                (days, table.get("timezone"), child(path, "days"))
            }
            other => (other, None, path.to_owned()),
        };
        let zone = match zone_value {
            Some(z) => Some(self.timezone(z, &child(path, "timezone"))?),
            None => None,
        };
        let days = self.days(days_value, &days_path)?;
        Some(DayOfWeek { days, zone })
    }

    fn days(&mut self, value: &Value, path: &str) -> Option<u8> {
        let items: Vec<(String, &Value)> = match value {
            Value::String(_) => vec![(path.to_owned(), value)],
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (index(path, i), v))
                .collect(),
            other => {
                self.wrong_type(
                    path,
                    "a day (\"mon\"), a range (\"mon-fri\") or an array of them",
                    other,
                );
                return None;
            }
        };
        let mut ok = true;
        let mut days = 0;
        for (p, item) in items {
            let Some(text) = self.string(item, &p) else {
                ok = false;
                continue;
            };
            match time::parse_days(text) {
                Ok(d) => days |= d,
                Err(e) => {
                    self.invalid(&p, e);
                    ok = false;
                }
            }
        }
        if ok && days == 0 {
            self.invalid(path, "no days given");
            return None;
        }
        ok.then_some(days)
    }

    fn time_of_day(&mut self, value: &Value, path: &str) -> Option<TimeOfDay> {
        let Value::Table(table) = value else {
            self.wrong_type(
                path,
                "a table with after and/or before (\"HH:MM\") and an optional timezone",
                value,
            );
            return None;
        };
        let mut ok = true;
        let mut range = TimeOfDay {
            after: None,
            before: None,
            zone: None,
        };
        for (key, v) in table {
            let p = child(path, key);
            match key.as_str() {
                "after" | "before" => {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Datetime(d)
                            if d.date.is_none() && d.offset.is_none() && d.time.is_some() =>
                        {
                            d.to_string()
                        }
                        other => {
                            self.wrong_type(&p, "a time of day \"HH:MM\" or \"HH:MM:SS\"", other);
                            ok = false;
                            continue;
                        }
                    };
                    let before = key == "before";
                    match time::parse_time_of_day(&text, before) {
                        Some(t) if before => range.before = Some(t),
                        Some(t) => range.after = Some(t),
                        None => {
                            self.invalid(&p, format!("bad time {text:?}: expected \"HH:MM\" or \"HH:MM:SS\" (24-hour)"));
                            ok = false;
                        }
                    }
                }
                "timezone" => match self.timezone(v, &p) {
                    Some(zone) => range.zone = Some(zone),
                    None => ok = false,
                },
                other => {
                    self.unknown(path, "key", other, &["after", "before", "timezone"]);
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        match (range.after, range.before) {
            (None, None) => {
                self.invalid(path, "expected after and/or before");
                None
            }
            (Some(a), Some(b)) if a == b => {
                self.invalid(path, "after and before are equal: the range would be empty");
                None
            }
            _ => Some(range),
        }
    }

    fn timezone(&mut self, value: &Value, path: &str) -> Option<TimeZone> {
        let name = self.string(value, path)?;
        match jiff::tz::db().get(name) {
            Ok(zone) => Some(zone),
            Err(_) => {
                let names: Vec<String> = jiff::tz::db()
                    .available()
                    .map(|n| n.as_str().to_owned())
                    .collect();
                let suggestion = suggest(name, names.iter().map(String::as_str)).map(str::to_owned);
                self.report(
                    path,
                    ErrorKind::Unknown {
                        what: "time zone",
                        name: name.to_owned(),
                        suggestion,
                    },
                );
                None
            }
        }
    }
}

fn is_criterion_name(name: &str) -> bool {
    criterion::NAMES.contains(&name) || name.starts_with("claim/")
}
