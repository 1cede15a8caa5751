//! The authorization stage, shared by proxy and forward-auth mode:
//! route → token → cache lookup (and introspection on a miss) → policy. The
//! cache lookup is `TokenCache::get_or_load` here; the scope check is
//! [`crate::policy::evaluate`].

use super::access::AccessInfo;
use super::reject::ProxyError;
use crate::app::App;
use crate::cache::{CacheStatus, LoadError};
use crate::config::Settings;
use crate::introspection::client::IntrospectError;
use crate::policy;
use crate::policy::Access;
use crate::token;
use tracing::debug;

/// Route → token → cache/introspect → policy: may this request pass? Shared by
/// proxy and forward-auth mode. `Ok((None, None))` for a public route; else the
/// principal and the token's `exp`.
pub(super) async fn authorize(
    app: &App,
    settings: &Settings,
    route: &policy::Route,
    headers: &http::HeaderMap,
    query: Option<&str>,
    info: &mut AccessInfo,
) -> Result<(Option<policy::Principal>, Option<i64>), ProxyError> {
    let principal = match &route.access {
        Access::Public => None,
        Access::Token(requirements) => {
            let found = token::extract(
                headers,
                query,
                &settings.token_sources,
                settings.max_token_bytes,
            )?;
            let (token, _source) = found.ok_or(ProxyError::NoCredentials)?;
            let token_hash = token.hash();
            // Logs name the token by its own hash, whatever the issuer, so
            // that its lines correlate across routes.
            info.fingerprint = Some(token::fingerprint(&token_hash));
            // The route's issuer, or the default: never another AS.
            let issuer = app
                .issuers
                .get(requirements.issuer_name.as_deref())
                // `validate` and reload refuse a route naming an issuer that
                // does not run; should one slip through, fail closed (503).
                .ok_or(IntrospectError::NoEndpoint)?;
            // The issuer's partition of the cache: its answer only.
            let key = issuer.cache_key(&token_hash);

            let (answer, status) = app
                .cache
                .get_or_load_counted(key, &issuer.metrics.cache, || {
                    issuer.load(token.secret(), &token_hash)
                })
                .await;
            info.cache = Some(status);
            if status == CacheStatus::Stale {
                app.metrics.stale_answer();
            }
            let introspection = match answer {
                Ok(i) => i,
                Err(LoadError::Inactive) => return Err(policy::Deny::Inactive.into()),
                Err(LoadError::Failed(e)) => return Err(e.into()),
            };
            // Evaluated on every request, cache hit or not.
            let principal = policy::evaluate(
                &introspection,
                requirements,
                app.clock.unix_secs(),
                &settings.identity.claims,
            )
            .inspect_err(|deny| {
                debug!(route = %route.name, issuer = %issuer.name, requirement = %deny, token = %token::fingerprint(&token_hash), "policy denied")
            })?;
            info.subject = principal.subject.clone();
            Some((principal, introspection.exp))
        }
    };
    Ok(match principal {
        Some((p, exp)) => (Some(p), exp),
        None => (None, None),
    })
}
