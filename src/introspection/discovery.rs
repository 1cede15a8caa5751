//! RFC 8414 / OpenID Connect discovery of the introspection endpoint, for
//! `[discovery] issuer` with an empty `introspection.url`. Runs once at start-up
//! (failure stops start-up) and then in the background: every
//! `refresh_interval`, and when the introspector sees repeated 404s. A failed
//! refresh keeps the last good endpoint.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use serde::Deserialize;
use std::time::Duration;

/// `[discovery]`, validated (the discovery owns its settings; the
/// configuration composes them).
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    /// Must equal the metadata's `issuer` exactly (RFC 8414 §3.3).
    pub issuer: String,
    pub refresh_interval: Duration,
}

const MAX_METADATA_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot fetch {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{url} names issuer {found:?}, but discovery.issuer is {expected:?} (they must match exactly, RFC 8414 §3.3)")]
    IssuerMismatch {
        url: String,
        expected: String,
        found: String,
    },
    #[error("{url} has no usable introspection_endpoint")]
    NoIntrospectionEndpoint { url: String },
    #[error("{url} has no usable jwks_uri")]
    NoJwksUri { url: String },
    #[error("discovery failed for issuer {issuer}: {errors}")]
    AllFailed { issuer: String, errors: String },
}

#[derive(Deserialize)]
struct Metadata {
    issuer: Option<String>,
    introspection_endpoint: Option<String>,
    /// The issuer's signing keys (JWT access tokens, RFC 9701 answers).
    jwks_uri: Option<String>,
}

/// RFC 8414 §3.1 (well-known segment inserted before the issuer's path), then
/// OpenID Connect Discovery §4 (appended to the issuer).
pub fn metadata_urls(issuer: &str) -> Vec<String> {
    let mut urls = Vec::with_capacity(2);
    if let Ok(u) = url::Url::parse(issuer) {
        let path = u.path().trim_end_matches('/');
        let mut rfc8414 = u.clone();
        rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
        urls.push(rfc8414.to_string());
    }
    urls.push(format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    ));
    urls
}

/// Finds the introspection endpoint of `issuer`. `tls` is the AS client's
/// trust (web PKI roots plus `upstream_tls.ca_file`), so a private-CA AS is
/// discovered the same way it is called.
pub async fn discover(
    issuer: &str,
    timeout: Duration,
    tls: &crate::http::tls::ClientTls,
) -> Result<oauth2::IntrospectionUrl, DiscoveryError> {
    let (url, meta) = metadata(issuer, timeout, tls).await?;
    meta.introspection_endpoint
        .and_then(|e| oauth2::IntrospectionUrl::new(e).ok())
        .filter(|e| matches!(e.url().scheme(), "http" | "https"))
        .ok_or(DiscoveryError::NoIntrospectionEndpoint { url })
}

/// Finds the `jwks_uri` of `issuer` (JWT access tokens, RFC 9701 answers),
/// from the same metadata document as [`discover`].
pub async fn discover_jwks_uri(
    issuer: &str,
    timeout: Duration,
    tls: &crate::http::tls::ClientTls,
) -> Result<url::Url, DiscoveryError> {
    let (url, meta) = metadata(issuer, timeout, tls).await?;
    meta.jwks_uri
        .and_then(|e| url::Url::parse(&e).ok())
        .filter(|e| matches!(e.scheme(), "http" | "https"))
        .ok_or(DiscoveryError::NoJwksUri { url })
}

/// The metadata document of `issuer` and where it was found.
async fn metadata(
    issuer: &str,
    timeout: Duration,
    tls: &crate::http::tls::ClientTls,
) -> Result<(String, Metadata), DiscoveryError> {
    let client = crate::http::client::build_with::<Empty<Bytes>>(timeout, tls);
    let mut errors = Vec::new();
    for url in metadata_urls(issuer) {
        match fetch(&client, &url, timeout).await {
            Ok(meta) => {
                let found = meta.issuer.clone().unwrap_or_default();
                if found != issuer {
                    // A document that names another issuer is a red flag (a
                    // mix-up or a hostile redirect), not a reason to try the next URL.
                    return Err(DiscoveryError::IssuerMismatch {
                        url,
                        expected: issuer.to_owned(),
                        found,
                    });
                }
                return Ok((url, meta));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(DiscoveryError::AllFailed {
        issuer: issuer.to_owned(),
        errors: errors.join("; "),
    })
}

async fn fetch(
    client: &hyper_util::client::legacy::Client<crate::http::client::Connector, Empty<Bytes>>,
    url: &str,
    timeout: Duration,
) -> Result<Metadata, DiscoveryError> {
    let fail = |reason: String| DiscoveryError::Fetch {
        url: url.to_owned(),
        reason,
    };
    let req = http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| fail(e.to_string()))?;
    let call = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| fail(crate::http::client::error_chain(&e)))?;
        if resp.status() != http::StatusCode::OK {
            return Err(fail(format!("HTTP {}", resp.status().as_u16())));
        }
        let body = Limited::new(resp.into_body(), MAX_METADATA_BYTES)
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        serde_json::from_slice::<Metadata>(&body)
            .map_err(|e| fail(format!("not a metadata document: {e}")))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| fail(format!("timed out after {timeout:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls() {
        assert_eq!(
            metadata_urls("https://as.example.com"),
            vec![
                "https://as.example.com/.well-known/oauth-authorization-server",
                "https://as.example.com/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            metadata_urls("https://as.example.com/realms/demo/"),
            vec![
                "https://as.example.com/.well-known/oauth-authorization-server/realms/demo",
                "https://as.example.com/realms/demo/.well-known/openid-configuration",
            ]
        );
    }
}
