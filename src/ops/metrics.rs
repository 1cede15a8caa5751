//! Prometheus metrics (`prometheus-client`), served by the admin listener at
//! `/metrics`. Every name starts with `tokengate_`; counters end in `_total`
//! (the crate appends it), durations are histograms in `_seconds`.
//!
//! The hot path does no allocation for labels: label values are `&'static str`
//! or the route name the access log already owns (moved in, not copied), and
//! the cache bumps prebuilt counter handles ([`CacheCounters`]).

use crate::cache::CacheCounters;
use crate::introspection::client::{IntrospectError, Introspection};
use crate::policy::binding::dpop::ProofError;
use crate::policy::binding::{Binding, BindingError};
use crate::resilience::breaker::BreakerState;
use crate::upstream::forward::ForwardError;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

/// `Content-Type` of the classic Prometheus text format (0.0.4).
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// `Content-Type` of OpenMetrics text, sent when the scraper asks for it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request latencies: 1 ms … ~16 s. Proxy latency includes the upstream's.
const REQUEST_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Introspection latencies: the AS call only, bounded by `introspection.timeout`.
const INTROSPECTION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// HTTP status class, as a label value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct StatusClass(u16);

impl StatusClass {
    pub fn of(status: http::StatusCode) -> Self {
        Self(status.as_u16() / 100)
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self.0 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `routes[N]` (position in the config), `default`, or `none` when the
    /// request was rejected before a route was chosen.
    pub route: Cow<'static, str>,
    pub status: StatusClass,
}

/// An issuer's name as a label value: `default` (`[introspection]`) or the
/// `[issuers.<name>]` key. Built once per issuer, cloned into each series.
pub type IssuerName = Cow<'static, str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
    issuer: IssuerName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: IssuerName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerCacheLabels {
    cache: &'static str,
    issuer: IssuerName,
}

/// `tokengate_jwt_checks_total`: per kind and issuer (whose keys checked it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JwtCheckLabels {
    kind: &'static str,
    issuer: IssuerName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
}

/// `tokengate_dpop_proofs_total`: per proof, not per issuer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProofLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

fn introspection_histogram() -> Histogram {
    Histogram::new(INTROSPECTION_BUCKETS)
}

/// Every outcome of `tokengate_introspections_total`, created at 0 per issuer.
const INTROSPECTION_OUTCOMES: [&str; 12] = [
    "active",
    "inactive",
    "timeout",
    "connect",
    "unauthorized",
    "status",
    "token_rejected",
    "refused",
    "invalid_response",
    "no_endpoint",
    "circuit_open",
    "keys_unavailable",
];

/// One issuer's metric handles ([`Metrics::issuer`]): the hot path bumps
/// these without building labels, except the outcome counter (one lookup
/// per AS call, which costs far more).
#[derive(Clone)]
pub struct IssuerMetrics {
    issuer: IssuerName,
    introspections: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    /// For [`crate::cache::TokenCache::get_or_load_counted`].
    pub cache: CacheCounters,
    breaker_state: Gauge,
    ready: Gauge,
}

impl std::fmt::Debug for IssuerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerMetrics")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl IssuerMetrics {
    /// Times one introspection call and counts its outcome.
    pub async fn time_introspection<F>(&self, call: F) -> Result<Introspection, IntrospectError>
    where
        F: Future<Output = Result<Introspection, IntrospectError>>,
    {
        let started = crate::resilience::clock::stopwatch();
        let result = call.await;
        self.duration.observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(i) if i.active => "active",
            Ok(_) => "inactive",
            Err(e) => e.kind(),
        };
        self.count(outcome);
        result
    }

    fn count(&self, outcome: &'static str) {
        self.introspections
            .get_or_create(&OutcomeLabels {
                outcome,
                issuer: self.issuer.clone(),
            })
            .inc();
    }

    /// A lookup the open circuit breaker refused: no call was made, so it
    /// is counted (outcome `circuit_open`) but not timed.
    pub fn introspection_refused(&self) {
        self.count(IntrospectError::CircuitOpen.kind());
    }

    /// The circuit breaker's state as `tokengate_breaker_state`: 0 closed,
    /// 1 half-open, 2 open.
    pub fn set_breaker_state(&self, state: BreakerState) {
        self.breaker_state.set(match state {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        });
    }

    /// `tokengate_issuer_ready` (at scrape time).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }
}

