//! The configuration file as written: a serde schema that mirrors the TOML file.
//!
//! Every field is a [`Field`], which never fails to deserialize: a value of the wrong type is
//! kept as an error message, so that [`super::Config::try_from`] can report every bad key at
//! once (with its path) instead of stopping at the first. Keys this schema does not know land
//! in `unknown` and are reported with a "did you mean".

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

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

/// The top level of the file.
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
    pub databroker_service_url: Field<String>,
    pub grpc_address: Field<String>,
    pub databroker_cache_staleness: Field<String>,
    pub session_cache_max_mib: Field<u64>,
    pub log_level: Field<String>,
    pub log_format: Field<String>,
    pub show_error_details: Field<bool>,
    pub stream_recheck_interval: Field<String>,
    pub routes: Field<Vec<toml::Value>>,
    #[serde(flatten)]
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

impl Route {
    /// Deserializes one `[[routes]]` table, moving rather than copying what need not go
    /// through serde: `policy` and `health_check` (any TOML, checked later) are taken as they
    /// are and unknown keys are set aside, so only the typed keys are deserialized. (A
    /// `#[serde(flatten)]` map and `Field<toml::Value>` would copy every value two or three
    /// times, which dominated loading 10,000 routes.)
    pub fn from_table(mut table: toml::Table) -> Result<Route, toml::de::Error> {
        let policy = table.remove("policy");
        let health_check = table.remove("health_check");
        let unknown_keys: Vec<String> = table
            .keys()
            .filter(|k| !ROUTE_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        let mut unknown = BTreeMap::new();
        for key in unknown_keys {
            if let Some(value) = table.remove(&key) {
                unknown.insert(key, value);
            }
        }
        let mut route: Route = toml::Value::Table(table).try_into()?;
        route.policy = policy.map_or(Field::Missing, Field::Value);
        route.health_check = health_check.map_or(Field::Missing, Field::Value);
        route.unknown = unknown;
        Ok(route)
    }
}

/// The top-level keys, for "did you mean" and for environment overrides.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "services",
    "address",
    "insecure_server",
    "certificate_file",
    "certificate_key_file",
    "certificates",
    "authenticate_service_url",
    "shared_secret",
    "cookie_secret",
    "cookie_name",
    "cookie_expire",
    "cookie_domain",
    "cookie_secure",
    "cookie_http_only",
    "cookie_same_site",
    "signing_key",
    "idp_provider",
    "idp_provider_url",
    "idp_client_id",
    "idp_client_secret",
    "idp_scopes",
    "jwt_claims_headers",
    "jwt_assertion_header",
    "metrics_address",
    "databroker_storage_type",
    "databroker_storage_connection_string",
    "databroker_service_url",
    "grpc_address",
    "databroker_cache_staleness",
    "session_cache_max_mib",
    "log_level",
    "log_format",
    "show_error_details",
    "stream_recheck_interval",
    "routes",
];

/// The route keys, for "did you mean".
pub const ROUTE_KEYS: &[&str] = &[
    "from",
    "to",
    "prefix",
    "path",
    "regex",
    "prefix_rewrite",
    "regex_rewrite_pattern",
    "regex_rewrite_substitution",
    "preserve_host_header",
    "host_rewrite",
    "set_request_headers",
    "remove_request_headers",
    "set_response_headers",
    "timeout",
    "idle_timeout",
    "allow_websockets",
    "allow_public_unauthenticated_access",
    "allow_any_authenticated_user",
    "pass_identity_headers",
    "tls_skip_verify",
    "tls_custom_ca_file",
    "tls_server_name",
    "tls_client_cert_file",
    "tls_client_key_file",
    "health_check",
    "policy",
];

/// Keys whose environment value is always taken as a string, never parsed as TOML.
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
    "databroker_service_url",
    "grpc_address",
    "databroker_cache_staleness",
    "log_level",
    "log_format",
    "stream_recheck_interval",
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
