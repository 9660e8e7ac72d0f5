//! Renders rules back to one-line TOML for explanations.

use std::fmt::Write as _;

use toml::Value;

/// Longest rendering of a rule kept in an explanation.
const MAX_RULE_CHARS: usize = 240;

/// `key = value` as inline TOML: `allow = { or = [{ email = { is = "a@b" } }] }`.
pub(crate) fn key_value(key: &str, value: &Value) -> String {
    let mut out = String::new();
    write_key(&mut out, key);
    out.push_str(" = ");
    write_value(&mut out, value);
    out
}

/// Shortens a rendering for an explanation.
pub(crate) fn truncate(text: &str) -> &str {
    match text.char_indices().nth(MAX_RULE_CHARS) {
        Some((end, _)) => text.get(..end).unwrap_or(text),
        None => text,
    }
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::String(s) => write_string(out, s),
        Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => {
            let _ = write!(out, "{f}");
        }
        Value::Boolean(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Datetime(d) => {
            let _ = write!(out, "{d}");
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Table(table) if table.is_empty() => out.push_str("{}"),
        Value::Table(table) => {
            out.push_str("{ ");
            for (i, (k, v)) in table.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_key(out, k);
                out.push_str(" = ");
                write_value(out, v);
            }
            out.push_str(" }");
        }
    }
}

fn write_key(out: &mut String, key: &str) {
    if is_bare_key(key) {
        out.push_str(key);
    } else {
        write_string(out, key);
    }
}

/// Whether `key` can be written without quotes in TOML.
pub(crate) fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