/// All of tokengate's metrics and the registry that renders them.
pub struct Metrics {
    /// Tells this instance's series apart in [`LAST_SERIES`] (tests run many).
    id: u64,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RequestLabels>,
    introspections: Family<OutcomeLabels, Counter>,
    introspection_duration: HistogramFamily<IssuerLabels>,
    cache_hits: Family<IssuerCacheLabels, Counter>,
    cache_misses: Family<IssuerCacheLabels, Counter>,
    cache_coalesced: Family<IssuerLabels, Counter>,
    cache_entries: Family<CacheLabels, Gauge>,
    stale_answers: Counter,
    breaker_state: Family<IssuerLabels, Gauge>,
    issuer_ready: Family<IssuerLabels, Gauge>,
    open_connections: Gauge,
    upstream_errors: Family<KindLabels, Counter>,
    purges: Counter,
    reloads: Family<ResultLabels, Counter>,
    shared_cache: Family<KindLabels, Counter>,
    purge_messages: Family<KindLabels, Counter>,
    binding_refusals: Family<ReasonLabels, Counter>,
    jwt_checks: Family<JwtCheckLabels, Counter>,
    dpop_proofs: Family<ProofLabels, Counter>,
    dpop_replays: Counter,
    /// The fleet's own counters as last copied in, so a scrape adds only the
    /// difference (the fleet layer counts with plain atomics).
    fleet_seen: std::sync::Mutex<crate::cache::fleet::FleetStats>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The request series a thread counted last, for one [`Metrics`]: requests
/// on a keep-alive connection mostly repeat their route and status class, and
/// the two label lookups (a SipHash of the labels each) were ~500 of a cache
/// hit's instructions (callgrind, BENCHMARKS.md). The handles share their
/// values with the families (series are never removed), so a hit here counts
/// exactly what the lookups would have.
struct LastSeries {
    owner: u64,
    labels: RequestLabels,
    count: Counter,
    duration: Histogram,
}

thread_local! {
    static LAST_SERIES: std::cell::RefCell<Option<LastSeries>> =
        const { std::cell::RefCell::new(None) };
}

static METRICS_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tokengate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route and status class",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(request_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head, by route and status class",
            request_duration.clone(),
        );
        let introspections = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "introspections",
            "Introspection calls to the authorization server, by outcome (active, inactive, or the error kind; token_rejected: HTTP 400 about the token, answered 401 like inactive; refused: another 4xx that may depend on the token, 503 but not an AS failure; circuit_open: refused by the open circuit breaker without a call) and issuer",
            introspections.clone(),
        );
        let introspection_duration: HistogramFamily<IssuerLabels> =
            Family::new_with_constructor(introspection_histogram);
        registry.register(
            "introspection_duration_seconds",
            "Duration of introspection calls, whatever their outcome, by issuer",
            introspection_duration.clone(),
        );

        let cache_hits = Family::<IssuerCacheLabels, Counter>::default();
        registry.register(
            "cache_hits",
            "Lookups answered by the positive or negative cache, by issuer (each issuer has its own cache partition)",
            cache_hits.clone(),
        );
        let cache_misses = Family::<IssuerCacheLabels, Counter>::default();
        registry.register(
            "cache_misses",
            "Lookups the cache could not answer (positive: this request called the AS), by issuer",
            cache_misses.clone(),
        );
        let cache_coalesced = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "cache_coalesced",
            "Requests answered by another request's in-flight introspection call (single-flight), by issuer",
            cache_coalesced.clone(),
        );
        let cache_entries = Family::<CacheLabels, Gauge>::default();
        registry.register(
            "cache_entries",
            "Entries in the positive and negative caches (updated at scrape time)",
            cache_entries.clone(),
        );

        let stale_answers = Counter::default();
        registry.register(
            "stale_answers",
            "Requests allowed on a cached answer past its TTL because the AS failed (stale_if_error)",
            stale_answers.clone(),
        );
        let breaker_state = Family::<IssuerLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Introspection circuit breaker, by issuer: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        let issuer_ready = Family::<IssuerLabels, Gauge>::default();
        registry.register(
            "issuer_ready",
            "Whether an issuer's authorization server can be asked (1) or its requests get 503 (0: endpoint not discovered, breaker open, or a required probe not passed yet); updated at scrape time. Only the default issuer's state is /readyz's",
            issuer_ready.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections currently open on the proxy listener (upgraded tunnels included; counted against limits.max_connections; 0 when unlimited)",
            open_connections.clone(),
        );
        let upstream_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests that failed on the way to the upstream, by kind",
            upstream_errors.clone(),
        );
        let purges = Counter::default();
        registry.register(
            "purges",
            "Tokens removed from the caches through POST /purge",
            purges.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP), by result",
            reloads.clone(),
        );
        let shared_cache = Family::<KindLabels, Counter>::default();
        registry.register(
            "shared_cache_operations",
            "Redis L2 ([cache.shared]) operations by kind: hit, miss, garbage (unreadable value), refused (a valid value past its MAC'd expiry or older than the token's purge: a replay?), error, skipped (breaker open), write",
            shared_cache.clone(),
        );
        let purge_messages = Family::<KindLabels, Counter>::default();
        registry.register(
            "purge_messages",
            "Fleet-wide purge messages on the Redis channel, sent and received",
            purge_messages.clone(),
        );
        let dpop_proofs = Family::<ProofLabels, Counter>::default();
        registry.register(
            "dpop_proofs",
            "DPoP proofs checked, by outcome: accepted, or why refused (missing, multiple, malformed, typ, alg, jwk, signature, htm, htu, iat, jti, ath, key_mismatch, replay, nonce, replay_check_unavailable)",
            dpop_proofs.clone(),
        );
        let dpop_replays = Counter::default();
        registry.register(
            "dpop_replays",
            "DPoP proofs refused because they had been used before (here, or with [cache.shared] at any replica)",
            dpop_replays.clone(),
        );
        let binding_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "binding_refusals",
            "Sender-constrained tokens refused by the binding check, by reason: dpop_required (a DPoP-bound token sent as Bearer), not_dpop_bound, unsupported_cnf, certificate_missing, certificate_mismatch (RFC 8705 cnf x5t#S256), invalid_dpop_proof, use_dpop_nonce, replay_check_unavailable",
            binding_refusals.clone(),
        );
        for reason in crate::policy::binding::BindingError::REASONS {
            drop(binding_refusals.get_or_create(&ReasonLabels { reason }));
        }
        let jwt_checks = Family::<JwtCheckLabels, Counter>::default();
        registry.register(
            "jwt_checks",
            "JWT access tokens checked locally ([jwt] or [issuers.<name>.jwt] enabled), by issuer: kind=\"valid\", or why one was refused (no AS call; kind=\"keys_unavailable\" is a 503; kind=\"unknown_issuer\" on a route admitting several issuers is counted under its first)",
            jwt_checks.clone(),
        );
        // Series that exist from the start, so that `rate()` and alerts see a 0
        // before the first event instead of no series at all (the issuer
        // series: `Metrics::issuer`).
        for kind in ["connect", "timeout", "failed", "bad_target", "client_body"] {
            drop(upstream_errors.get_or_create(&KindLabels { kind }));
        }
        for result in ["ok", "error"] {
            drop(reloads.get_or_create(&ResultLabels { result }));
        }
        drop(dpop_proofs.get_or_create(&ProofLabels {
            outcome: "accepted",
        }));
        Self {
            id: METRICS_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            registry,
            requests,
            request_duration,
            introspections,
            introspection_duration,
            cache_hits,
            cache_misses,
            cache_coalesced,
            cache_entries,
            stale_answers,
            breaker_state,
            issuer_ready,
            open_connections,
            upstream_errors,
            purges,
            reloads,
            shared_cache,
            purge_messages,
            binding_refusals,
            jwt_checks,
            dpop_proofs,
            dpop_replays,
            fleet_seen: std::sync::Mutex::new(crate::cache::fleet::FleetStats::default()),
        }
    }

    /// The binding stage's result: DPoP proofs by outcome, replays, and
    /// refusals by reason.
    pub fn observe_binding(&self, result: &Result<Binding, BindingError>) {
        let proof = |outcome: &'static str| {
            self.dpop_proofs
                .get_or_create(&ProofLabels { outcome })
                .inc();
        };
        let e = match result {
            Ok(Binding::Dpop) => return proof("accepted"),
            Ok(Binding::Mtls | Binding::None) => return,
            Err(e) => e,
        };
        self.binding_refusals
            .get_or_create(&ReasonLabels { reason: e.reason() })
            .inc();
        match e {
            BindingError::Proof(p) => {
                if *p == ProofError::Replayed {
                    self.dpop_replays.inc();
                }
                proof(p.reason());
            }
            BindingError::UseNonce(_) => proof("nonce"),
            BindingError::ReplayCheckUnavailable => proof("replay_check_unavailable"),
            BindingError::DpopRequired
            | BindingError::NotDpopBound
            | BindingError::Unsupported
            | BindingError::CertificateMissing
            | BindingError::CertificateMismatch => {}
        }
    }

    /// At scrape time, from `limits::ConnectionLimit::in_use`.
    pub fn set_open_connections(&self, n: usize) {
        self.open_connections
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Copies the fleet layer's counters in (at scrape time).
    pub fn set_fleet_stats(&self, now: crate::cache::fleet::FleetStats) {
        let mut seen = self.fleet_seen.lock().unwrap_or_else(|e| e.into_inner());
        let add = |family: &Family<KindLabels, Counter>, kind, now: u64, before: u64| {
            family
                .get_or_create(&KindLabels { kind })
                .inc_by(now.saturating_sub(before));
        };
        let sc = &self.shared_cache;
        add(sc, "hit", now.l2_hits, seen.l2_hits);
        add(sc, "miss", now.l2_misses, seen.l2_misses);
        add(sc, "garbage", now.l2_garbage, seen.l2_garbage);
        add(sc, "error", now.l2_errors, seen.l2_errors);
        add(sc, "skipped", now.l2_skipped, seen.l2_skipped);
        add(sc, "write", now.l2_writes, seen.l2_writes);
        add(sc, "refused", now.l2_refused, seen.l2_refused);
        let pm = &self.purge_messages;
        add(pm, "sent", now.purges_sent, seen.purges_sent);
        add(pm, "received", now.purges_received, seen.purges_received);
        *seen = now;
    }

    /// One issuer's prebuilt handles (introspection outcomes and latency,
    /// cache counters, breaker state), its series created at 0. Called once
    /// per issuer when the app is built.
    pub fn issuer(&self, issuer: IssuerName) -> IssuerMetrics {
        for outcome in INTROSPECTION_OUTCOMES {
            drop(self.introspections.get_or_create(&OutcomeLabels {
                outcome,
                issuer: issuer.clone(),
            }));
        }
        let cache = |f: &Family<IssuerCacheLabels, Counter>, cache| {
            f.get_or_create(&IssuerCacheLabels {
                cache,
                issuer: issuer.clone(),
            })
            .clone()
        };
        let labels = IssuerLabels {
            issuer: issuer.clone(),
        };
        IssuerMetrics {
            cache: CacheCounters {
                positive_hit: cache(&self.cache_hits, "positive"),
                positive_miss: cache(&self.cache_misses, "positive"),
                negative_hit: cache(&self.cache_hits, "negative"),
                negative_miss: cache(&self.cache_misses, "negative"),
                coalesced: self.cache_coalesced.get_or_create(&labels).clone(),
            },
            duration: self.introspection_duration.get_or_create(&labels).clone(),
            breaker_state: self.breaker_state.get_or_create(&labels).clone(),
            ready: self.issuer_ready.get_or_create(&labels).clone(),
            introspections: self.introspections.clone(),
            issuer,
        }
    }

    /// One answered request. `route` is moved in, so the label costs nothing
    /// unless this route/status pair is new.
    pub fn observe_request(
        &self,
        route: Option<String>,
        status: http::StatusCode,
        elapsed: Duration,
    ) {
        let labels = RequestLabels {
            route: route.map_or(Cow::Borrowed("none"), Cow::Owned),
            status: StatusClass::of(status),
        };
        let secs = elapsed.as_secs_f64();
        LAST_SERIES.with(|cell| {
            let Ok(mut last) = cell.try_borrow_mut() else {
                self.requests.get_or_create(&labels).inc();
                self.request_duration.get_or_create(&labels).observe(secs);
                return;
            };
            if let Some(s) = last
                .as_ref()
                .filter(|s| s.owner == self.id && s.labels == labels)
            {
                s.count.inc();
                s.duration.observe(secs);
                return;
            }
            let count = Counter::clone(&self.requests.get_or_create(&labels));
            let duration = Histogram::clone(&self.request_duration.get_or_create(&labels));
            count.inc();
            duration.observe(secs);
            *last = Some(LastSeries {
                owner: self.id,
                labels,
                count,
                duration,
            });
        });
    }

    pub fn upstream_error(&self, e: &ForwardError) {
        let kind = match e {
            ForwardError::Connect(_) => "connect",
            ForwardError::Timeout(_) => "timeout",
            ForwardError::Failed(_) => "failed",
            ForwardError::BadTarget => "bad_target",
            // The client's body broke mid-stream: counted so a spike is visible,
            // under its own kind so it is not mistaken for an upstream outage.
            ForwardError::BadBody(_) => "client_body",
            ForwardError::UnexpectedUpgrade(_) => "unexpected_upgrade",
        };
        self.upstream_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// One local JWT check: `"valid"` or the refusal's kind
    /// (`introspection::jwt::JwtError::kind`).
    pub fn jwt_checked(&self, issuer: &IssuerName, kind: &'static str) {
        self.jwt_checks
            .get_or_create(&JwtCheckLabels {
                kind,
                issuer: issuer.clone(),
            })
            .inc();
    }

    pub fn stale_answer(&self) {
        self.stale_answers.inc();
    }

    pub fn purged(&self) {
        self.purges.inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn set_cache_entries(&self, positive: u64, negative: u64) {
        let set = |cache, n: u64| {
            self.cache_entries
                .get_or_create(&CacheLabels { cache })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("positive", positive);
        set("negative", negative);
    }

    /// Renders every metric; `openmetrics` picks OpenMetrics text over the
    /// classic Prometheus text format.
    pub fn render(&self, openmetrics: bool) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let rendered = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        // Writing to a String cannot fail; an encoder bug would, and a partial
        // scrape is worse than an empty one.
        if rendered.is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_render() {
        let m = Metrics::new();
        m.observe_request(
            Some("routes[0]".into()),
            http::StatusCode::NOT_FOUND,
            Duration::from_millis(3),
        );
        m.observe_request(None, http::StatusCode::BAD_REQUEST, Duration::ZERO);
        let default = m.issuer(Cow::Borrowed("default"));
        default.cache.positive_hit.inc();
        default.set_breaker_state(BreakerState::Open);
        m.issuer(Cow::Borrowed("partners"))
            .set_breaker_state(BreakerState::Closed);
        let text = m.render(false);
        for want in [
            "# TYPE tokengate_requests_total counter",
            "tokengate_requests_total{route=\"routes[0]\",status=\"4xx\"} 1",
            "tokengate_requests_total{route=\"none\",status=\"4xx\"} 1",
            "tokengate_request_duration_seconds_bucket{route=\"routes[0]\",status=\"4xx\",le=\"0.005\"} 1",
            "tokengate_cache_hits_total{cache=\"positive\",issuer=\"default\"} 1",
            "tokengate_cache_misses_total{cache=\"negative\",issuer=\"partners\"} 0",
            "tokengate_introspections_total{outcome=\"circuit_open\",issuer=\"partners\"} 0",
            "tokengate_breaker_state{issuer=\"default\"} 2",
            "tokengate_breaker_state{issuer=\"partners\"} 0",
            "tokengate_stale_answers_total 0",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(m.render(true).ends_with("# EOF\n"));
    }

    /// The per-thread last series counts into its own instance and series
    /// only: two instances (as two gates in one test process) and changing
    /// routes and status classes, interleaved on one thread.
    #[test]
    fn repeated_series_count_exactly() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let hit = |m: &Metrics, route: &str, status: u16| {
            m.observe_request(
                Some(route.to_owned()),
                http::StatusCode::from_u16(status).unwrap(),
                Duration::from_millis(1),
            )
        };
        for _ in 0..3 {
            hit(&a, "routes[0]", 200);
        }
        hit(&b, "routes[0]", 200);
        hit(&b, "routes[0]", 200);
        hit(&a, "routes[0]", 200);
        hit(&a, "routes[1]", 200);
        hit(&a, "routes[0]", 503);
        hit(&a, "routes[0]", 204);
        let (ta, tb) = (a.render(false), b.render(false));
        for want in [
            "tokengate_requests_total{route=\"routes[0]\",status=\"2xx\"} 5",
            "tokengate_requests_total{route=\"routes[1]\",status=\"2xx\"} 1",
            "tokengate_requests_total{route=\"routes[0]\",status=\"5xx\"} 1",
            "tokengate_request_duration_seconds_count{route=\"routes[0]\",status=\"2xx\"} 5",
        ] {
            assert!(ta.contains(want), "missing {want:?} in:\n{ta}");
        }
        for want in [
            "tokengate_requests_total{route=\"routes[0]\",status=\"2xx\"} 2",
            "tokengate_request_duration_seconds_count{route=\"routes[0]\",status=\"2xx\"} 2",
        ] {
            assert!(tb.contains(want), "missing {want:?} in:\n{tb}");
        }
        assert!(!tb.contains("routes[1]"), "{tb}");
    }
}
