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
use crate::policy::binding::Binding;
use crate::policy::Principal;
use crate::upstream::forward;
use http::header::HeaderValue;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response};
use hyper::body::Incoming;

/// Envoy's HTTP ext_authz: the request headers the authorization service
/// asks it to remove before the request goes upstream.
const ENVOY_HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

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
    // The front proxy terminated the client's TLS: the certificate comes in
    // its header (read only from `mtls.trusted_proxies`).
    let client_cert_sha256 = crate::policy::binding::mtls::client_certificate(
        &settings.mtls,
        peer.addr,
        peer.client_cert,
        req.headers(),
    )?;
    // DPoP's htu is the original request's: the front proxy's host, and the
    // scheme from a trusted proxy's X-Forwarded-Proto.
    let sender = Sender {
        client_cert_sha256,
        forwarded_trusted: settings.forwarding.trusts(peer.addr),
        scheme: peer.proto,
    };
    let (principal, binding) = decide(
        app,
        settings,
        &orig.method,
        &orig.target,
        orig.host.as_ref(),
        req.headers(),
        &sender,
        info,
    )
    .await?;
    let mut resp = front_proxy::allowed(principal.as_ref(), &settings.identity);
    if let Some(b) = binding {
        resp.headers_mut()
            .insert(settings.identity.binding_header.clone(), b.header_value());
    }
    // Envoy's HTTP ext_authz copies the headers we set but removes nothing by
    // itself: every identity header we do not set (a public route, a token
    // without `sub`) is named here for it to remove, so that a client's own
    // copy never reaches the app. nginx and Traefik ignore this header.
    let remove: Vec<&str> = forward::unset_identity_headers(&settings.identity, resp.headers())
        .map(http::HeaderName::as_str)
        .collect();
    if let Ok(v) = HeaderValue::from_str(&remove.join(",")) {
        if !remove.is_empty() {
            resp.headers_mut()
                .insert(http::HeaderName::from_static(ENVOY_HEADERS_TO_REMOVE), v);
        }
    }
    Ok(resp)
}

/// The decision about an original request that another proxy describes (the
/// HTTP forward-auth sub-request, or an Envoy gRPC `CheckRequest`): method
/// override check, route selection, then [`authorize`]. One function for both
/// callers, so that they cannot drift apart; a stage added here (or in
/// `authorize`) applies to both. `headers` are the original request's (the
/// token and any override header are read from them); `host` is already
/// normalised by [`forward::routing_host`]. `Ok((None, None))`: a public
/// route; else the principal and how its token was bound.
#[expect(
    clippy::too_many_arguments,
    reason = "the original request's parts, each from a different place in each caller"
)]
pub(crate) async fn decide(
    app: &App,
    settings: &Settings,
    method: &Method,
    target: &PathAndQuery,
    host: Option<&HeaderValue>,
    headers: &HeaderMap,
    sender: &Sender<'_>,
    info: &mut AccessInfo,
) -> Result<(Option<Principal>, Option<Binding>), ProxyError> {
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
    // A host that is not text cannot be matched against host-scoped routes:
    // refused (as in proxy mode), never read as "no host".
    let host = host
        .map(|h| {
            h.to_str()
                .map_err(|_| crate::policy::RouteError::InvalidHost)
        })
        .transpose()?;
    let route = settings.routes.select(method, host, target.path())?;
    info.route = Some(route.name.clone());
    let facts = crate::policy::binding::RequestFacts {
        method,
        uri: crate::policy::binding::request_uri(
            headers,
            sender.forwarded_trusted,
            sender.scheme,
            host,
            target.path(),
        ),
        client_cert_sha256: sender.client_cert_sha256,
    };
    let (principal, _exp, binding) =
        authorize(app, settings, route, headers, target.query(), &facts, info).await?;
    Ok((principal, binding))
}

/// Who sent the original request, as far as the binding stage needs to know:
/// its client certificate, and where DPoP's `htu` scheme and host come from.
pub(crate) struct Sender<'a> {
    /// SHA-256 of the client certificate the front proxy vouches for.
    pub client_cert_sha256: Option<[u8; 32]>,
    /// Whether `X-Forwarded-Proto` / `-Host` in the original headers may be
    /// believed (the peer is one of `forwarding.trusted_proxies`).
    pub forwarded_trusted: bool,
    /// The scheme the client used, when no trusted header says otherwise.
    pub scheme: &'a str,
}
