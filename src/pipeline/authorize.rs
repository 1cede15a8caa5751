//! The authorization stage, shared by proxy and forward-auth mode:
//! route → token → cache lookup (and introspection on a miss) → policy →
//! binding ([`crate::policy::binding::check`]). The
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
    binding: &crate::policy::binding::BindingInput,
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
            let key = token.hash();
            info.fingerprint = Some(token::fingerprint(&key));

            let (answer, status) = app
                .cache
                .get_or_load(key, || {
                    // The breaker goes outside the timing: a call it refuses
                    // is not an introspection call (no duration to observe),
                    // but it is counted as outcome "circuit_open".
                    async {
                        let result = app
                            .breaker
                            .call_confirmed(
                                app.metrics.time_introspection(
                                    app.introspector.introspect(token.secret()),
                                ),
                                || app.introspector.canary(),
                            )
                            .await;
                        match result {
                            Err(IntrospectError::CircuitOpen) => {
                                app.metrics.introspection_refused();
                                result
                            }
                            // The AS will not introspect this token (e.g. a
                            // JWT-shaped token it did not issue): for the cache
                            // and the policy it is an inactive token, so it is
                            // answered 401 and negative-cached by its hash
                            // like one. Counted as `token_rejected` above;
                            // debug only, because any client can cause it.
                            Err(IntrospectError::TokenRejected(code)) => {
                                debug!(code, token = %token::fingerprint(&key), "authorization server refused to introspect the token; treating it as inactive");
                                Ok(crate::introspection::client::Introspection::inactive())
                            }
                            other => other,
                        }
                    }
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
                debug!(route = %route.name, requirement = %deny, token = %token::fingerprint(&key), "policy denied")
            })?;
            // A sender-constrained token passes only with its proof, on every
            // request (cache hits too: the cached answer keeps `cnf`).
            let bound = crate::policy::binding::check(&introspection, binding).inspect_err(|e| {
                app.metrics.binding_refused(e.reason());
                debug!(route = %route.name, refusal = %e, token = %token::fingerprint(&key), "binding check failed");
            })?;
            info.binding = Some(bound);
            info.subject = principal.subject.clone();
            Some((principal, introspection.exp))
        }
    };
    Ok(match principal {
        Some((p, exp)) => (Some(p), exp),
        None => (None, None),
    })
}
