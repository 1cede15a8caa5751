//! Proxy mode's stage: the request checks that come before any token work
//! (CONNECT, declared body size, routing host), the client certificate
//! ([`crate::policy::binding::mtls`]), then [`authorize`], then the
//! call to the upstream ([`crate::upstream::forward`]), an Upgrade included.

use super::access::AccessInfo;
use super::authorize::authorize;
use super::reject::ProxyError;
use crate::app::App;
use crate::config::Settings;
use crate::http::limits::{self, ConnectionSlot, LimitedBody};
use crate::http::trace as otel;
use crate::http::Body;
use crate::token;
use crate::upstream::forward::{self, ForwardError, Hop, Peer};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::debug;

/// Inner handler: the request path, with `?` for every way out.
pub(super) async fn authorize_and_forward(
    app: &App,
    settings: &Settings,
    mut req: Request<Incoming>,
    peer: &Peer,
    slot: &ConnectionSlot,
    info: &mut AccessInfo,
) -> Result<Response<Body>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::ConnectMethod);
    }
    // Before anything costly: no introspection for a request we will refuse.
    if limits::declared_too_large(req.headers(), settings.limits.max_body_bytes) {
        return Err(ProxyError::BodyTooLarge);
    }
    // Normalised and checked (one Host, agreeing with the target's authority):
    // the route is chosen by this value, and the upstream is told this value
    // in X-Forwarded-Host.
    let host = forward::routing_host(&req)?;
    let method = forward::routing_method(
        req.method(),
        req.headers(),
        req.uri().query(),
        settings.forwarding.method_override,
    )?;
    let route = settings.routes.select(
        &method,
        host.as_ref().and_then(|h| h.to_str().ok()),
        req.uri().path(),
    )?;
    info.route = Some(route.name.clone());

    // The client certificate (our TLS, or a trusted proxy's header) for a
    // certificate-bound token; an untrusted peer's header never reaches the upstream.
    let client_cert_sha256 = crate::policy::binding::mtls::client_certificate(
        &settings.mtls,
        peer.addr,
        peer.client_cert,
        req.headers(),
    )?;
    crate::policy::binding::mtls::strip_untrusted(&settings.mtls, peer.addr, req.headers_mut());
    let facts = crate::policy::binding::RequestFacts {
        method: req.method(),
        uri: crate::policy::binding::request_uri(
            req.headers(),
            settings.forwarding.trusts(peer.addr),
            peer.proto,
            host.as_ref().and_then(|h| h.to_str().ok()),
            req.uri().path(),
        ),
        client_cert_sha256,
    };
    let (principal, exp, binding) = authorize(
        app,
        settings,
        route,
        req.headers(),
        req.uri().query(),
        &facts,
        info,
    )
    .await?;
    // Only an allowed protocol is offered to the upstream (never h2c: its
    // tunnel would carry requests no token check sees); any other Upgrade is
    // stripped below with the hop-by-hop fields and the request goes on as a
    // plain one. An HTTP/2 upstream cannot take an HTTP/1.1 Upgrade at all.
    let upgrade = if app.forwarder.is_http2() {
        None
    } else {
        crate::upstream::upgrade::requested(&req, &settings.upgrade_protocols)
    };
    if upgrade.is_none() && req.headers().contains_key(header::UPGRADE) {
        // Not the value: it is the client's to fill with anything.
        debug!("upgrade not allowed: forwarding a plain request");
    }
    // Taken before the request is handed on; resolves once we answer 101.
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let te_trailers = forward::te_trailers(req.headers());

    // Credentials in the query or a cookie are for us, not the upstream.
    strip_token_sources(&mut req, &settings.token_sources)?;
    // `?_method=DELETE` is an override like the headers (Symfony, Laravel,
    // Express): the route was chosen by the request's own method, so the
    // upstream must not run another.
    if settings.forwarding.method_override == crate::config::MethodOverride::Strip {
        strip_method_params(&mut req)?;
    }
    let version = req.version();
    let hop = Hop {
        peer,
        identity: &settings.identity,
        trusted: settings.forwarding.trusts(peer.addr),
        method_override: settings.forwarding.method_override,
    };
    forward::rewrite_request_headers(req.headers_mut(), version, host, principal.as_ref(), &hop);
    if let Some(b) = binding {
        req.headers_mut()
            .insert(settings.identity.binding_header.clone(), b.header_value());
    }
    if let Some(u) = upgrade {
        crate::upstream::upgrade::restore_headers(req.headers_mut(), u);
    }
    // gRPC over h2 needs `te: trailers`, the one TE value HTTP/2 allows (RFC 9113 §8.2.2).
    if te_trailers && app.forwarder.is_http2() {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // `[tracing]`: the upstream call's span; the upstream gets its
    // `traceparent` (without tracing, the client's passes unchanged).
    let span = otel::child(otel::Call::Upstream);
    if let Some(span) = &span {
        otel::inject_span(span, req.headers_mut());
    }
    let (req, tripped) = {
        let (parts, body) = req.into_parts();
        let (body, tripped) = LimitedBody::new(body, settings.limits.max_body_bytes);
        (Request::from_parts(parts, body), tripped)
    };
    let sent = otel::within(span.as_ref(), app.forwarder.send(req)).await;
    otel::record_outcome(
        span.as_ref(),
        sent.as_ref().ok().map(|r| r.status().as_u16()),
        sent.as_ref().err().map(upstream_error_kind),
    );
    let mut resp = match sent {
        Ok(resp) => resp,
        // The upstream call failed because we cut the body off.
        Err(_) if tripped.is_set() => return Err(ProxyError::BodyTooLarge),
        Err(e) => return Err(e.into()),
    };
    // `Forwarder::send` refuses a 101 unless it confirms an upgrade we
    // offered, so a 101 here always has a client upgrade to join.
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = client_upgrade else {
            return Err(ForwardError::UnexpectedUpgrade(String::new()).into());
        };
        let upstream = hyper::upgrade::on(&mut resp);
        let limits = crate::upstream::upgrade::TunnelLimits {
            max_life: crate::upstream::upgrade::until_exp(exp, app.clock.now()),
            idle: settings.limits.tunnel_idle_timeout,
        };
        app.tunnels.spawn(client, upstream, limits, slot.take());
    }
    Ok(resp.map(BodyExt::boxed))
}

