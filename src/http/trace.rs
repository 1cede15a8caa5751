//! The traced request's context (`[tracing]`), for every layer that makes a
//! call on a request's behalf: child spans (introspection, JWKS, Redis, the
//! upstream) and W3C `traceparent` propagation on outgoing requests. A leaf,
//! so that the introspection client, the fleet cache and the upstream call can
//! use it; `ops::otel` builds the tracer and starts a request's [`scope`].
//!
//! When the request is not traced (tracing off, the default), there is no
//! scope: every function here finds none in the task-local and returns at
//! once (one thread-local read), and no span is made.
//!
//! The spans belong to the tracer's own subscriber (a `Dispatch`), never the
//! global log subscriber; the request's `Dispatch` and span travel with the
//! request future in a tokio task-local. The request path spawns no task, so
//! every call it makes sees them.

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::future::Future;
use tracing::field::Empty;
use tracing::{dispatcher, Dispatch, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span the tracer exports; its subscriber takes only these.
pub const TARGET: &str = "tokengate::otel";

/// The request being traced: what the task-local carries.
struct Traced {
    dispatch: Dispatch,
    span: Span,
}

tokio::task_local! {
    static REQUEST: Traced;
}

/// Runs one request's future inside `span` (made by `dispatch`), with the
/// task-local the functions below read.
pub async fn scope<F: Future>(dispatch: Dispatch, span: Span, fut: F) -> F::Output {
    let traced = Traced {
        dispatch,
        span: span.clone(),
    };
    REQUEST.scope(traced, fut.instrument(span)).await
}

/// A call made on a request's behalf (a child span).
#[derive(Clone, Copy, Debug)]
pub enum Call {
    /// The RFC 7662 call to the authorization server.
    Introspection,
    /// Fetching the issuer's JWKS.
    Jwks,
    /// One exchange with the fleet's Redis (the operation's name).
    Redis(&'static str),
    /// The call to the protected service.
    Upstream,
}

/// A child span of the traced request for `call`, under the span current in
/// the request (so a JWKS fetch during an introspection call nests under
/// it); `None` when the request is not traced (tracing off), at the cost of
/// one thread-local read.
pub fn child(call: Call) -> Option<Span> {
    REQUEST
        .try_with(|t| {
            dispatcher::with_default(&t.dispatch, || {
                // The parent is linked on the OpenTelemetry side only: a
                // span with a registry parent hands that parent back, when it
                // closes, to the *default* dispatcher (the log subscriber's),
                // so ours would never see the parent close or export it.
                let parent = Span::current().context();
                let span = make(call);
                let _ = span.set_parent(parent);
                span
            })
        })
        .ok()
}

/// The span for `call` (a root in the registry; see [`child`]). The three
/// HTTP calls share one callsite, named through `otel.name`.
fn make(call: Call) -> Span {
    let http_call = |name: &'static str| {
        tracing::info_span!(
            target: TARGET,
            parent: None,
            "http call",
            otel.name = name,
            otel.kind = "client",
            http.response.status_code = Empty,
            "error.type" = Empty,
            otel.status_code = Empty,
        )
    };
    match call {
        Call::Introspection => http_call("introspection"),
        Call::Jwks => http_call("jwks fetch"),
        Call::Upstream => http_call("upstream"),
        Call::Redis(op) => tracing::info_span!(
            target: TARGET,
            parent: None,
            "redis",
            otel.name = format!("redis {op}").as_str(),
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = op,
            "error.type" = Empty,
            otel.status_code = Empty,
        ),
    }
}

/// Runs `fut` inside `span` if there is one.
pub async fn within<F: Future>(span: Option<&Span>, fut: F) -> F::Output {
    match span {
        Some(span) => fut.instrument(span.clone()).await,
        None => fut.await,
    }
}

/// Records the outcome of a child span's call: an HTTP status (a status of
/// 400 or more marks the span as an error), or a failure's kind (never its
/// message, which may quote what the peer sent).
pub fn record_outcome(span: Option<&Span>, status: Option<u16>, error: Option<&str>) {
    let Some(span) = span else {
        return;
    };
    if let Some(status) = status {
        span.record("http.response.status_code", status);
        if status >= 400 {
            span.record("otel.status_code", "error");
        }
    }
    if let Some(kind) = error {
        span.record("error.type", kind);
        span.record("otel.status_code", "error");
    }
}

/// Puts the `traceparent` (and `tracestate`) of `span` on an outgoing
/// request, replacing any the client sent (its own is our parent now).
pub fn inject_span(span: &Span, headers: &mut http::HeaderMap) {
    REQUEST
        .try_with(|_| {
            let cx = span.context();
            headers.remove("traceparent");
            headers.remove("tracestate");
            TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
        })
        .ok();
}

/// Puts the `traceparent` of the span current in the traced request on an
/// outgoing request (the AS and JWKS calls, made deep inside their clients);
/// nothing when the request is not traced.
pub fn inject(headers: &mut http::HeaderMap) {
    REQUEST
        .try_with(|t| {
            let cx = dispatcher::with_default(&t.dispatch, || Span::current().context());
            headers.remove("traceparent");
            headers.remove("tracestate");
            TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
        })
        .ok();
}

/// Lets the pipeline record on the request span (route, decision, status…)
/// when the request is traced.
pub fn record_request(f: impl FnOnce(&Span)) {
    let _ = REQUEST.try_with(|t| f(&t.span));
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes an empty `tracestate` when there is none.
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
