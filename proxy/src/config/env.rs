//! `PORTCULLIS_<KEY>` environment overrides, applied to the parsed file before conversion.

use super::errors::Errors;
use super::schema::{top_level_keys, STRING_KEYS};

pub(super) fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    errors: &mut Errors,
) {
    for (name, value) in env {
        let Some(key) = name.strip_prefix("PORTCULLIS_") else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        if !top_level_keys().contains(&key.as_str()) {
            // Not ours to judge: other PORTCULLIS_* variables (the harness, the shell) may exist.
            continue;
        }
        let parsed = if STRING_KEYS.contains(&key.as_str()) {
            toml::Value::String(value)
        } else {
            match format!("v = {value}").parse::<toml::Table>() {
                Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(value)),
                Err(_) if matches!(key.as_str(), "routes" | "certificates") => {
                    errors.push(
                        format!("{name} (environment)"),
                        "must be a TOML array of tables",
                    );
                    continue;
                }
                Err(_) => toml::Value::String(value),
            }
        };
        table.insert(key, parsed);
    }
}
