//! The per-request pipeline: route → token → cache/introspect → policy →
//! forward (or, in forward-auth mode, the 200 + identity answer), and the one
//! access log line. Each stage lives in its own file below.

pub mod forward_auth;
pub mod reject;

use crate::app::App;
use crate::cache::{CacheStatus, LoadError};
use crate::config::{Mode, Settings};
use crate::http::limits::{self, ConnectionSlot, LimitedBody};
use crate::http::Body;
use crate::introspection::client::IntrospectError;
use crate::policy;
use crate::policy::Access;
use crate::token;
use crate::upstream::forward::{self, ForwardError, Hop, Peer};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use reject::{grpc_rejection_response, is_grpc, rejection_response, ProxyError};
use std::time::Instant;
use tracing::{debug, info, warn};

/// What the access log line reports besides method, path, status and latency.
#[derive(Default)]
struct AccessInfo {
    route: Option<String>,
    cache: Option<CacheStatus>,
    subject: Option<String>,
    fingerprint: Option<String>,
    /// Forward-auth mode: the original request's method and path (no query),
    /// logged instead of the sub-request's (which is always e.g. `GET /_tokengate`).
    original: Option<(Method, String)>,
}

/// Outer handler: runs the request path, turns any error into a response,
/// and writes exactly one access log line. `slot` is the connection's
/// `limits.max_connections` permit, for an upgrade to take over.
pub async fn handle(
    app: &App,
    req: Request<Incoming>,
    peer: &Peer,
    slot: &ConnectionSlot,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    // The path only: a query string may carry credentials.
    let path = req.uri().path().to_owned();
    let mut info = AccessInfo::default();
    // gRPC clients need their failures as gRPC statuses; decided before the
    // request is consumed.
    let grpc = is_grpc(req.headers());
    // The one settings snapshot this request uses, whatever a reload does meanwhile.
    let settings = app.settings.load_full();
    let result = match settings.mode {
        Mode::Proxy => authorize_and_forward(app, &settings, req, peer, slot, &mut info).await,
        Mode::ForwardAuth => forward_auth_check(app, &settings, req, &mut info).await,
    };
    let response = match result {
        Ok(resp) => resp,
        Err(err) => {
            log_error(&err, &info);
            if let ProxyError::Upstream(e) = &err {
                app.metrics.upstream_error(e);
            }
            if grpc {
                grpc_rejection_response(&err)
            } else {
                rejection_response(&err, settings.retry_after_secs)
            }
        }
    };
    let elapsed = started.elapsed();
    let (method, path) = info.original.take().unwrap_or((method, path));
    info!(
        target: "tokengate::access",
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        route = info.route.as_deref().unwrap_or("-"),
        // Whole microseconds, so the field prints as e.g. 4.234, not 4.233988999999999.
        latency_ms = elapsed.as_micros() as f64 / 1000.0,
        cache = info.cache.map(CacheStatus::as_str).unwrap_or("-"),
        subject = info.subject.as_deref().unwrap_or("-"),
        token = info.fingerprint.as_deref().unwrap_or("-"),
    );
    app.metrics
        .observe_request(info.route, response.status(), elapsed);
    response
}

fn log_error(err: &ProxyError, info: &AccessInfo) {
    let token = info.fingerprint.as_deref().unwrap_or("-");
    match err {
        // The breaker logs when it opens; one WARN per fast-failed request
        // would flood the log exactly when the AS is down.
        ProxyError::Introspection(e @ IntrospectError::CircuitOpen) => {
            debug!(kind = e.kind(), token, "circuit open; answering 503")
        }
        ProxyError::Introspection(e) => {
            warn!(kind = e.kind(), error = %e, token, "introspection failed; answering 503")
        }
        // A client's broken body is the client's fault: not an upstream alarm.
        ProxyError::Upstream(ForwardError::BadBody(_)) => {
            debug!(reason = %err, token, "request rejected")
        }
        ProxyError::Upstream(e) => warn!(error = %e, "upstream failure"),
        ProxyError::NoCredentials
        | ProxyError::Token(_)
        | ProxyError::Denied(_)
        | ProxyError::ConnectMethod
        | ProxyError::ForwardAuth(_)
        | ProxyError::BodyTooLarge
        | ProxyError::Route(_)
        | ProxyError::MethodOverride(_) => debug!(reason = %err, token, "request rejected"),
    }
}

/// Inner handler: the request path, with `?` for every way out.
async fn authorize_and_forward(
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
        settings.forwarding.method_override,
    )?;
    let route = settings.routes.select(
        &method,
        host.as_ref().and_then(|h| h.to_str().ok()),
        req.uri().path(),
    )?;
    info.route = Some(route.name.clone());

    let (principal, exp) =
        authorize(app, settings, route, req.headers(), req.uri().query(), info).await?;
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
    let version = req.version();
    let hop = Hop {
        peer,
        identity: &settings.identity,
        trusted: settings.forwarding.trusts(peer.addr),
        method_override: settings.forwarding.method_override,
    };
    forward::rewrite_request_headers(req.headers_mut(), version, host, principal.as_ref(), &hop);
    if let Some(u) = upgrade {
        crate::upstream::upgrade::restore_headers(req.headers_mut(), u);
    }
    // gRPC over h2 needs `te: trailers`, the one TE value HTTP/2 allows (RFC 9113 §8.2.2).
    if te_trailers && app.forwarder.is_http2() {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let (req, tripped) = {
        let (parts, body) = req.into_parts();
        let (body, tripped) = LimitedBody::new(body, settings.limits.max_body_bytes);
        (Request::from_parts(parts, body), tripped)
    };
    let mut resp = match app.forwarder.send(req).await {
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

/// Route → token → cache/introspect → policy: may this request pass? Shared by
/// proxy and forward-auth mode. `Ok((None, None))` for a public route; else the
/// principal and the token's `exp`.
async fn authorize(
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
            info.subject = principal.subject.clone();
            Some((principal, introspection.exp))
        }
    };
    Ok(match principal {
        Some((p, exp)) => (Some(p), exp),
        None => (None, None),
    })
}

/// `mode = "forward_auth"`: decide about the original request the front proxy
/// describes, and answer 200 with identity headers (or a rejection).
async fn forward_auth_check(
    app: &App,
    settings: &Settings,
    req: Request<Incoming>,
    info: &mut AccessInfo,
) -> Result<Response<Body>, ProxyError> {
    // The sub-request's own Host may stand for the original's (Envoy): the
    // same one-Host rule as in proxy mode.
    forward::routing_host(&req)?;
    let orig = crate::pipeline::forward_auth::original(
        &req,
        settings.forward_auth_convention,
        &settings.forward_auth_prefix,
    )?;
    // The path only, as in proxy mode: the original query may carry a token.
    info.original = Some((orig.method.clone(), orig.target.path().to_owned()));
    let route = settings.routes.select(
        &orig.method,
        orig.host.as_ref().and_then(|h| h.to_str().ok()),
        orig.target.path(),
    )?;
    info.route = Some(route.name.clone());
    let (principal, _exp) = authorize(
        app,
        settings,
        route,
        req.headers(),
        orig.target.query(),
        info,
    )
    .await?;
    Ok(crate::pipeline::forward_auth::allowed(
        principal.as_ref(),
        &settings.identity,
    ))
}

/// Removes the configured query parameter and cookie, on every request.
fn strip_token_sources<B>(
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
