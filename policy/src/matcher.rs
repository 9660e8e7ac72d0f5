//! String and list matchers, compiled for allocation-free comparison.

use std::cmp::Ordering;
use std::fmt::Write as _;

use std::sync::Arc;

use serde_json::Value;

use crate::Claim;

/// How a string matcher compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Case {
    /// Byte for byte. Also used for subjects lower-cased ahead (emails, domains), whose needles
    /// are lower-cased at compile time.
    Sensitive,
    /// ASCII case-insensitive, on the fly (methods, DNS names).
    AsciiInsensitive,
}

/// One string comparison. `In`/`NotIn` lists are sorted and deduplicated for binary search.
#[derive(Clone, Debug)]
pub(crate) enum StringOp {
    Is(Box<str>),
    Not(Box<str>),
    Contains(Box<str>),
    StartsWith(Box<str>),
    EndsWith(Box<str>),
    In(Box<[Box<str>]>),
    NotIn(Box<[Box<str>]>),
}

/// A conjunction of string comparisons.
///
/// Positive ops (`is`, `contains`, `starts_with`, `ends_with`, `in`) and negative ops (`not`,
/// `not_in`) are kept apart: against a list subject, the positive ones must all hold for one
/// element and the negative ones for every element.
#[derive(Clone, Debug)]
pub(crate) struct StringMatcher {
    positive: Box<[StringOp]>,
    negative: Box<[StringOp]>,
    case: Case,
}

/// One list comparison. The `Is` set is sorted and deduplicated.
#[derive(Clone, Debug)]
pub(crate) enum ListOp {
    Has(Box<str>),
    Is(Box<[Box<str>]>),
    Exclude(Box<str>),
}

/// A conjunction of list comparisons.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListMatcher {
    ops: Box<[ListOp]>,
}

/// Matchers for `claim/*`: list matchers and string matchers on the claim seen as a list.
#[derive(Clone, Debug)]
pub(crate) struct ClaimMatcher {
    pub(crate) list: ListMatcher,
    pub(crate) string: StringMatcher,
}

/// A list of strings that matchers can walk without allocating.
pub(crate) trait StrList {
    /// Whether `f` holds for some element.
    fn any_str(&self, f: &mut dyn FnMut(&str) -> bool) -> bool;

    /// Whether `f` holds for every element.
    fn all_str(&self, f: &mut dyn FnMut(&str) -> bool) -> bool {
        !self.any_str(&mut |s| !f(s))
    }
}

/// A claim seen as a list: an array's scalar elements, or a scalar as one element.
pub(crate) struct ClaimList<'a>(pub(crate) Claim<'a>);

// === impl StringOp ===

impl StringOp {
    fn is_positive(&self) -> bool {
        !matches!(self, StringOp::Not(_) | StringOp::NotIn(_))
    }

    fn matches(&self, s: &str, case: Case) -> bool {
        match self {
            StringOp::Is(v) => eq(s, v, case),
            StringOp::Not(v) => !eq(s, v, case),
            StringOp::Contains(v) => contains(s, v, case),
            StringOp::StartsWith(v) => {
                s.len() >= v.len()
                    && s.as_bytes()
                        .get(..v.len())
                        .is_some_and(|p| bytes_eq(p, v.as_bytes(), case))
            }
            StringOp::EndsWith(v) => {
                s.len() >= v.len()
                    && s.as_bytes()
                        .get(s.len() - v.len()..)
                        .is_some_and(|p| bytes_eq(p, v.as_bytes(), case))
            }
            StringOp::In(list) => in_sorted(list, s, case),
            StringOp::NotIn(list) => !in_sorted(list, s, case),
        }
    }
}

// === impl StringMatcher ===

impl StringMatcher {
    /// Builds a matcher; needles must already be normalized for `case`.
    pub(crate) fn new(ops: Vec<StringOp>, case: Case) -> StringMatcher {
        let (positive, negative): (Vec<_>, Vec<_>) =
            ops.into_iter().partition(StringOp::is_positive);
        StringMatcher {
            positive: positive.into(),
            negative: negative.into(),
            case,
        }
    }

    /// A matcher with no comparisons: it matches everything.
    pub(crate) fn empty() -> StringMatcher {
        StringMatcher::new(Vec::new(), Case::Sensitive)
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        let case = self.case;
        self.positive.iter().all(|op| op.matches(s, case))
            && self.negative.iter().all(|op| op.matches(s, case))
    }

    /// Against a list: one element satisfies every positive op, and every element satisfies
    /// every negative op. For a one-element list this is [`StringMatcher::matches`].
    pub(crate) fn matches_list(&self, list: &dyn StrList) -> bool {
        let case = self.case;
        (self.positive.is_empty()
            || list.any_str(&mut |s| self.positive.iter().all(|op| op.matches(s, case))))
            && (self.negative.is_empty()
                || list.all_str(&mut |s| self.negative.iter().all(|op| op.matches(s, case))))
    }
}

