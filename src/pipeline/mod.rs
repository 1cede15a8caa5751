//! The per-request pipeline: route → token → cache/introspect → policy →
//! binding → forward (or, in forward-auth mode, the 200 + identity answer),
//! and the one access log line. Each stage lives in its own file below.

mod access;
mod authorize;
pub(crate) mod ext_authz;
mod forward_auth;
pub mod front_proxy;
mod proxy;
pub mod reject;
mod traced;

use access::AccessInfo;

use crate::app::App;
use crate::cache::CacheStatus;
use crate::config::Mode;
use crate::http::limits::ConnectionSlot;
use crate::http::Body;
use crate::introspection::client::IntrospectError;
use crate::upstream::forward::{ForwardError, Peer};
use forward_auth::forward_auth_check;
use http::{Request, Response};
use hyper::body::Incoming;
use proxy::authorize_and_forward;
use reject::{grpc_rejection_response, is_grpc, rejection_response, ProxyError};
use tracing::{debug, warn};

/// Outer handler: runs the request path, turns any error into a response,
/// and writes exactly one access log line. `slot` is the connection's
/// `limits.max_connections` permit, for an upgrade to take over. With
/// `[tracing]` on, all of it runs inside the request span.
pub async fn handle(
    app: &App,
    req: Request<Incoming>,
    peer: &Peer,
    slot: &ConnectionSlot,
) -> Response<Body> {
    match &app.otel {
        None => respond(app, req, peer, slot).await,
        Some(otel) => {
            let span = traced::request_span(otel, app, &req);
            otel.run(span, respond(app, req, peer, slot)).await
        }
    }
}

async fn respond(
    app: &App,
    req: Request<Incoming>,
    peer: &Peer,
    slot: &ConnectionSlot,
) -> Response<Body> {
    let started = crate::resilience::clock::stopwatch();
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
        Mode::ForwardAuth => forward_auth_check(app, &settings, req, peer, &mut info).await,
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
    let (method, path) = info.original.take().unwrap_or((method, path));
    record(
        app,
        &settings,
        &method,
        &path,
        response.status(),
        info,
        started.elapsed(),
    );
    response
}

/// The one access log line (unless `log.access = false`) and the request
/// metrics, for an HTTP request and for a gRPC ext_authz `Check` alike. The
/// original method and path in forward-auth mode; the token only as its
/// fingerprint.
fn record(
    app: &App,
    settings: &crate::config::Settings,
    method: &http::Method,
    path: &str,
    status: http::StatusCode,
    info: AccessInfo,
    elapsed: std::time::Duration,
) {
    // The request's own settings snapshot, not a second load: one request,
    // one configuration, and no extra atomic load on the hot path.
    if settings.log_access {
        access_line(method, path, status, &info, elapsed);
    }
    traced::finish(method, path, status, &info);
    app.metrics.observe_request(info.route, status, elapsed);
}

fn access_line(
    method: &http::Method,
    path: &str,
    status: http::StatusCode,
    info: &AccessInfo,
    elapsed: std::time::Duration,
) {
    let fields = crate::ops::logfmt::AccessFields {
        method: method.as_str(),
        path,
        status: status.as_u16(),
        route: info.route.as_deref().unwrap_or("-"),
        // Whole microseconds, so the field prints as e.g. 4.234, not 4.233988999999999.
        latency_ms: elapsed.as_micros() as f64 / 1000.0,
        cache: info.cache.map(CacheStatus::as_str).unwrap_or("-"),
        subject: info.subject.as_deref().unwrap_or("-"),
        token: info.fingerprint.as_deref().unwrap_or("-"),
        binding: info
            .binding
            .map(crate::policy::binding::Binding::as_str)
            .unwrap_or("-"),
    };
    // The text format's line by hand (the same bytes, a tenth of the work);
    // the event for JSON and any other subscriber.
    if !crate::ops::logfmt::write_access(&fields) {
        crate::ops::logfmt::access_event(&fields);
    }
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
        | ProxyError::MethodOverride(_)
        | ProxyError::Binding(..)
        | ProxyError::ClientCert(_)
        | ProxyError::ExtAuthz(_) => debug!(reason = %err, token, "request rejected"),
    }
}
