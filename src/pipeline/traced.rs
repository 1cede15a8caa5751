//! The request span (`[tracing]`): made before the request runs, filled in
//! from what the access line records once it is answered. Never the token
//! (its fingerprint neither) and never the query string.

use super::access::AccessInfo;
use crate::app::App;
use crate::config::Mode;
use crate::ops::otel::{self, Entry, Otel};
use http::{Request, StatusCode};

/// The span of one HTTP request (proxy or forward-auth mode), child of the
/// caller's `traceparent`.
pub(super) fn request_span<B>(otel: &Otel, app: &App, req: &Request<B>) -> tracing::Span {
    let entry = match app.settings.load().mode {
        Mode::Proxy => Entry::Proxy,
        Mode::ForwardAuth => Entry::ForwardAuth,
    };
    otel.request_span(entry, |name| {
        req.headers().get(name).and_then(|v| v.to_str().ok())
    })
}

/// Records the outcome on the request span, if the request is traced:
/// method, path (no query), status, route, decision, cache status, binding.
pub(super) fn finish(method: &http::Method, path: &str, status: StatusCode, info: &AccessInfo) {
    otel::record_request(|span| {
        span.record("http.request.method", method.as_str());
        span.record("url.path", path);
        span.record("http.response.status_code", status.as_u16());
        if let Some(route) = &info.route {
            span.record("tokengate.route", route.as_str());
        }
        span.record("tokengate.decision", decision(info.authorized, status));
        if let Some(cache) = info.cache {
            span.record("tokengate.cache", cache.as_str());
        }
        if let Some(binding) = info.binding {
            span.record("tokengate.binding", binding.as_str());
        }
        if status.is_server_error() {
            span.record("otel.status_code", "error");
        }
    });
}

/// What was decided: `allow` (then the status is the upstream's, or the
/// forward-auth 200), `deny` (401/403: no or a refused token, a policy or
/// binding failure), `unavailable` (the AS or its keys could not be asked:
/// 503), `reject` (a request refused before or beside the token: 400, 405, 413…).
fn decision(authorized: bool, status: StatusCode) -> &'static str {
    match status {
        _ if authorized => "allow",
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "deny",
        s if s.is_server_error() => "unavailable",
        _ => "reject",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        assert_eq!(decision(true, StatusCode::BAD_GATEWAY), "allow");
        assert_eq!(decision(false, StatusCode::UNAUTHORIZED), "deny");
        assert_eq!(decision(false, StatusCode::FORBIDDEN), "deny");
        assert_eq!(
            decision(false, StatusCode::SERVICE_UNAVAILABLE),
            "unavailable"
        );
        assert_eq!(decision(false, StatusCode::BAD_REQUEST), "reject");
    }
}
