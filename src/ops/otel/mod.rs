//! OpenTelemetry traces (`[tracing]`): one span per request with child spans
//! for the calls it makes (introspection, JWKS, Redis, the upstream), exported
//! over OTLP/gRPC, and W3C `traceparent`/`tracestate` propagation.
//!
//! Off by default, and then free: the App holds no [`Otel`], `pipeline`
//! creates no span, and the helpers the calls use (`crate::http::trace`:
//! `child`, `inject`, `record_request`) find no traced request in the
//! task-local and return at once (one thread-local read).
//!
//! Spans are `tracing` spans turned into OpenTelemetry spans by
//! `tracing-opentelemetry`, but in a subscriber of their own (a `Dispatch`
//! owned by the [`Otel`], not the global one): the log subscriber never sees
//! or tracks them (no per-span cost on the log side), nothing else in the
//! process is exported, and two gates in one process (the tests) each export
//! to their own collector. The request's `Dispatch` and span travel with the
//! request future in a tokio task-local ([`Otel::run`], `http::trace::scope`);
//! the request path spawns no task, so every call it makes sees them.
//!
//! What is recorded is listed in docs/tracing.md; never a token (the request
//! span has the path without its query, which can carry `access_token`).

pub mod settings;

pub use settings::{OtelEnv, RawTracing, Sampling, TracingSettings};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::field::Empty;
use tracing::{dispatcher, Dispatch, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

pub use crate::http::trace::record_request;
use crate::http::trace::TARGET;

/// The longest the final flush may take (the SDK's default for `shutdown`).
const MAX_FLUSH: Duration = Duration::from_secs(5);

/// The running tracer: its own subscriber (registry + OpenTelemetry layer)
/// and the provider whose batch exporter [`Otel::shutdown`] flushes.
#[derive(Clone)]
pub struct Otel(Arc<Inner>);

struct Inner {
    dispatch: Dispatch,
    provider: SdkTracerProvider,
    propagator: TraceContextPropagator,
}

/// Which front door a request came through (the request span's name).
#[derive(Clone, Copy, Debug)]
pub enum Entry {
    Proxy,
    ForwardAuth,
    ExtAuthz,
}

impl Entry {
    fn span_name(self) -> &'static str {
        match self {
            Entry::Proxy => "tokengate proxy",
            Entry::ForwardAuth => "tokengate forward_auth",
            Entry::ExtAuthz => "tokengate ext_authz",
        }
    }
}

impl Otel {
    /// Builds the exporter, the provider and the subscriber. Needs a tokio
    /// runtime (the gRPC channel's worker runs on it); the connection itself
    /// is made lazily, so a collector that is down does not stop the start.
    pub fn start(s: &TracingSettings) -> Result<Self, String> {
        tokio::runtime::Handle::try_current()
            .map_err(|_| "the OTLP exporter needs a tokio runtime".to_owned())?;
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(s.endpoint.clone())
            .with_timeout(s.export_timeout);
        if s.endpoint.starts_with("https://") {
            builder = builder
                .with_tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots());
        }
        let exporter = builder.build().map_err(|e| e.to_string())?;
        let ratio = |r: f64| {
            if r >= 1.0 {
                Sampler::AlwaysOn
            } else if r <= 0.0 {
                Sampler::AlwaysOff
            } else {
                Sampler::TraceIdRatioBased(r)
            }
        };
        let sampler = match s.sampling {
            Sampling::Root(r) => ratio(r),
            Sampling::ParentBased(r) => Sampler::ParentBased(Box::new(ratio(r))),
        };
        let resource = Resource::builder_empty()
            .with_attributes(
                s.resource_attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_service_name(s.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tokengate"))
            // Attributes we do not want on every span, and per-poll timing.
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            // Nothing here reads OpenTelemetry's "current context": the
            // propagation helpers ask the span itself. No attach per poll.
            .with_context_activation(false);
        // Only our spans: with this filter the subscriber declines every other
        // callsite, so its presence does not turn on `debug!`s elsewhere.
        let only_ours =
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE);
        let subscriber = tracing_subscriber::registry().with(only_ours).with(layer);
        tracing::info!(
            endpoint = %s.endpoint,
            service = %s.service_name,
            sampling = ?s.sampling,
            "OpenTelemetry tracing on (OTLP/gRPC)"
        );
        Ok(Self(Arc::new(Inner {
            dispatch: Dispatch::new(subscriber),
            provider,
            propagator: TraceContextPropagator::new(),
        })))
    }

