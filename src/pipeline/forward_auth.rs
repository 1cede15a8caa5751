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
use crate::upstream::forward;
use http::{Request, Response};
use hyper::body::Incoming;

/// `mode = "forward_auth"`: decide about the original request the front proxy
/// describes, and answer 200 with identity headers (or a rejection).
pub(super) async fn forward_auth_check(
    app: &App,
    settings: &Settings,
    req: Request<Incoming>,
    peer: &forward::Peer,
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
    // The path only, as in proxy mode: the original query may carry a token.
    info.original = Some((orig.method.clone(), orig.target.path().to_owned()));
    // A method override we can see (`?_method=`, or a header the proxy
    // passed on) reaches the app with the original request: we can neither
    // remove it nor know whether the app runs it, so one that names another
    // method is refused rather than routed either way.
    let overridden = forward::routing_method(
        &orig.method,
        req.headers(),
        orig.target.query(),
        crate::config::MethodOverride::Route,
    )
    .map_err(|_| forward::OverrideError::NotStrippable)?;
    if overridden != orig.method {
        return Err(forward::OverrideError::NotStrippable.into());
    }
    let route = settings.routes.select(
        &orig.method,
        orig.host.as_ref().and_then(|h| h.to_str().ok()),
        orig.target.path(),
    )?;
    info.route = Some(route.name.clone());
    // The front proxy terminated the client's TLS: the certificate comes in
    // its header (read only from `mtls.trusted_proxies`).
    let client_cert_sha256 = crate::policy::binding::mtls::client_certificate(
        &settings.mtls,
        peer.addr,
        peer.client_cert,
        req.headers(),
    )?;
    // DPoP's htu is the original request's: the front proxy's host, and the
    // scheme from a trusted proxy's X-Forwarded-Proto (crate::policy::binding::request_uri).
    let facts = crate::policy::binding::RequestFacts {
        method: &orig.method,
        uri: crate::policy::binding::request_uri(
            req.headers(),
            settings.forwarding.trusts(peer.addr),
            peer.proto,
            orig.host.as_ref().and_then(|h| h.to_str().ok()),
            orig.target.path(),
        ),
        client_cert_sha256,
    };
    let (principal, _exp, binding) = authorize(
        app,
        settings,
        route,
        req.headers(),
        orig.target.query(),
        &facts,
        info,
    )
    .await?;
    let mut resp = front_proxy::allowed(principal.as_ref(), &settings.identity);
    if let Some(b) = binding {
        resp.headers_mut()
            .insert(settings.identity.binding_header.clone(), b.header_value());
    }
    Ok(resp)
}
