//! The configuration file as written: a serde schema that mirrors the TOML file.
//!
//! Every field is a [`Field`], which never fails to deserialize: a value of the wrong type is
//! kept as an error message, so that the conversion into a [`super::Config`] can report every
//! bad key at once (with its path) instead of stopping at the first. Keys this schema does not
//! know land in `unknown` and are reported with a "did you mean".
//!
//! The lists of accepted keys ([`top_level_keys`], [`route_keys`], [`health_check_keys`]) are
//! the field names serde sees in these structs, so a new field is a new key without more.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_aux::serde_introspection::serde_introspect;

/// A key of the file: absent, present with a usable value, or present but of the wrong shape.
#[derive(Debug, Clone, Default)]
pub enum Field<T> {
    #[default]
    Missing,
    Value(T),
    Invalid(String),
}

/// A string or a list of strings (`to`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A `[[certificates]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatePair {
    pub cert: String,
    pub key: String,
}

/// The top level of the file. No `#[serde(flatten)]` here or in [`Route`]: serde would then
/// not name the fields, and the key lists are read from those names.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct File {
    pub services: Field<String>,
    pub address: Field<String>,
    pub insecure_server: Field<bool>,
    pub certificate_file: Field<String>,
    pub certificate_key_file: Field<String>,
    pub certificates: Field<Vec<CertificatePair>>,
    pub authenticate_service_url: Field<String>,
    pub shared_secret: Field<String>,
    pub cookie_secret: Field<String>,
    pub cookie_name: Field<String>,
    pub cookie_expire: Field<String>,
    pub cookie_domain: Field<String>,
    pub cookie_secure: Field<bool>,
    pub cookie_http_only: Field<bool>,
    pub cookie_same_site: Field<String>,
    pub signing_key: Field<String>,
    pub idp_provider: Field<String>,
    pub idp_provider_url: Field<String>,
    pub idp_client_id: Field<String>,
    pub idp_client_secret: Field<String>,
    pub idp_scopes: Field<Vec<String>>,
    pub jwt_claims_headers: Field<BTreeMap<String, String>>,
    pub jwt_assertion_header: Field<String>,
    pub metrics_address: Field<String>,
    pub databroker_storage_type: Field<String>,
    pub databroker_storage_connection_string: Field<String>,
    pub databroker_storage_timeout: Field<String>,
    pub databroker_service_url: Field<String>,
    pub grpc_address: Field<String>,
    pub grpc_tls_certificate_file: Field<String>,
    pub grpc_tls_key_file: Field<String>,
    pub grpc_client_ca_file: Field<String>,
    pub databroker_tls_ca_file: Field<String>,
    pub databroker_tls_server_name: Field<String>,
    pub databroker_tls_client_cert_file: Field<String>,
    pub databroker_tls_client_key_file: Field<String>,
    pub databroker_cache_staleness: Field<String>,
    pub session_cache_max_mib: Field<u64>,
    pub log_level: Field<String>,
    pub log_format: Field<String>,
    pub show_error_details: Field<bool>,
    pub stream_recheck_interval: Field<String>,
    pub request_header_timeout: Field<String>,
    pub max_request_header_bytes: Field<u64>,
    pub max_request_headers: Field<u64>,
    pub timeout_idle: Field<String>,
    pub request_body_idle_timeout: Field<String>,
    pub use_proxy_protocol: Field<bool>,
    pub xff_num_trusted_hops: Field<u64>,
    pub trusted_proxies: Field<Vec<String>>,
    pub routes: Field<Vec<toml::Value>>,
    /// Keys that are not top-level keys (for "did you mean"); filled by [`File::from_table`].
    #[serde(skip)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// One `[[routes]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Route {
    pub from: Field<String>,
    pub to: Field<OneOrMany>,
    pub prefix: Field<String>,
    pub path: Field<String>,
    pub regex: Field<String>,
    pub prefix_rewrite: Field<String>,
    pub regex_rewrite_pattern: Field<String>,
    pub regex_rewrite_substitution: Field<String>,
    pub preserve_host_header: Field<bool>,
    pub host_rewrite: Field<String>,
    pub set_request_headers: Field<BTreeMap<String, String>>,
    pub remove_request_headers: Field<Vec<String>>,
    pub set_response_headers: Field<BTreeMap<String, String>>,
    pub timeout: Field<String>,
    pub idle_timeout: Field<String>,
    pub allow_websockets: Field<bool>,
    pub allow_public_unauthenticated_access: Field<bool>,
    pub allow_any_authenticated_user: Field<bool>,
    pub pass_identity_headers: Field<bool>,
    pub tls_skip_verify: Field<bool>,
    pub tls_custom_ca_file: Field<String>,
    pub tls_server_name: Field<String>,
    pub tls_client_cert_file: Field<String>,
    pub tls_client_key_file: Field<String>,
    pub health_check: Field<toml::Value>,
    pub policy: Field<toml::Value>,
    /// Keys that are not route keys (for "did you mean"); filled by [`Route::from_table`].
    #[serde(skip)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// A `health_check` table (`health_check = "/path"` is short for `{ path = "/path" }`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HealthCheck {
    pub path: Field<String>,
    pub interval: Field<String>,
    pub timeout: Field<String>,
    pub healthy_threshold: Field<i64>,
    pub unhealthy_threshold: Field<i64>,
}