    /// The request span: a server span whose parent is the caller's
    /// `traceparent` (read through `header`), if it sent a valid one.
    pub fn request_span<'h>(&self, entry: Entry, header: impl Fn(&str) -> Option<&'h str>) -> Span {
        let parent = self
            .0
            .propagator
            .extract(&Headers(header, std::marker::PhantomData));
        let span = dispatcher::with_default(&self.0.dispatch, || {
            tracing::info_span!(
                target: TARGET,
                parent: None,
                "request",
                otel.name = entry.span_name(),
                otel.kind = "server",
                http.request.method = Empty,
                url.path = Empty,
                http.response.status_code = Empty,
                tokengate.route = Empty,
                tokengate.decision = Empty,
                tokengate.cache = Empty,
                tokengate.issuer = Empty,
                tokengate.binding = Empty,
                otel.status_code = Empty,
            )
        });
        // Only fails when the span is disabled, which ours never are.
        let _ = span.set_parent(parent);
        span
    }

    /// Runs one request's future inside `span`, with the task-local the
    /// helpers below read.
    pub async fn run<F: Future>(&self, span: Span, fut: F) -> F::Output {
        crate::http::trace::scope(self.0.dispatch.clone(), span, fut).await
    }

    /// Flushes the spans still queued and stops the exporter (graceful drain:
    /// the last requests' spans are not lost), waiting at most `budget` (and
    /// never more than the SDK's own 5 s): spans a hung collector has not
    /// taken by then are lost rather than the exit delayed. The flush blocks
    /// on the export, which the runtime drives: it runs on the blocking pool
    /// while this task waits, so a current-thread runtime does not deadlock.
    pub async fn shutdown(&self, budget: Duration) {
        let provider = self.0.provider.clone();
        let budget = budget.min(MAX_FLUSH);
        match tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(budget)).await {
            Ok(Ok(())) => tracing::debug!("OpenTelemetry spans flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot flush the last OpenTelemetry spans"),
            Err(e) => tracing::warn!(error = %e, "cannot flush the last OpenTelemetry spans"),
        }
    }
}

/// `Extractor` over a header lookup (an HTTP request's headers or the
/// header map of an Envoy `CheckRequest`).
struct Headers<'h, F>(F, std::marker::PhantomData<&'h ()>);

/// The longest `tracestate` followed, and its most list-members (W3C Trace
/// Context: at most 32 members; 512 characters is what every hop must
/// propagate). A longer one is dropped whole: the SDK bounds neither, and the
/// caller's `tracestate` is copied into every span of the request, so each
/// queued span (thousands wait when the collector is slow) would hold its own
/// copy, and a batch of them outgrows a collector's 4 MiB gRPC limit, losing
/// the other requests' spans exported with it.
const MAX_TRACESTATE_BYTES: usize = 512;
const MAX_TRACESTATE_MEMBERS: usize = 32;

impl<'h, F: Fn(&str) -> Option<&'h str>> Extractor for Headers<'h, F> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = (self.0)(key)?;
        if key == "tracestate"
            && (value.len() > MAX_TRACESTATE_BYTES
                || value.split(',').count() > MAX_TRACESTATE_MEMBERS)
        {
            return None;
        }
        Some(value)
    }
    fn keys(&self) -> Vec<&str> {
        // The W3C propagator asks for its two fields by name; it never lists.
        Vec::new()
    }
}
