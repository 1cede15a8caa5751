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
use crate::introspection::client::{IntrospectError, Introspection};
use crate::introspection::jwt::{JwtError, Shape};
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
                .get_or_load(key, || load(app, token.secret(), &key))
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

/// A cache miss: where the answer comes from. Without `[jwt]`, or for a
/// token that is not ours to check locally, the introspection call; for our
/// `at+jwt` tokens, the local check (then also the introspection call in
/// hybrid mode, `jwt.introspect`). A token the local check refuses, or
/// refuses from its shape, is an inactive answer (401, negative-cached by
/// its hash) and the AS never hears of it.
async fn load(
    app: &App,
    token: &str,
    key: &token::TokenHash,
) -> Result<Introspection, IntrospectError> {
    let Some(jwt) = &app.jwt else {
        return introspect(app, token, key).await;
    };
    let refused = |e: JwtError| {
        app.metrics.jwt_checked(e.kind());
        debug!(reason = %e, kind = e.kind(), token = %token::fingerprint(key), "JWT access token refused locally");
        Ok(Introspection::inactive())
    };
    match jwt.classify(token) {
        Shape::Introspect => introspect(app, token, key).await,
        Shape::Refuse(e) => refused(e),
        Shape::Local(peeked) => match jwt.verify_peeked(token, peeked).await {
            // Hybrid: the signature says who issued it; only the AS knows
            // whether it was revoked since. Its answer is the one cached.
            Ok(_) if jwt.hybrid() => {
                app.metrics.jwt_checked("valid");
                introspect(app, token, key).await
            }
            Ok(answer) => {
                app.metrics.jwt_checked("valid");
                Ok(answer)
            }
            Err(JwtError::KeysUnavailable(m)) => {
                app.metrics.jwt_checked("keys_unavailable");
                Err(IntrospectError::KeysUnavailable(m))
            }
            Err(e) => refused(e),
        },
    }
}

/// One introspection call through the breaker (the AS's answer, or why not).
async fn introspect(
    app: &App,
    token: &str,
    key: &token::TokenHash,
) -> Result<Introspection, IntrospectError> {
    // The breaker goes outside the timing: a call it refuses is not an
    // introspection call (no duration to observe), but it is counted as
    // outcome "circuit_open".
    let result = app
        .breaker
        .call_confirmed(
            app.metrics
                .time_introspection(app.introspector.introspect(token)),
            || app.introspector.canary(),
        )
        .await;
    match result {
        Err(IntrospectError::CircuitOpen) => {
            app.metrics.introspection_refused();
            result
        }
        // The AS will not introspect this token (e.g. a JWT-shaped token it
        // did not issue): for the cache and the policy it is an inactive
        // token, so it is answered 401 and negative-cached by its hash like
        // one. Counted as `token_rejected` above; debug only, because any
        // client can cause it.
        Err(IntrospectError::TokenRejected(code)) => {
            debug!(code, token = %token::fingerprint(key), "authorization server refused to introspect the token; treating it as inactive");
            Ok(Introspection::inactive())
        }
        other => other,
    }
}
