//! Operating the gate: what it tells the operator.
//!
//! - [`metrics`]: Prometheus metrics (`prometheus-client`), bumped by the pipeline,
//!   the cache and around each introspection call.
//! - [`readiness`]: `/readyz`'s checks (breaker not open, start-up probe done, not draining).
//! - [`logfmt`]: the log line's timestamp and field formatter: the same text as
//!   `tracing-subscriber`'s defaults, for less work per access line.
//! - [`otel`]: OpenTelemetry traces (`[tracing]`): the request span and its
//!   children, OTLP export, `traceparent` propagation; its settings in `otel/settings`.

pub mod logfmt;
pub mod metrics;
pub mod otel;
pub mod readiness;
