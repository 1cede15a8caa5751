//! Configuration: built-in defaults → TOML file (`--config` / `TOKENGATE_CONFIG`)
//! → `TOKENGATE_*` environment, merged by figment into [`RawConfig`], then
//! [`RawConfig::validate`] turns it into typed [`Settings`]. The key names are a
//! contract with operators (`shared/design/CONFIG.md`); do not rename them.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use std::path::Path;

mod error;
mod issuers;
mod raw;
pub mod reload;
mod routes;
mod settings;
#[cfg(test)]
#[expect(clippy::result_large_err, reason = "figment::Jail's error type")]
mod tests;
mod tls;
mod validate;

pub use error::ConfigError;
pub use raw::*;
pub use settings::*;

pub use crate::cache::settings::{
    CacheSettings, RawCache, RawSharedCache, RedisUrl, SharedCacheSettings,
};
pub use crate::http::tls::ClientAuth;
pub use crate::introspection::client::{
    AuthMethod, IntrospectionSettings, ProbeMode, ResponseFormat,
};
pub use crate::introspection::jwt::{JwtSettings, RawJwt};
pub use crate::secret::Secret;
pub use crate::upstream::forward::{IdentitySettings, MethodOverride, Upstream};

/// Secret-bearing keys are read from the environment as raw strings, outside
/// figment's literal parsing, so that `000123` stays `000123` and not the integer 123.
const RAW_ENV_KEYS: &[(&str, &str)] = &[
    (
        "INTROSPECTION__CLIENT_SECRET",
        "introspection.client_secret",
    ),
    ("INTROSPECTION__CLIENT_ID", "introspection.client_id"),
];

/// Loads the configuration: defaults, then `file` (which must exist if given),
/// then `TOKENGATE_*` environment variables.
pub fn load(file: Option<&Path>) -> Result<RawConfig, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(RawConfig::default()));
    if let Some(path) = file {
        // `file_exact` alone would report a missing file as a generic I/O error
        // without the path; say plainly which file is missing.
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.to_owned()));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    let generic = Env::prefixed(ENV_PREFIX).split("__").filter(|k| {
        let k = k.as_str().to_ascii_uppercase();
        // TOKENGATE_CONFIG names the file; it is not a setting. Kubernetes
        // injects TOKENGATE_PORT* and TOKENGATE_SERVICE_* for a Service named
        // "tokengate" (service links); they are not settings either.
        k != "CONFIG"
            && !k.starts_with("PORT")
            && !k.starts_with("SERVICE_")
            && !RAW_ENV_KEYS.iter().any(|(raw, _)| *raw == k)
            && issuer_raw_env_key(&k).is_none()
    });
    fig = fig.merge(generic);
    for (suffix, key) in RAW_ENV_KEYS {
        if let Ok(v) = std::env::var(format!("{ENV_PREFIX}{suffix}")) {
            fig = fig.merge(Serialized::default(key, v));
        }
    }
    // The same for each issuer's client id and secret
    // (TOKENGATE_ISSUERS__<NAME>__INTROSPECTION__CLIENT_SECRET).
    for (var, value) in std::env::vars() {
        let Some(suffix) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if let Some(key) = issuer_raw_env_key(&suffix.to_ascii_uppercase()) {
            fig = fig.merge(Serialized::default(&key, value));
        }
    }
    let mut raw = fig
        .extract::<RawConfig>()
        .map_err(|e| ConfigError::Load(Box::new(e)))?;
    prefer_env_secret(&mut raw);
    prefer_env_issuer_secrets(&mut raw);
    // `[tracing]` falls back to the standard OpenTelemetry variables.
    raw.tracing.env = crate::ops::otel::OtelEnv::from_process();
    Ok(raw)
}

/// `ISSUERS__<NAME>__INTROSPECTION__CLIENT_SECRET` (or `__CLIENT_ID`), upper
/// case and without the prefix → its key `issuers.<name>.introspection.client_secret`.
fn issuer_raw_env_key(upper: &str) -> Option<String> {
    let rest = upper.strip_prefix("ISSUERS__")?;
    let (name, field) = rest.split_once("__INTROSPECTION__")?;
    let field = match field {
        "CLIENT_SECRET" => "client_secret",
        "CLIENT_ID" => "client_id",
        _ => return None,
    };
    // A name with `__` would be a deeper key, not an issuer: leave it to
    // figment, which reports it.
    (!name.is_empty() && !name.contains("__")).then(|| {
        format!(
            "issuers.{}.introspection.{field}",
            name.to_ascii_lowercase()
        )
    })
}

/// [`prefer_env_secret`] for each `[issuers.<name>]`: a secret given in the
/// environment replaces the other form from the file.
fn prefer_env_issuer_secrets(raw: &mut RawConfig) {
    let in_env =
        |var: &str| std::env::var_os(format!("{ENV_PREFIX}{var}")).is_some_and(|v| !v.is_empty());
    for (name, issuer) in raw.issuers.iter_mut() {
        let i = &mut issuer.introspection;
        if i.client_secret.is_empty() || i.client_secret_file.is_empty() {
            continue;
        }
        let var = format!(
            "ISSUERS__{}__INTROSPECTION__CLIENT_SECRET",
            name.to_ascii_uppercase()
        );
        match (in_env(&var), in_env(&format!("{var}_FILE"))) {
            (true, false) => {
                i.client_secret_file.clear();
                raw.notices.push(format!(
                    "issuers.{name}.introspection.client_secret: using {ENV_PREFIX}{var}; \
                     the config file's client_secret_file is ignored"
                ));
            }
            (false, true) => {
                i.client_secret = Secret::default();
                raw.notices.push(format!(
                    "issuers.{name}.introspection.client_secret: using the file named by \
                     {ENV_PREFIX}{var}_FILE; the config file's client_secret is ignored"
                ));
            }
            _ => {}
        }
    }
}

/// The client secret given in the environment replaces the other form from the
/// file: `TOKENGATE_INTROSPECTION__CLIENT_SECRET` wins over a `client_secret_file`
/// in the TOML, and `TOKENGATE_INTROSPECTION__CLIENT_SECRET_FILE` over a
/// `client_secret`, as the environment wins over the file for every other key
/// (so a baked config with a secret file can be overridden with `-e`). Both
/// forms in the same source stay an error (`validate`).
fn prefer_env_secret(raw: &mut RawConfig) {
    let i = &mut raw.introspection;
    if i.client_secret.is_empty() || i.client_secret_file.is_empty() {
        return;
    }
    let in_env = |suffix: &str| {
        std::env::var_os(format!("{ENV_PREFIX}{suffix}")).is_some_and(|v| !v.is_empty())
    };
    match (
        in_env("INTROSPECTION__CLIENT_SECRET"),
        in_env("INTROSPECTION__CLIENT_SECRET_FILE"),
    ) {
        (true, false) => {
            i.client_secret_file.clear();
            raw.notices.push(format!(
                "introspection.client_secret: using {ENV_PREFIX}INTROSPECTION__CLIENT_SECRET; \
                 the config file's client_secret_file is ignored"
            ));
        }
        (false, true) => {
            i.client_secret = Secret::default();
            raw.notices.push(format!(
                "introspection.client_secret: using the file named by \
                 {ENV_PREFIX}INTROSPECTION__CLIENT_SECRET_FILE; the config file's client_secret is ignored"
            ));
        }
        _ => {}
    }
}