// === impl ListMatcher ===

impl ListMatcher {
    pub(crate) fn new(ops: Vec<ListOp>) -> ListMatcher {
        ListMatcher { ops: ops.into() }
    }

    pub(crate) fn matches(&self, list: &dyn StrList) -> bool {
        self.ops.iter().all(|op| match op {
            ListOp::Has(v) => list.any_str(&mut |s| s == &**v),
            ListOp::Exclude(v) => !list.any_str(&mut |s| s == &**v),
            ListOp::Is(set) => {
                list.all_str(&mut |s| in_sorted(set, s, Case::Sensitive))
                    && set.iter().all(|v| list.any_str(&mut |s| s == &**v))
            }
        })
    }
}

// === impl ClaimMatcher ===

impl ClaimMatcher {
    pub(crate) fn matches(&self, claim: Claim<'_>) -> bool {
        if matches!(claim, Claim::Json(Value::Null | Value::Object(_))) {
            return false;
        }
        let list = ClaimList(claim);
        self.list.matches(&list) && self.string.matches_list(&list)
    }
}

// === impl StrList ===

impl StrList for Vec<String> {
    fn any_str(&self, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.iter().any(|s| f(s))
    }
}

impl StrList for &[Arc<str>] {
    fn any_str(&self, f: &mut dyn FnMut(&str) -> bool) -> bool {
        self.iter().any(|s| f(s))
    }
}

impl StrList for ClaimList<'_> {
    fn any_str(&self, f: &mut dyn FnMut(&str) -> bool) -> bool {
        match self.0 {
            Claim::Json(Value::Array(items)) => items
                .iter()
                .any(|v| with_scalar_str(v, &mut *f).unwrap_or(false)),
            Claim::Json(scalar) => with_scalar_str(scalar, f).unwrap_or(false),
            Claim::Str(s) => f(s),
            Claim::List(items) => items.iter().any(|s| f(s)),
        }
    }
}

/// Calls `f` with the text of a JSON scalar (numbers formatted on the stack); `None` for
/// `null`, arrays and tables.
fn with_scalar_str(value: &Value, f: &mut dyn FnMut(&str) -> bool) -> Option<bool> {
    match value {
        Value::String(s) => Some(f(s)),
        Value::Bool(true) => Some(f("true")),
        Value::Bool(false) => Some(f("false")),
        Value::Number(n) => {
            let mut buf = StackStr::default();
            write!(buf, "{n}").ok()?;
            Some(f(buf.as_str()?))
        }
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// A small fixed buffer to format numbers into without allocating.
struct StackStr {
    buf: [u8; 64],
    len: usize,
}

impl Default for StackStr {
    fn default() -> Self {
        StackStr {
            buf: [0; 64],
            len: 0,
        }
    }
}

impl StackStr {
    fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.buf.get(..self.len)?).ok()
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

// === comparisons ===

fn bytes_eq(a: &[u8], b: &[u8], case: Case) -> bool {
    match case {
        Case::Sensitive => a == b,
        Case::AsciiInsensitive => a.eq_ignore_ascii_case(b),
    }
}

fn eq(a: &str, b: &str, case: Case) -> bool {
    bytes_eq(a.as_bytes(), b.as_bytes(), case)
}

fn contains(haystack: &str, needle: &str, case: Case) -> bool {
    match case {
        Case::Sensitive => haystack.contains(needle),
        Case::AsciiInsensitive => {
            needle.is_empty()
                || haystack
                    .as_bytes()
                    .windows(needle.len())
                    .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
        }
    }
}

/// Orders strings as the matcher compares them.
pub(crate) fn compare(a: &str, b: &str, case: Case) -> Ordering {
    match case {
        Case::Sensitive => a.cmp(b),
        Case::AsciiInsensitive => a
            .bytes()
            .map(|c| c.to_ascii_lowercase())
            .cmp(b.bytes().map(|c| c.to_ascii_lowercase())),
    }
}

fn in_sorted(list: &[Box<str>], s: &str, case: Case) -> bool {
    list.binary_search_by(|probe| compare(probe, s, case))
        .is_ok()
}

/// Sorts and deduplicates a list for [`StringOp::In`], [`StringOp::NotIn`] and [`ListOp::Is`].
pub(crate) fn sorted_set(mut items: Vec<Box<str>>, case: Case) -> Box<[Box<str>]> {
    items.sort_by(|a, b| compare(a, b, case));
    items.dedup_by(|a, b| compare(a, b, case) == Ordering::Equal);
    items.into()
}
