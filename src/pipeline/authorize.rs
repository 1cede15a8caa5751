//! The authorization stage, shared by proxy and forward-auth mode:
//! route → token → cache lookup (and introspection on a miss) → policy. The
//! cache lookup is `TokenCache::get_or_load` here; the scope check is
//! [`crate::policy::evaluate`].

use super::access::AccessInfo;
use super::reject::ProxyError;
use crate::app::App;
use crate::binding;
use crate::cache::{CacheStatus, LoadError};
use crate::config::Settings;
use crate::introspection::client::IntrospectError;
use crate::policy;
use crate::policy::Access;
use crate::token;
use tracing::debug;

/// Route → token → cache/introspect → policy → binding: may this request
/// pass? Shared by proxy and forward-auth mode. `Ok((None, None, None))` for a
/// public route; else the principal, the token's `exp` and how the token is
/// bound to its sender.
pub(super) async fn authorize(
    app: &App,
    settings: &Settings,
    route: &policy::Route,
    headers: &http::HeaderMap,
    query: Option<&str>,
    request: &binding::RequestFacts<'_>,
    info: &mut AccessInfo,
) -> Result<Authorized, ProxyError> {
    let principal = match &route.access {
        Access::Public => None,
        Access::Token(requirements) => {
            let found = token::extract_with_scheme(
                headers,
                query,
                &settings.token_sources,
                settings.max_token_bytes,
                settings.dpop.enabled,
            )?;
            let (token, _source, scheme) = found.ok_or(ProxyError::NoCredentials)?;
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
            // The binding stage: on every request too, hits included.
            let bound = app
                .binder
                .check(
                    &settings.dpop,
                    &introspection,
                    &token,
                    scheme,
                    headers,
                    request,
                )
                .await;
            app.metrics.observe_binding(&bound);
            let bound = bound.map_err(|e| {
                let algs = settings
                    .dpop
                    .enabled
                    .then(|| settings.dpop.challenge_algs.clone());
                ProxyError::Binding(e, algs)
            })?;
            info.subject = principal.subject.clone();
            Some((principal, introspection.exp, bound))
        }
    };
    Ok(match principal {
        Some((p, exp, bound)) => (Some(p), exp, Some(bound)),
        None => (None, None, None),
    })
}

/// What [`authorize`] found: the principal, the token's `exp`, the binding
/// (all `None` on a public route).
pub(super) type Authorized = (
    Option<policy::Principal>,
    Option<i64>,
    Option<binding::Binding>,
);
