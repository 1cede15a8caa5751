//! Forward-auth mode's stage: the original request as the front proxy
//! describes it ([`super::front_proxy`]), [`authorize`], and the 200 +
//! identity answer instead of a call to the upstream.

use super::access::AccessInfo;
use super::authorize::authorize;
use super::front_proxy;
use super::reject::ProxyError;
use crate::app::App;
use crate::config::Settings;
use crate::http::Body;
use crate::policy::Principal;
use crate::upstream::forward;
use http::header::HeaderValue;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response};
use hyper::body::Incoming;

/// `mode = "forward_auth"`: decide about the original request the front proxy
/// describes, and answer 200 with identity headers (or a rejection).
pub(super) async fn forward_auth_check(
    app: &App,
    settings: &Settings,
    req: Request<Incoming>,
    info: &mut AccessInfo,
) -> Result<Response<Body>, ProxyError> {
    // The sub-request's own Host may stand for the original's (Envoy): the
    // same one-Host rule as in proxy mode.
    forward::routing_host(&req)?;
    let orig = front_proxy::original(
        &req,
        settings.forward_auth_convention,
        &settings.forward_auth_prefix,
    )?;
    let principal = decide(
        app,
        settings,
        &orig.method,
        &orig.target,
        orig.host.as_ref(),
        req.headers(),
        info,
    )
    .await?;
    Ok(front_proxy::allowed(principal.as_ref(), &settings.identity))
}

/// The decision about an original request that another proxy describes (the
/// HTTP forward-auth sub-request, or an Envoy gRPC `CheckRequest`): method
/// override check, route selection, then [`authorize`]. One function for both
/// callers, so that they cannot drift apart; a stage added here (or in
/// `authorize`) applies to both. `headers` are the original request's (the
/// token and any override header are read from them); `host` is already
/// normalised by [`forward::routing_host`]. `Ok(None)`: a public route.
pub(crate) async fn decide(
    app: &App,
    settings: &Settings,
    method: &Method,
    target: &PathAndQuery,
    host: Option<&HeaderValue>,
    headers: &HeaderMap,
    info: &mut AccessInfo,
) -> Result<Option<Principal>, ProxyError> {
    // The path only, as in proxy mode: the original query may carry a token.
    info.original = Some((method.clone(), target.path().to_owned()));
    // A method override we can see (`?_method=`, or a header the proxy
    // passed on) reaches the app with the original request: we can neither
    // remove it nor know whether the app runs it, so one that names another
    // method is refused rather than routed either way.
    let overridden = forward::routing_method(
        method,
        headers,
        target.query(),
        crate::config::MethodOverride::Route,
    )
    .map_err(|_| forward::OverrideError::NotStrippable)?;
    if overridden != method {
        return Err(forward::OverrideError::NotStrippable.into());
    }
    let route =
        settings
            .routes
            .select(method, host.and_then(|h| h.to_str().ok()), target.path())?;
    info.route = Some(route.name.clone());
    let (principal, _exp) = authorize(app, settings, route, headers, target.query(), info).await?;
    Ok(principal)
}
