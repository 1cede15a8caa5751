//! `[issuers.<name>]`: the configuration of one more authorization server,
//! as written ([`RawIssuer`]) and validated ([`IssuerSettings`]). Each table
//! reuses the single-AS sections' types, so `[issuers.<name>.introspection]`
//! and `[issuers.<name>.discovery]` take exactly the keys of `[introspection]`
//! and `[discovery]`. Validation of the tables and of the routes' `issuer`:
//! every problem reported, each with its full key
//! (`issuers.partners.introspection.url`). The running issuers:
//! `crate::app::issuers`. The types live with the others of their kind
//! (`raw.rs`, `settings.rs`), so that no file of `config/` imports this one.

use super::error::*;
use super::raw::*;
use super::settings::*;
use super::validate::read_secret_file;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::time::Duration;

impl RawConfig {
    /// `[issuers.<name>]`, validated (in name order), and every route's
    /// `issuer` checked against them. `None` when an error was recorded.
    /// `ca_roots` is `None` when `[upstream_tls] ca_file` failed (already
    /// reported): the issuers' TLS is then not built.
    pub(super) fn issuer_settings(
        &self,
        errors: &mut Errors,
        ca_roots: Option<&[CertificateDer<'static>]>,
    ) -> Option<Vec<IssuerSettings>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (name, raw) in &self.issuers {
            match validate_issuer(name, raw, ca_roots) {
                Ok(Some(s)) => out.push(s),
                Ok(None) => ok = false,
                Err(errs) => {
                    ok = false;
                    for e in errs {
                        errors.push(e);
                    }
                }
            }
        }
        // Two issuers with one `iss`: a JWT could not pick its issuer, and an
        // answer's `iss` would not say which AS vouched for it.
        // The default issuer's `iss` is `discovery.issuer`, or `[jwt] issuer`.
        let default_iss = [&self.discovery.issuer, &self.jwt.issuer];
        for (n, (name, raw)) in self.issuers.iter().enumerate() {
            if raw.issuer.is_empty() {
                continue;
            }
            if let Some((other, _)) = self
                .issuers
                .iter()
                .take(n)
                .find(|(_, r)| r.issuer == raw.issuer)
            {
                ok = false;
                errors.push(ConfigError::invalid_at(
                    format!("issuers.{name}.issuer"),
                    format!(
                        "{:?} is also the issuer of issuers.{other}: each authorization server once",
                        raw.issuer
                    ),
                ));
            }
            if default_iss.contains(&&raw.issuer) {
                ok = false;
                errors.push(ConfigError::invalid_at(
                    format!("issuers.{name}.issuer"),
                    format!(
                        "{:?} is the default issuer's (discovery.issuer or jwt.issuer): routes use it without `issuer`",
                        raw.issuer
                    ),
                ));
            }
        }
        let mut known: Vec<&str> = vec![DEFAULT_ISSUER];
        known.extend(
            self.issuers
                .keys()
                .map(String::as_str)
                .filter(|k| *k != DEFAULT_ISSUER),
        );
        for (n, r) in self.routes.iter().enumerate() {
            if r.issuer.is_empty() && r.issuers.is_empty() {
                continue;
            }
            let key = if r.issuers.is_empty() {
                "routes.issuer"
            } else {
                "routes.issuers"
            };
            if r.public {
                ok = false;
                errors.push(ConfigError::invalid(
                    key,
                    format!(
                        "routes[{n}] is public but names an issuer; a public route checks no token"
                    ),
                ));
                continue;
            }
            if !r.issuer.is_empty() && !r.issuers.is_empty() {
                ok = false;
                errors.push(ConfigError::invalid(
                    "routes.issuers",
                    format!("routes[{n}]: set either issuer or issuers, not both (issuer = \"x\" is issuers = [\"x\"])"),
                ));
                continue;
            }
            let names = if r.issuers.is_empty() {
                std::slice::from_ref(&r.issuer)
            } else {
                r.issuers.as_slice()
            };
            for (m, name) in names.iter().enumerate() {
                if name != DEFAULT_ISSUER && !self.issuers.contains_key(name) {
                    ok = false;
                    errors.push(ConfigError::invalid(
                        key,
                        format!(
                            "routes[{n}]: no issuer named {name:?} (known: {})",
                            known.join(", ")
                        ),
                    ));
                } else if names[..m].contains(name) {
                    ok = false;
                    errors.push(ConfigError::invalid(
                        key,
                        format!("routes[{n}]: issuer {name:?} is named twice"),
                    ));
                }
            }
        }
        ok.then_some(out)
    }
}

