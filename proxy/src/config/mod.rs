//! Configuration: the file's schema ([`schema`]) and the validated runtime form ([`Config`]).
//!
//! [`Config::load`] reads the TOML file, applies `PORTCULLIS_<KEY>` environment overrides,
//! and converts the schema into a [`Config`], collecting every error with its key path
//! (`routes[2].policy.allow.or[0]: unknown criterion "emial"`), never only the first.
//!
//! The conversion is split by job: `errors` collects problems, `env` applies the overrides,
//! `build` converts the top-level sections, `route` one `[[routes]]` table, `tls` loads PEM
//! material, and `values` parses single values (addresses, URLs, durations, …).

mod build;
mod env;
mod errors;
mod route;
mod runtime;
pub mod schema;
mod tls;
mod values;

use std::path::Path;

pub use errors::{ConfigError, ConfigErrors};
pub use runtime::{
    Config, CookieSettings, DatabrokerSettings, Forwarding, FromMatcher, HeaderTemplate,
    HealthCheck, HostPattern, IdpSettings, LogFormat, PathMatcher, RequestHeadLimits, Route,
    RouteOptions, SameSite, ServiceUrl, Services, StorageType, TemplatePart, Upstream, UpstreamTls,
};

use build::build;
use env::apply_env;
use errors::Errors;

// === impl Config ===

impl Config {
    /// Reads, overrides from the environment, and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: path.display().to_string(),
                message: format!("cannot read the configuration file: {e}"),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, std::env::vars(), base)
    }

    /// Parses TOML text with the given environment (`PORTCULLIS_*` variables win over the file).
    /// Relative file paths in the configuration are resolved against `base`.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        base: &Path,
    ) -> Result<Config, ConfigErrors> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError {
                path: "config".into(),
                message: format!("invalid TOML: {}", e.message()),
            }])
        })?;
        let mut errors = Errors::default();
        apply_env(&mut table, env, &mut errors);
        let file = match schema::File::from_table(table) {
            Ok(f) => f,
            Err(e) => {
                errors.push("config", e.to_string());
                return Err(errors.into_result());
            }
        };
        let config = build(file, base, &mut errors);
        if errors.0.is_empty() {
            config.ok_or_else(|| errors.into_result())
        } else {
            Err(errors.into_result())
        }
    }

    /// A one-line summary for `portcullis check`.
    pub fn summary(&self) -> String {
        format!(
            "configuration OK: services={}, {} route(s), listening on {} ({}), authenticate at {}",
            match self.services {
                Services::All => "all",
                Services::Proxy => "proxy",
                Services::Databroker => "databroker",
            },
            self.routes.len(),
            self.address,
            if self.insecure_server {
                "http"
            } else {
                "https"
            },
            self.authenticate.url,
        )
    }

    /// Whether `host` (lowercase, no port) is a host some route serves: where sign-in may return.
    pub fn is_route_host(&self, host: &str) -> bool {
        self.routes.iter().any(|r| match &r.from.host {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        })
    }
}

#[cfg(test)]
mod link_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod upstream_tests;