// === impl File ===

impl File {
    /// Deserializes the top level of the file. The routes are moved out rather than
    /// deserialized with the rest (a copy of every route's values would cost more than all
    /// the rest of loading a large file), and unknown keys are set aside.
    pub fn from_table(mut table: toml::Table) -> Result<File, toml::de::Error> {
        let routes = table.remove("routes");
        let unknown = set_aside_unknown(&mut table, top_level_keys());
        let mut file: File = toml::Value::Table(table).try_into()?;
        file.routes = match routes {
            None => Field::Missing,
            Some(toml::Value::Array(items)) => Field::Value(items),
            Some(other) => Field::from_value(other),
        };
        file.unknown = unknown;
        Ok(file)
    }
}

// === impl Route ===

impl Route {
    /// Deserializes one `[[routes]]` table, moving rather than copying what need not go
    /// through serde: `policy` and `health_check` (any TOML, checked later) are taken as they
    /// are and unknown keys are set aside, so only the typed keys are deserialized.
    pub fn from_table(mut table: toml::Table) -> Result<Route, toml::de::Error> {
        let policy = table.remove("policy");
        let health_check = table.remove("health_check");
        let unknown = set_aside_unknown(&mut table, route_keys());
        let mut route: Route = toml::Value::Table(table).try_into()?;
        route.policy = policy.map_or(Field::Missing, Field::Value);
        route.health_check = health_check.map_or(Field::Missing, Field::Value);
        route.unknown = unknown;
        Ok(route)
    }
}

/// Moves the keys of `table` that are not in `known` into a map of their own.
fn set_aside_unknown(table: &mut toml::Table, known: &[&str]) -> BTreeMap<String, toml::Value> {
    let unknown_keys: Vec<String> = table
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .cloned()
        .collect();
    let mut unknown = BTreeMap::new();
    for key in unknown_keys {
        if let Some(value) = table.remove(&key) {
            unknown.insert(key, value);
        }
    }
    unknown
}

/// The top-level keys, for "did you mean" and for environment overrides.
pub fn top_level_keys() -> &'static [&'static str] {
    static KEYS: LazyLock<&[&str]> = LazyLock::new(serde_introspect::<File>);
    &KEYS
}

/// The route keys, for "did you mean".
pub fn route_keys() -> &'static [&'static str] {
    static KEYS: LazyLock<&[&str]> = LazyLock::new(serde_introspect::<Route>);
    &KEYS
}

