//! Structured input: an arbitrary `toml::Value` tree whose keys and strings are mostly words
//! of the policy language (criteria, matchers, operators, plausible and broken values), so the
//! fuzzer reaches deep into the parser instead of failing at the TOML syntax. Nothing may
//! panic.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const KEYS: &[&str] = &[
    "allow",
    "deny",
    "and",
    "or",
    "not",
    "nor",
    "accept",
    "reject",
    "authenticated_user",
    "email",
    "domain",
    "user",
    "groups",
    "claim",
    "claim/",
    "claim/department",
    "claim/roles",
    "claim/org/team",
    "claims/x",
    "http_method",
    "http_path",
    "source_ip",
    "cors_preflight",
    "date",
    "day_of_week",
    "time_of_day",
    "client_certificate",
    "is",
    "not",
    "contains",
    "starts_with",
    "ends_with",
    "in",
    "not_in",
    "has",
    "exclude",
    "after",
    "before",
    "timezone",
    "days",
    "fingerprint",
    "san_dns",
    "san_email",
    "san_uri",
    "emial",
    "",
];

const STRINGS: &[&str] = &[
    "alice@example.com", "a@b@example.com", "example.com", "admins", "users", "GET", "DELETE",
    "/", "/a", "10.0.0.0/8", "::1", "fe80::/10", "127.0.0.1/33", "1.2.3.4/0", "::/129",
    "2025-01-31T09:00:00Z", "2025-01-31T09:00:00+14:00", "9999-12-31T23:59:59Z", "mon-fri",
    "sun-mon", "Mon,wed , sun", "mon-", "-", ",", "09:00", "00:00", "24:00", "23:59:59",
    "24:01", "25:61", "9:5", "Europe/Paris", "America/New_York", "Not/AZone", "UTC",
    "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99",
    "AA", "", "é", "\u{0}",
];

const DATETIMES: &[&str] = &[
    "1979-05-27T07:32:00Z",
    "1979-05-27T07:32:00-08:00",
    "1979-05-27T07:32:00",
    "1979-05-27",
    "07:32:00",
    "00:00:00",
    "23:59:59.999",
];

/// How deep a generated value may nest (the parser's own nesting is exercised by the text
/// target; here depth only has to reach every level of rule → block → criterion → matcher).
const MAX_DEPTH: u32 = 8;

struct Input(toml::Value);

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        value(u, 0).map(Input)
    }
}

fn key(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    Ok(if u.ratio(1, 8)? {
        String::arbitrary(u)?
    } else {
        (*u.choose(KEYS)?).to_owned()
    })
}

fn value(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<toml::Value> {
    let leaf = depth >= MAX_DEPTH || u.is_empty();
    let choice = if leaf {
        u.int_in_range(0..=5)?
    } else {
        u.int_in_range(0..=7)?
    };
    Ok(match choice {
        0 | 1 => toml::Value::String((*u.choose(STRINGS)?).to_owned()),
        2 => toml::Value::String(String::arbitrary(u)?),
        3 => toml::Value::Boolean(bool::arbitrary(u)?),
        4 => {
            if u.ratio(1, 2)? {
                toml::Value::Integer(i64::arbitrary(u)?)
            } else {
                toml::Value::Float(f64::arbitrary(u)?)
            }
        }
        5 => match u.choose(DATETIMES)?.parse::<toml::value::Datetime>() {
            Ok(d) => toml::Value::Datetime(d),
            Err(_) => toml::Value::Boolean(true),
        },
        6 => {
            let n = u.int_in_range(0..=4)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(value(u, depth + 1)?);
            }
            toml::Value::Array(items)
        }
        _ => {
            let n = u.int_in_range(0..=3)?;
            let mut table = toml::Table::new();
            for _ in 0..n {
                let k = key(u)?;
                table.insert(k, value(u, depth + 1)?);
            }
            toml::Value::Table(table)
        }
    })
}

fuzz_target!(|input: Input| {
    common::check(&input.0);
});
