//! The authorization stage, shared by proxy and forward-auth mode:
//! route → token → cache lookup (and introspection on a miss) → policy →
//! binding ([`crate::policy::binding::check`]). The
//! cache lookup is `TokenCache::get_or_load` here; the scope check is
//! [`crate::policy::evaluate`].

use super::access::AccessInfo;
use super::reject::ProxyError;
use crate::app::issuers::{Issuer, Picked};
use crate::app::App;
use crate::cache::{CacheStatus, LoadError};
use crate::config::Settings;
use crate::introspection::client::{IntrospectError, Introspection};
use crate::introspection::jwt::{JwtError, Shape};
use crate::policy;
use crate::policy::binding;
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
            let token_hash = token.hash();
            // Logs name the token by its own hash, whatever the issuer, so
            // that its lines correlate across routes.
            info.fingerprint = Some(token::fingerprint(&token_hash));
            // One of the route's issuers (a JWT's `iss` picks among several;
            // else the first), or the default: never another AS, never two.
            let issuer = match app.issuers.pick(&requirements.issuer_names, token.secret()) {
                Ok(issuer) => issuer,
                Err(Picked::UnknownIssuer) => {
                    // Counted under the route's first issuer (the default
                    // when it names none): no issuer's keys were involved.
                    let first = requirements
                        .issuer_names
                        .first()
                        .cloned()
                        .unwrap_or_else(|| crate::app::issuers::DEFAULT_ISSUER.to_owned());
                    app.metrics
                        .jwt_checked(&first.into(), JwtError::UnknownIssuer.kind());
                    debug!(route = %route.name, token = %token::fingerprint(&token_hash), "JWT access token of an issuer this route does not admit; refused without an AS call");
                    return Err(policy::Deny::Inactive.into());
                }
                // `validate` and reload refuse a route naming an issuer that
                // does not run; should one slip through, fail closed (503).
                Err(Picked::NotRunning) => return Err(IntrospectError::NoEndpoint.into()),
            };
            crate::ops::otel::record_request(|s| {
                s.record("tokengate.issuer", &*issuer.name);
            });
            // The issuer's partition of the cache: its answer only.
            let key = issuer.cache_key(&token_hash);

            let (answer, status) = app
                .cache
                .get_or_load_counted(key, &issuer.metrics.cache, || {
                    load(app, issuer, token.secret(), &token_hash)
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
            info.binding = Some(bound);
            info.subject = principal.subject.clone();
            Some((principal, introspection.exp, bound))
        }
    };
    info.authorized = true;
    Ok(match principal {
        Some((p, exp, bound)) => (Some(p), exp, Some(bound)),
        None => (None, None, None),
    })
}

/// A cache miss: where the answer comes from. Without JWT checks for this
/// issuer (`[jwt]` for the default one, `[issuers.<name>.jwt]`), or for a
/// token that is not ours to check locally, the issuer's introspection call;
/// for its `at+jwt` tokens, the local check with its keys (then also the
/// introspection call in hybrid mode, `jwt.introspect`). A token the local check refuses, or
/// refuses from its shape, is an inactive answer (401, negative-cached by
/// its hash) and the AS never hears of it.
async fn load(
    app: &App,
    issuer: &Issuer,
    token: &str,
    key: &token::TokenHash,
) -> Result<Introspection, IntrospectError> {
    let introspect = || issuer.load(token, key);
    let Some(jwt) = &issuer.jwt else {
        return introspect().await;
    };
    let refused = |e: JwtError| {
        app.metrics.jwt_checked(&issuer.name, e.kind());
        debug!(reason = %e, kind = e.kind(), issuer = %issuer.name, token = %token::fingerprint(key), "JWT access token refused locally");
        Ok(Introspection::inactive())
    };
    match jwt.classify(token) {
        Shape::Introspect => introspect().await,
        Shape::Refuse(e) => refused(e),
        Shape::Local(peeked) => match jwt.verify_peeked(token, peeked).await {
            // Hybrid: the signature says who issued it; only the AS knows
            // whether it was revoked since. Its answer is the one cached,
            // with the JWT's sender binding kept (below).
            Ok(local) if jwt.hybrid() => {
                app.metrics.jwt_checked(&issuer.name, "valid");
                Ok(keep_binding(local, introspect().await?, key))
            }
            Ok(answer) => {
                app.metrics.jwt_checked(&issuer.name, "valid");
                Ok(answer)
            }
            Err(JwtError::KeysUnavailable(m)) => {
                app.metrics.jwt_checked(&issuer.name, "keys_unavailable");
                Err(IntrospectError::KeysUnavailable(m))
            }
            Err(e) => refused(e),
        },
    }
}

/// Hybrid mode: the AS's answer, with the verified JWT's sender binding.
/// An AS need not repeat `cnf` (or a DPoP `token_type`) in its RFC 7662
/// answer, and dropping it would let a bound token pass as a plain bearer
/// token. A `cnf` in both that differs is a contradiction: refused (401).
fn keep_binding(
    local: Introspection,
    mut answer: Introspection,
    key: &token::TokenHash,
) -> Introspection {
    if !answer.active {
        return answer;
    }
    if let Some(cnf) = local.extra.get("cnf") {
        match answer.extra.get("cnf") {
            None => {
                answer.extra.insert("cnf".into(), cnf.clone());
            }
            Some(theirs) if theirs != cnf => {
                tracing::warn!(token = %token::fingerprint(key), "the introspection answer's cnf differs from the JWT's; refusing the token (401)");
                return Introspection::inactive();
            }
            Some(_) => {}
        }
    }
    use crate::policy::binding::is_dpop_type;
    if is_dpop_type(local.token_type.as_ref()) && !is_dpop_type(answer.token_type.as_ref()) {
        answer.token_type = local.token_type;
    }
    answer
}

/// What [`authorize`] found: the principal, the token's `exp`, the binding
/// (all `None` on a public route).
pub(super) type Authorized = (
    Option<policy::Principal>,
    Option<i64>,
    Option<binding::Binding>,
);
