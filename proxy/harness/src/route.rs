//! Bodies of the `[[routes]]` tables most tests need, for [`crate::TestEnvBuilder::route`]:
//! `from` the route host, `to` the environment's upstream. Append further keys on new lines.

/// A route on `http://{host}.localhost` for any signed-in user.
pub fn any_user(host: &str) -> String {
    format!(
        "from = \"http://{host}.localhost\"\nto = \"{{upstream}}\"\nallow_any_authenticated_user = true"
    )
}

/// A route on `http://{host}.localhost` open to everyone, signed in or not.
pub fn public(host: &str) -> String {
    format!(
        "from = \"http://{host}.localhost\"\nto = \"{{upstream}}\"\nallow_public_unauthenticated_access = true"
    )
}

/// A whole `[[routes]]` table (header included, to append to a file) from `from` to `to`, with
/// identity headers and a policy of three criteria: users of example.com in `group`, never
/// `DELETE`. Memory measurements build thousands of them.
pub fn three_criteria_table(from: &str, to: &str, group: &str) -> String {
    format!(
        r#"
[[routes]]
from = "{from}"
to = "{to}"
pass_identity_headers = true
policy = [
  {{ allow = {{ and = [ {{ domain = {{ is = "example.com" }} }}, {{ groups = {{ has = "{group}" }} }} ] }} }},
  {{ deny = {{ or = [ {{ http_method = {{ is = "DELETE" }} }} ] }} }},
]
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_toml_tables() {
        for (body, key) in [
            (any_user("app"), "allow_any_authenticated_user"),
            (public("public"), "allow_public_unauthenticated_access"),
        ] {
            let table: toml::Table = toml::from_str(&body).unwrap();
            assert_eq!(table[key].as_bool(), Some(true));
            assert_eq!(table["to"].as_str(), Some("{upstream}"));
            assert!(table["from"].as_str().unwrap().ends_with(".localhost"));
        }
    }
}