/// The upstream span's `error.type`.
fn upstream_error_kind(e: &ForwardError) -> &'static str {
    match e {
        ForwardError::Connect(_) => "connect",
        ForwardError::Timeout(_) => "timeout",
        ForwardError::Failed(_) => "failed",
        ForwardError::BadTarget => "bad_target",
        ForwardError::BadBody(_) => "bad_body",
        ForwardError::UnexpectedUpgrade(_) => "unexpected_upgrade",
    }
}

/// Removes the configured query parameter and cookie, on every request.
/// Removes the query's method-override parameters (`forward::is_method_param`).
fn strip_method_params<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    let Some(query) = req.uri().query() else {
        return Ok(());
    };
    let Some(kept) = forward::strip_method_params(query) else {
        return Ok(());
    };
    let path = req.uri().path();
    let pq = match kept {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|_| ForwardError::BadTarget)?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| ForwardError::BadTarget)?;
    Ok(())
}

pub(super) fn strip_token_sources<B>(
    req: &mut Request<B>,
    sources: &token::TokenSources,
) -> Result<(), ProxyError> {
    if let Some(name) = &sources.cookie {
        token::strip_cookie(req.headers_mut(), name);
    }
    if let (Some(name), Some(query)) = (&sources.query_param, req.uri().query()) {
        // Rebuild the target only when the parameter is there: every other
        // request keeps its exact bytes (and skips the allocation).
        if !url::form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == name.as_str()) {
            return Ok(());
        }
        let path = req.uri().path();
        let pq = match token::strip_query_param(query, name) {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(pq.parse().map_err(|_| ForwardError::BadTarget)?);
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| ForwardError::BadTarget)?;
    }
    Ok(())
}
