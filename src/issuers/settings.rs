//! `[issuers.<name>]`: the configuration of one more authorization server,
//! as written ([`RawIssuer`]) and validated ([`IssuerSettings`]). Each table
//! reuses the single-AS sections' types, so `[issuers.<name>.introspection]`
//! and `[issuers.<name>.discovery]` take exactly the keys of `[introspection]`
//! and `[discovery]`. Validation: `crate::config` (`config/issuers.rs`).

use crate::config::{DiscoverySettings, RawDiscovery, RawIntrospection};
use crate::introspection::client::IntrospectionSettings;
use serde::{Deserialize, Serialize};

/// The name of the issuer that `[introspection]` / `[discovery]` configure:
/// routes without `issuer` (and requests that match no route) use it.
pub const DEFAULT_ISSUER: &str = "default";

/// One `[issuers.<name>]` table, as the file and environment spell it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIssuer {
    /// The `iss` this AS puts in its tokens and introspection answers
    /// (exact string). An answer naming another issuer is refused.
    pub issuer: String,
    /// Same keys as `[introspection]`.
    pub introspection: RawIntrospection,
    /// Same keys as `[discovery]`: set `issuer` here instead of
    /// `introspection.url` to find the endpoint from the AS metadata.
    pub discovery: RawDiscovery,
    // The JWT branch adds `pub jwt: RawJwt` here (`[issuers.<name>.jwt]`,
    // the `[jwt]` keys) when it is merged.
}

/// One named issuer, validated.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// The `[issuers.<name>]` key: lower-case letters, digits and `_`.
    pub name: String,
    /// The expected `iss` (exact).
    pub iss: String,
    /// Its own client, credentials, timeout and TLS (client certificate).
    pub introspection: IntrospectionSettings,
    /// `Some` when its endpoint comes from discovery.
    pub discovery: Option<DiscoverySettings>,
}

/// Whether `name` may name an issuer: what the environment can spell
/// (`TOKENGATE_ISSUERS__<NAME>__...`: figment lower-cases the variable and
/// splits it at `__`) and what a metric label and a log field show plainly.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.contains("__")
        && !name.starts_with('_')
        && !name.ends_with('_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["partners", "as2", "eu_west"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Partners", "a-b", "a__b", "_a", "a_", "a.b", "a b", "ä"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