/// The keys of a `health_check` table, for "did you mean".
pub fn health_check_keys() -> &'static [&'static str] {
    static KEYS: LazyLock<&[&str]> = LazyLock::new(serde_introspect::<HealthCheck>);
    &KEYS
}

/// Top-level keys whose environment value is always taken as a string, never parsed as TOML:
/// exactly the fields of [`File`] that hold a string (a unit test holds the two together).
pub const STRING_KEYS: &[&str] = &[
    "services",
    "address",
    "certificate_file",
    "certificate_key_file",
    "authenticate_service_url",
    "shared_secret",
    "cookie_secret",
    "cookie_name",
    "cookie_expire",
    "cookie_domain",
    "cookie_same_site",
    "signing_key",
    "idp_provider",
    "idp_provider_url",
    "idp_client_id",
    "idp_client_secret",
    "jwt_assertion_header",
    "metrics_address",
    "databroker_storage_type",
    "databroker_storage_connection_string",
    "databroker_storage_timeout",
    "databroker_service_url",
    "grpc_address",
    "grpc_tls_certificate_file",
    "grpc_tls_key_file",
    "grpc_client_ca_file",
    "databroker_tls_ca_file",
    "databroker_tls_server_name",
    "databroker_tls_client_cert_file",
    "databroker_tls_client_key_file",
    "databroker_cache_staleness",
    "log_level",
    "log_format",
    "stream_recheck_interval",
    "request_header_timeout",
    "timeout_idle",
    "request_body_idle_timeout",
];

// === impl Field ===

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        Ok(Field::from_value(value))
    }
}

impl<T: DeserializeOwned> Field<T> {
    /// The field for a key whose value is `value`.
    pub fn from_value(value: toml::Value) -> Field<T> {
        match T::deserialize(value) {
            Ok(v) => Field::Value(v),
            Err(e) => Field::Invalid(e.to_string()),
        }
    }
}

impl<T> Field<T> {
    pub fn is_present(&self) -> bool {
        !matches!(self, Field::Missing)
    }

    /// Moves the field out, leaving it missing: the build functions take their keys out of
    /// the file one section at a time.
    pub fn take(&mut self) -> Field<T> {
        std::mem::take(self)
    }
}

/// The closest known key to `unknown`, when one is close enough to suggest.
pub fn did_you_mean<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lists_are_the_fields_serde_sees() {
        let top = top_level_keys();
        assert_eq!(top.first(), Some(&"services"));
        assert_eq!(top.last(), Some(&"routes"));
        let route = route_keys();
        assert_eq!(route.first(), Some(&"from"));
        assert_eq!(route.last(), Some(&"policy"));
        assert_eq!(
            health_check_keys(),
            [
                "path",
                "interval",
                "timeout",
                "healthy_threshold",
                "unhealthy_threshold"
            ]
        );
        // `unknown` is where unknown keys go, not a key.
        assert!(!top.contains(&"unknown") && !route.contains(&"unknown"));
    }

    /// Every top-level field that takes a string must be in `STRING_KEYS`, or an environment
    /// value such as `PORTCULLIS_LOG_LEVEL=123` would be parsed as a number and refused; and
    /// no other field may be there, or `PORTCULLIS_COOKIE_SECURE=false` would stay a string.
    #[test]
    fn string_keys_are_the_fields_that_take_a_string() {
        for key in top_level_keys() {
            let mut table = toml::Table::new();
            table.insert(key.to_string(), toml::Value::String("text".into()));
            let file = File::from_table(table).expect("fields never fail");
            let takes_string = !format!("{file:?}").contains("Invalid(");
            assert_eq!(
                takes_string,
                STRING_KEYS.contains(key),
                "{key}: takes a string is {takes_string}, but in STRING_KEYS is {}",
                !takes_string
            );
        }
        for key in STRING_KEYS {
            assert!(
                top_level_keys().contains(key),
                "{key} is not a top-level key"
            );
        }
    }
}