/// One issuer: `Err` with every problem found, `Ok(None)` when its TLS could
/// not be built because of an error reported elsewhere.
fn validate_issuer(
    name: &str,
    raw: &RawIssuer,
    ca_roots: Option<&[CertificateDer<'static>]>,
) -> Result<Option<IssuerSettings>, Vec<ConfigError>> {
    let mut errs = Vec::new();
    let key = |k: &str| {
        if k.is_empty() {
            format!("issuers.{name}")
        } else {
            format!("issuers.{name}.{k}")
        }
    };
    let mut err = |k: &str, m: String| errs.push(ConfigError::invalid_at(key(k), m));
    if name == DEFAULT_ISSUER {
        err(
            "",
            "the name \"default\" is the [introspection] / [discovery] issuer's; choose another"
                .into(),
        );
    } else if !valid_name(name) {
        err(
            "",
            format!(
                "{name:?} is not a valid issuer name: lower-case letters, digits and single '_' \
                 (it is spelt in TOKENGATE_ISSUERS__<NAME>__... and in metric labels)"
            ),
        );
    }
    if raw.issuer.is_empty() {
        err(
            "issuer",
            "is required: the `iss` of this authorization server's tokens".into(),
        );
    }
    let i = &raw.introspection;
    let d = &raw.discovery;
    let discovery = if d.issuer.is_empty() {
        None
    } else if url::Url::parse(&d.issuer)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.query().is_none())
    {
        Some(DiscoverySettings {
            issuer: d.issuer.clone(),
            refresh_interval: d.refresh_interval.max(Duration::from_secs(1)),
        })
    } else {
        err(
            "discovery.issuer",
            format!("{:?} is not an http(s) URL without a query", d.issuer),
        );
        None
    };
    let mut url = None;
    match (i.url.is_empty(), d.issuer.is_empty()) {
        (true, true) => err(
            "introspection.url",
            format!(
                "is required (or issuers.{name}.discovery.issuer): this issuer's RFC 7662 endpoint"
            ),
        ),
        (false, false) => err(
            "discovery.issuer",
            "set either introspection.url or discovery.issuer, not both".into(),
        ),
        (false, true) => match oauth2::IntrospectionUrl::new(i.url.clone()) {
            Ok(u) if matches!(u.url().scheme(), "http" | "https") => url = Some(u),
            Ok(_) => err("introspection.url", "must be http:// or https://".into()),
            Err(e) => err("introspection.url", format!("{:?}: {e}", i.url)),
        },
        (true, false) => {}
    }
    if i.client_id.is_empty() {
        err("introspection.client_id", "is required".into());
    }
    if i.timeout.is_zero() {
        err("introspection.timeout", "must be greater than 0".into());
    }
    // `[issuers.<name>.jwt]`: the keys of `[jwt]`, for this issuer. Its
    // `issuer` is this table's `issuer` (a different one would make a JWT's
    // `iss` pick one issuer and verify against another's name); its JWKS is
    // `jwt.jwks_url`, else the `jwks_uri` of this issuer's metadata.
    let signed_answers = i.response_format == crate::introspection::client::ResponseFormat::Jwt;
    if !raw.jwt.issuer.is_empty() && raw.jwt.issuer != raw.issuer {
        err(
            "jwt.issuer",
            format!(
                "{:?} differs from issuers.{name}.issuer ({:?}): leave it empty (it defaults to that)",
                raw.jwt.issuer, raw.issuer
            ),
        );
    }
    let jwt = match raw.jwt.settings(&raw.issuer, signed_answers) {
        Ok(jwt) => jwt.map(|mut j| {
            if let (crate::introspection::jwks::JwksSource::Issuer(_), Some(d)) =
                (&j.jwks, &discovery)
            {
                j.jwks = crate::introspection::jwks::JwksSource::Issuer(d.issuer.clone());
            }
            j
        }),
        Err(problems) => {
            for (k, m) in problems {
                err(k, m);
            }
            None
        }
    };
    let client_secret = match (i.client_secret.is_empty(), i.client_secret_file.is_empty()) {
        (false, false) => {
            err(
                "introspection.client_secret_file",
                "set either client_secret or client_secret_file, not both".into(),
            );
            None
        }
        (true, true) => {
            err(
                "introspection.client_secret",
                format!(
                    "is required (or client_secret_file; from the environment: \
                     TOKENGATE_ISSUERS__{}__INTROSPECTION__CLIENT_SECRET)",
                    name.to_ascii_uppercase()
                ),
            );
            None
        }
        (false, true) => Some(i.client_secret.clone()),
        (true, false) => {
            match read_secret_file("introspection.client_secret_file", &i.client_secret_file) {
                Ok(s) => Some(s),
                Err(e) => {
                    // Re-keyed: the shared reader names the single-AS key.
                    let why = match e {
                        ConfigError::Invalid { message, .. } => message,
                        other => other.to_string(),
                    };
                    err("introspection.client_secret_file", why);
                    None
                }
            }
        }
    };
    let client_auth = match (i.client_cert_file.is_empty(), i.client_key_file.is_empty()) {
        (true, true) => None,
        (false, true) | (true, false) => {
            err(
                "introspection.client_key_file",
                "set both client_cert_file and client_key_file, or neither".into(),
            );
            None
        }
        (false, false) => {
            use crate::http::tls;
            let certs = tls::load_certs(Path::new(&i.client_cert_file))
                .map_err(|e| err("introspection.client_cert_file", e.to_string()))
                .ok();
            let key_ = tls::load_key(Path::new(&i.client_key_file))
                .map_err(|e| err("introspection.client_key_file", e.to_string()))
                .ok();
            certs.zip(key_)
        }
    };
    let mut tls = None;
    if let Some(roots) = ca_roots {
        match crate::http::tls::ClientTls::new(roots, client_auth) {
            Ok(t) => tls = Some(t),
            Err(e) => err("introspection.client_key_file", e.to_string()),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let (Some(client_secret), Some(tls)) = (client_secret, tls) else {
        return Ok(None);
    };
    Ok(Some(IssuerSettings {
        name: name.to_owned(),
        iss: raw.issuer.clone(),
        introspection: i.settings(url, client_secret, tls),
        discovery,
        jwt,
    }))
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names() {
        for ok in ["partners", "as2", "eu_west"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Partners", "a-b", "a__b", "_a", "a_", "a.b", "a b", "ä"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn issuer_secrets_in_the_environment_are_read_as_text() {
        let key = super::super::issuer_raw_env_key;
        assert_eq!(
            key("ISSUERS__PARTNERS__INTROSPECTION__CLIENT_SECRET").as_deref(),
            Some("issuers.partners.introspection.client_secret")
        );
        assert_eq!(
            key("ISSUERS__EU_WEST__INTROSPECTION__CLIENT_ID").as_deref(),
            Some("issuers.eu_west.introspection.client_id")
        );
        for other in [
            "ISSUERS__PARTNERS__INTROSPECTION__URL",
            "ISSUERS__PARTNERS__INTROSPECTION__CLIENT_SECRET_FILE",
            "ISSUERS____INTROSPECTION__CLIENT_SECRET",
            "ISSUERS__A__B__INTROSPECTION__CLIENT_SECRET",
            "INTROSPECTION__CLIENT_SECRET",
        ] {
            assert_eq!(key(other), None, "{other}");
        }
    }
}
