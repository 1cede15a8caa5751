//! The running authorization servers (their settings: `crate::config::issuers`). An [`Issuer`] is one AS with
//! everything that must never be shared with another: its introspection
//! client (endpoint, credentials, TLS), its circuit breaker, its start-up
//! probe and discovery, its metrics, and its **cache partition**
//! ([`Issuer::cache_key`]). [`Issuers`] holds the default one
//! (`[introspection]` / `[discovery]`, named [`DEFAULT_ISSUER`]) and every
//! `[issuers.<name>]`.
//!
//! Which AS is asked about a token is decided by the route
//! (`[[routes]] issuers`, else the default), never by trying each AS in turn:
//! that would send every token to every AS (a leak) and multiply AS load.
//! On a route that admits several, a JWT picks one of them by its `iss`
//! ([`Issuers::pick`]); everything else goes to the route's first.

pub use crate::config::{IssuerSettings, DEFAULT_ISSUER};

use crate::introspection::client::{
    IntrospectError, Introspection, IntrospectionSettings, Introspector, ProbeMode,
};
use crate::introspection::discovery::DiscoverySettings;
use crate::introspection::jwks::Jwks;
use crate::introspection::jwt::{JwtSettings, JwtVerifier, SignedAnswers};
use crate::ops::metrics::{IssuerMetrics, IssuerName};
use crate::resilience::breaker::{Breaker, BreakerState};
use crate::resilience::clock::Clock;
use crate::token::{self, TokenHash};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Domain separation for a named issuer's cache keys.
const PARTITION_LABEL: &[u8] = b"tokengate issuer partition v1\0";

/// One authorization server and the state that is its own.
pub struct Issuer {
    /// `default` or the `[issuers.<name>]` key (metrics label, logs).
    pub name: IssuerName,
    /// The `iss` its answers must carry when they carry one; `None` for the
    /// default issuer, whose answers are checked as before (`[policy]
    /// require_issuer` pins them).
    pub iss: Option<String>,
    pub introspector: Arc<Introspector>,
    /// Its own breaker: one AS failing opens only its own circuit.
    pub breaker: Arc<Breaker>,
    pub probe: ProbeMode,
    /// Set once a start-up probe has succeeded.
    pub probe_ok: Arc<AtomicBool>,
    pub metrics: IssuerMetrics,
    /// Named issuers only (the default one is discovered in `main` and
    /// refreshed by `listen`): where to find the endpoint.
    discovery: Option<DiscoverySettings>,
    /// Timeout and TLS for discovery (the client's own).
    settings: IntrospectionSettings,
    /// `None` for the default issuer: its keys are the plain SHA-256 of the
    /// token, as before several issuers existed (so a rolling upgrade keeps
    /// its L2 entries and purges).
    partition: Option<Vec<u8>>,
    /// Local checks of this issuer's JWT access tokens (`[jwt]` for the
    /// default issuer, `[issuers.<name>.jwt]` for the others), when enabled.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// The `iss` a JWT of this issuer carries, which [`Issuers::pick`]
    /// compares with a token's: its `jwt.issuer` when it has JWT settings,
    /// else the named issuer's `issuer` or the default's `discovery.issuer`.
    pub jwt_iss: Option<String>,
    /// A named issuer's key store and its refresh interval, refreshed by its
    /// own background task (the default issuer's is refreshed by `listen`).
    jwks_refresh: Option<(Arc<Jwks>, Duration)>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("name", &self.name)
            .field("iss", &self.iss)
            .field("introspector", &self.introspector)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// The `[introspection]` / `[discovery]` issuer (no cache partition).
    pub fn is_default(&self) -> bool {
        self.partition.is_none()
    }

    /// The default issuer, around the app's own introspector, breaker and
    /// probe flag (which `listen` and `admin` use directly).
    pub fn default_issuer(
        settings: &IntrospectionSettings,
        introspector: Arc<Introspector>,
        breaker: Arc<Breaker>,
        probe_ok: Arc<AtomicBool>,
        metrics: IssuerMetrics,
        jwt: Option<Arc<JwtVerifier>>,
        jwt_iss: Option<String>,
    ) -> Self {
        Self {
            name: IssuerName::Borrowed(DEFAULT_ISSUER),
            iss: None,
            introspector,
            breaker,
            probe: settings.probe,
            probe_ok,
            metrics,
            discovery: None,
            settings: settings.clone(),
            partition: None,
            jwt,
            jwt_iss,
            jwks_refresh: None,
        }
    }

    /// A named issuer with a client and breaker of its own.
    pub fn named(
        s: &IssuerSettings,
        breaker_failures: u32,
        breaker_open_for: Duration,
        metrics: IssuerMetrics,
        clock: &Arc<dyn Clock>,
    ) -> Self {
        let (introspector, jwt, jwks) = local_checks(&s.introspection, s.jwt.as_ref(), clock);
        let jwt_iss = Some(s.jwt.as_ref().map_or(&s.iss, |j| &j.issuer).clone());
        let jwks_refresh = jwks.zip(s.jwt.as_ref().map(|j| j.jwks_refresh_interval));
        let mut partition = PARTITION_LABEL.to_vec();
        partition.extend_from_slice(s.name.as_bytes());
        // Names cannot hold a NUL (`valid_name`): the separator is unambiguous.
        partition.push(0);
        Self {
            name: IssuerName::Owned(s.name.clone()),
            iss: Some(s.iss.clone()),
            introspector: Arc::new(introspector),
            breaker: Arc::new(
                Breaker::new(breaker_failures, breaker_open_for)
                    .logged_as(format!("authorization server of issuer {}", s.name)),
            ),
            probe: s.introspection.probe,
            probe_ok: Arc::new(AtomicBool::new(false)),
            metrics,
            discovery: s.discovery.clone(),
            settings: s.introspection.clone(),
            partition: Some(partition),
            jwt,
            jwt_iss,
            jwks_refresh,
        }
    }

    /// This issuer's cache key for a token (given as its SHA-256): the
    /// default issuer's is the SHA-256 itself; a named issuer's is
    /// SHA-256(label ‖ name ‖ 0 ‖ SHA-256(token)). Different for every
    /// issuer, so an answer cached for one (in L1, in the Redis L2, in the
    /// negative cache, in a single flight) can never be found by another's
    /// lookup. Over the hash, not the token, so that a purge, which has the
    /// token, can name every issuer's key ([`Issuers::purge_keys`]).
    pub fn cache_key(&self, token_hash: &TokenHash) -> TokenHash {
        match &self.partition {
            None => *token_hash,
            Some(label) => {
                let mut h = Sha256::new();
                h.update(label);
                h.update(token_hash);
                h.finalize().into()
            }
        }
    }

    /// Whether this issuer's AS can be asked now: its endpoint is known, its
    /// breaker is not open, and a required probe has passed. For the
    /// default issuer this is what `/readyz` checks; for the others it is
    /// `tokengate_issuer_ready` only (one AS down must not take the routes of
    /// the others out of the load balancer).
    pub fn ready(&self) -> bool {
        self.introspector.url().is_some()
            && self.breaker.state() != BreakerState::Open
            && (self.probe != ProbeMode::Require || self.probe_ok.load(Ordering::SeqCst))
    }

    /// One introspection at this issuer's AS, through its breaker and
    /// metrics: the cache's load function on a miss. `key` is only for logs.
    pub async fn load(
        &self,
        token: &str,
        key: &TokenHash,
    ) -> Result<Introspection, IntrospectError> {
        // The breaker goes outside the timing: a call it refuses is not an
        // introspection call (no duration to observe), but it is counted as
        // outcome "circuit_open".
        let result = self
            .breaker
            .call_confirmed(
                self.metrics
                    .time_introspection(self.introspector.introspect(token)),
                || self.introspector.canary(),
            )
            .await;
        match result {
            Err(IntrospectError::CircuitOpen) => {
                self.metrics.introspection_refused();
                result
            }
            // The AS will not introspect this token (e.g. a JWT-shaped token
            // it did not issue): for the cache and the policy it is an
            // inactive token, so it is answered 401 and negative-cached by its
            // hash like one. Counted as `token_rejected` above; debug only,
            // because any client can cause it.
            Err(IntrospectError::TokenRejected(code)) => {
                debug!(code, issuer = %self.name, token = %token::fingerprint(key), "authorization server refused to introspect the token; treating it as inactive");
                Ok(Introspection::inactive())
            }
            Ok(answer) => Ok(self.checked_iss(answer, key)),
            other => other,
        }
    }

    /// An active answer that names another issuer than this AS's is refused
    /// as inactive (401, negative-cached in this issuer's partition) and
    /// logged: this AS vouches for a token of someone else (a shared
    /// endpoint, a misconfigured `issuer` or endpoint), and no route of this
    /// issuer should trust that. Checked once, when the answer arrives,
    /// so that only answers with the right `iss` are ever cached here. An
    /// answer without `iss` passes (RFC 7662 makes it optional).
    fn checked_iss(&self, answer: Introspection, key: &TokenHash) -> Introspection {
        match (&self.iss, &answer.iss) {
            (Some(want), Some(got)) if answer.active && want != got => {
                warn!(
                    issuer = %self.name,
                    expected_iss = %want,
                    answered_iss = %got,
                    token = %token::fingerprint(key),
                    "introspection answer names another issuer; refusing the token (401)"
                );
                Introspection::inactive()
            }
            _ => answer,
        }
    }

    /// `introspection.probe` (warn / require): asks the AS about a throwaway
    /// token until one well-formed answer proves the URL and the credentials,
    /// so that a wrong secret shows up at start-up (one WARN line naming the
    /// keys) instead of at the first request. Retries with backoff; stops
    /// after the first success (from then on the breaker watches the AS).
    /// Goes around the breaker and the metrics: it is no client's request,
    /// and a failure here must not open the circuit for the clients. The
    /// default issuer's success is what `/readyz` waits for with `require`.
    pub async fn run_probe(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        let mut failures = 0u32;
        loop {
            // A named issuer without an endpoint is still discovering it in
            // the background; the default one's was found before the start.
            if self.is_default() || self.introspector.url().is_some() {
                match self.introspector.probe().await {
                    Ok(()) => {
                        self.probe_ok.store(true, Ordering::SeqCst);
                        info!(
                            issuer = %self.name,
                            endpoint = %self.introspector.url().unwrap_or_default(),
                            failed_before = failures,
                            "introspection probe succeeded: endpoint and client credentials work"
                        );
                        return;
                    }
                    Err(e) => {
                        failures += 1;
                        warn!(
                            issuer = %self.name,
                            kind = e.kind(),
                            retry_in = ?backoff,
                            "introspection probe failed: {}",
                            crate::introspection::client::probe_advice(
                                &e,
                                self.introspector.url().as_deref()
                            )
                        );
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }

    /// Discovery for a named issuer, in the background: until it first
    /// succeeds this issuer's requests get 503 (no endpoint) while the other
    /// issuers work, so one AS that is down at start-up does not stop the
    /// gate (the default issuer's discovery still must succeed in `main`).
    /// Then re-runs every `refresh_interval`, and early after repeated 404s.
    /// A failure keeps the last good endpoint.
    pub async fn run_discovery(self: Arc<Self>) {
        let Some(d) = self.discovery.clone() else {
            return;
        };
        let mut retry = Duration::from_secs(1);
        loop {
            match crate::introspection::discovery::discover(
                &d.issuer,
                self.settings.timeout,
                &self.settings.tls,
            )
            .await
            {
                Ok(url) => {
                    retry = Duration::from_secs(1);
                    if self.introspector.url().as_deref() != Some(url.as_str()) {
                        info!(issuer = %self.name, endpoint = %url.as_str(), "discovered introspection endpoint");
                        self.introspector.set_url(url);
                    }
                }
                Err(e) => {
                    warn!(issuer = %self.name, error = %e, "discovery failed; keeping the last good endpoint (if any)");
                    if self.introspector.url().is_none() {
                        // Nothing to serve with yet: try again soon.
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(Duration::from_secs(60));
                        continue;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(d.refresh_interval) => {},
                () = self.introspector.rediscover.notified() => {
                    info!(issuer = %self.name, "introspection endpoint answers 404 repeatedly; re-running discovery");
                },
            }
        }
    }

    /// The background tasks this issuer needs (discovery, probe, JWKS).
    pub fn spawn_background(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if self.discovery.is_some() {
            tasks.push(tokio::spawn(self.clone().run_discovery()));
        }
        if self.probe != ProbeMode::Off {
            tasks.push(tokio::spawn(self.clone().run_probe()));
        }
        // Its keys: fetched now, then every `jwt.jwks_refresh_interval`.
        if let Some((jwks, every)) = &self.jwks_refresh {
            tasks.push(tokio::spawn(jwks.clone().refresh_loop(*every)));
        }
        tasks
    }
}

/// Why [`Issuers::pick`] found no issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Picked {
    /// An `at+jwt` whose `iss` is none of the route's issuers, or a JWT of
    /// any `typ` whose `iss` is a configured issuer the route does not
    /// admit: 401, no AS call.
    UnknownIssuer,
    /// The route names an issuer that does not run (`validate` and reload
    /// refuse that; should one slip through, fail closed: 503).
    NotRunning,
}

/// The introspection client of one issuer, with what its JWT settings add:
/// the key store (one per issuer, shared by the local check and the signed
/// answers), the verifier of signed answers (`response_format = "jwt"`) and
/// the local check of its JWTs (`jwt.enabled`).
pub(crate) fn local_checks(
    introspection: &IntrospectionSettings,
    jwt: Option<&JwtSettings>,
    clock: &Arc<dyn Clock>,
) -> (Introspector, Option<Arc<JwtVerifier>>, Option<Arc<Jwks>>) {
    let introspector = Introspector::new(introspection);
    let Some(j) = jwt else {
        return (introspector, None, None);
    };
    let jwks = Arc::new(Jwks::new(
        j.jwks.clone(),
        j.jwks_refetch_min_interval,
        introspection.timeout,
        &introspection.tls,
        clock.clone(),
    ));
    let introspector = match introspection.response_format {
        crate::config::ResponseFormat::Jwt => {
            introspector.with_signed_answers(Arc::new(SignedAnswers::new(
                j,
                &introspection.client_id,
                introspection.timeout,
                jwks.clone(),
                clock.clone(),
            )))
        }
        crate::config::ResponseFormat::Json => introspector,
    };
    let verifier = j
        .enabled
        .then(|| Arc::new(JwtVerifier::new(j.clone(), jwks.clone(), clock.clone())));
    (introspector, verifier, Some(jwks))
}

/// Every issuer of a running gate. Fixed for the life of the process: the
/// list is restart-only (`crate::config::reload`).
#[derive(Debug)]
pub struct Issuers {
    pub default: Arc<Issuer>,
    /// `[issuers.<name>]`, in name order.
    pub named: Vec<Arc<Issuer>>,
}

impl Issuers {
    /// The issuer a route names (`None`, or `"default"`: the default one);
    /// `None` if no such issuer runs (a reload cannot add one: see reload).
    pub fn get(&self, name: Option<&str>) -> Option<&Arc<Issuer>> {
        match name {
            None | Some(DEFAULT_ISSUER) => Some(&self.default),
            Some(name) => self.named.iter().find(|i| i.name == name),
        }
    }

    /// The named issuer whose configured `iss` is exactly `iss` (a JWT picks
    /// its issuer this way); the default issuer has no configured `iss`.
    pub fn by_iss(&self, iss: &str) -> Option<&Arc<Issuer>> {
        self.named.iter().find(|i| i.iss.as_deref() == Some(iss))
    }

    /// The issuer a request's token goes to, among those its route admits
    /// (`names`; empty: the default only). One admitted: that one, unless
    /// the token is a JWT whose `iss` is another configured issuer's (401: no
    /// AS is shown another's token; no peek at all when only the default
    /// issuer is configured). Several:
    /// a compact JWS whose unverified `iss` is exactly an admitted issuer's
    /// picks that issuer, whose keys then verify it (so the signature pins
    /// the peeked `iss`) or whose AS introspects it; an `at+jwt` naming no
    /// admitted issuer is refused (401, no AS call), and so is a JWT of any
    /// `typ` whose `iss` is a configured issuer's that the route does not
    /// admit; anything else (an opaque token, a JWT of another `typ` naming
    /// no configured issuer, or without `iss`) goes to the first.
    /// Never more than one AS per token.
    pub fn pick(&self, names: &[String], token: &str) -> Result<&Arc<Issuer>, Picked> {
        let first = names.first().map(String::as_str);
        if names.len() <= 1 {
            let issuer = self.get(first).ok_or(Picked::NotRunning)?;
            // With one AS configured there is no other AS to protect: no peek.
            if self.named.is_empty() {
                return Ok(issuer);
            }
            // Several configured: a JWT naming *another* configured issuer is
            // that issuer's token; shown to this route's AS it would hand one
            // AS another's token (a partner's token on a staff route). 401.
            let foreign = crate::introspection::jwt::peek_iss(token)
                .and_then(|p| p.iss)
                .is_some_and(|iss| {
                    issuer.jwt_iss.as_deref() != Some(iss.as_str())
                        && self
                            .all()
                            .any(|i| i.jwt_iss.as_deref() == Some(iss.as_str()))
                });
            return if foreign {
                Err(Picked::UnknownIssuer)
            } else {
                Ok(issuer)
            };
        }
        let Some(peek) = crate::introspection::jwt::peek_iss(token) else {
            return self.get(first).ok_or(Picked::NotRunning);
        };
        let mut first = None;
        for name in names {
            let issuer = self.get(Some(name)).ok_or(Picked::NotRunning)?;
            if peek.iss.is_some() && issuer.jwt_iss == peek.iss {
                return Ok(issuer);
            }
            first.get_or_insert(issuer);
        }
        // An `iss` that another configured issuer has (one this route does
        // not admit) names that issuer's token, whatever its `typ`: many ASes
        // put `typ: JWT` or none in their access tokens, and ID tokens are
        // JWTs too. Sent to the first AS it would hand one AS another's
        // token; refused instead, like an `at+jwt` naming no admitted issuer.
        let foreign = || peek.iss.is_some() && self.all().any(|i| i.jwt_iss == peek.iss);
        match first {
            Some(_) if peek.at_jwt || foreign() => Err(Picked::UnknownIssuer),
            Some(first) => Ok(first),
            None => Err(Picked::NotRunning),
        }
    }

    /// The default issuer first, then the named ones.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Issuer>> {
        std::iter::once(&self.default).chain(self.named.iter())
    }

    /// A purge names a token, not an issuer: every issuer's key for it.
    pub fn purge_keys(&self, token_hash: &TokenHash) -> Vec<TokenHash> {
        self.all().map(|i| i.cache_key(token_hash)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthMethod, Secret};
    use crate::ops::metrics::Metrics;

    fn settings(name: &str) -> IssuerSettings {
        IssuerSettings {
            name: name.into(),
            iss: format!("https://{name}.example"),
            introspection: IntrospectionSettings {
                url: None,
                client_id: "c".into(),
                client_secret: Secret::new("s"),
                auth_method: AuthMethod::ClientSecretBasic,
                timeout: Duration::from_secs(1),
                tls: crate::http::tls::ClientTls::new(&[], None).unwrap(),
                probe: ProbeMode::Off,
                response_format: Default::default(),
            },
            discovery: None,
            jwt: None,
        }
    }

    fn issuers() -> Issuers {
        crate::install_crypto_provider();
        let m = Metrics::new();
        let clock: Arc<dyn Clock> = Arc::new(crate::resilience::clock::SystemClock);
        let s = settings("default_like");
        let default = Issuer::default_issuer(
            &s.introspection,
            Arc::new(Introspector::new(&s.introspection)),
            Arc::new(Breaker::new(5, Duration::from_secs(1))),
            Arc::new(AtomicBool::new(false)),
            m.issuer(IssuerName::Borrowed(DEFAULT_ISSUER)),
            None,
            Some("https://default.example".into()),
        );
        let named = ["a", "b"]
            .into_iter()
            .map(|n| {
                Arc::new(Issuer::named(
                    &settings(n),
                    5,
                    Duration::from_secs(1),
                    m.issuer(IssuerName::Owned(n.into())),
                    &clock,
                ))
            })
            .collect();
        Issuers {
            default: Arc::new(default),
            named,
        }
    }

    #[test]
    fn every_issuer_has_its_own_cache_key() {
        let all = issuers();
        let h = token::hash("the same token");
        assert_eq!(all.default.cache_key(&h), h, "default: unchanged keys");
        let keys = all.purge_keys(&h);
        assert_eq!(keys.len(), 3);
        for (n, a) in keys.iter().enumerate() {
            for b in &keys[n + 1..] {
                assert_ne!(a, b);
            }
        }
        // Stable (replicas must agree for the shared cache) and per token.
        assert_eq!(all.named[0].cache_key(&h), keys[1]);
        assert_ne!(all.named[0].cache_key(&token::hash("another")), keys[1]);
    }

    #[test]
    fn lookup_by_route_name_and_by_iss() {
        let all = issuers();
        assert_eq!(all.get(None).unwrap().name, "default");
        assert_eq!(all.get(Some("default")).unwrap().name, "default");
        assert_eq!(all.get(Some("b")).unwrap().name, "b");
        assert!(all.get(Some("c")).is_none());
        assert_eq!(all.by_iss("https://a.example").unwrap().name, "a");
        assert!(all.by_iss("https://a.example/").is_none(), "exact match");
    }

    /// A JWT picks its issuer by `iss` among the route's, only when the
    /// route admits several; nothing else ever reaches a second AS.
    #[test]
    fn a_jwt_picks_its_issuer_by_iss_among_the_routes() {
        use base64::Engine as _;
        let all = issuers();
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = |typ: &str, iss: &str| {
            format!(
                "{}.{}.sig",
                b64(&format!(r#"{{"alg":"ES256","typ":"{typ}"}}"#)),
                b64(&format!(r#"{{"iss":"{iss}","sub":"u"}}"#))
            )
        };
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let pick = |route: &[&str], token: &str| {
            all.pick(&names(route), token).map(|i| i.name.to_string())
        };
        let a = jwt("at+jwt", "https://a.example");
        let b = jwt("at+jwt", "https://b.example");
        let d = jwt("at+jwt", "https://default.example");
        // One admitted issuer: that one, unless the token names another
        // configured issuer (that issuer's token: no AS is shown it).
        assert_eq!(pick(&[], &d).unwrap(), "default");
        assert_eq!(pick(&["a"], &a).unwrap(), "a");
        assert_eq!(pick(&[], &b), Err(Picked::UnknownIssuer));
        assert_eq!(pick(&["a"], &b), Err(Picked::UnknownIssuer));
        assert_eq!(
            pick(&["a"], &jwt("at+jwt", "https://x.example")).unwrap(),
            "a",
            "an iss nobody has: the route's issuer decides (its own checks refuse it)"
        );
        assert_eq!(pick(&["a"], "opaque-token").unwrap(), "a");
        // Several: by exact iss.
        assert_eq!(pick(&["a", "b"], &a).unwrap(), "a");
        assert_eq!(pick(&["a", "b"], &b).unwrap(), "b");
        assert_eq!(pick(&["b", "default"], &d).unwrap(), "default");
        assert_eq!(
            pick(&["a", "b"], &jwt("at+jwt", "https://b.example/")),
            Err(Picked::UnknownIssuer)
        );
        assert_eq!(
            pick(&["a", "default"], &b),
            Err(Picked::UnknownIssuer),
            "b is not admitted"
        );
        // Opaque, or a JWT of another typ naming no admitted issuer: the first.
        assert_eq!(pick(&["b", "a"], "opaque-token").unwrap(), "b");
        assert_eq!(
            pick(&["b", "a"], &jwt("JWT", "https://x.example")).unwrap(),
            "b"
        );
        assert_eq!(
            pick(&["b", "a"], "e30.!!.x").unwrap(),
            "b",
            "no typ, no iss"
        );
        let no_iss = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"ES256","typ":"at+jwt"}"#),
            b64("{}")
        );
        assert_eq!(pick(&["b", "a"], &no_iss), Err(Picked::UnknownIssuer));
        assert_eq!(pick(&["nope", "a"], &a), Err(Picked::NotRunning));
    }

    /// A JWT of any `typ` whose `iss` is another configured issuer's (one the
    /// route does not admit) is that issuer's token: sending it to the
    /// route's first AS would hand one AS another's token (many ASes put
    /// `typ: JWT`, or none, in their access tokens, and ID tokens are JWTs
    /// too). Refused, no AS call. An `iss` no issuer has still goes to the
    /// first (it may be an opaque-looking token of the first AS).
    #[test]
    fn a_jwt_naming_a_configured_issuer_the_route_does_not_admit_reaches_no_as() {
        use base64::Engine as _;
        let all = issuers();
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = |header: &str, iss: &str| {
            format!(
                "{}.{}.sig",
                b64(header),
                b64(&format!(r#"{{"iss":"{iss}","sub":"u"}}"#))
            )
        };
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let pick = |route: &[&str], token: &str| {
            all.pick(&names(route), token).map(|i| i.name.to_string())
        };
        for header in [
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"RS256","typ":"id_token+jwt"}"#,
        ] {
            let b = jwt(header, "https://b.example");
            assert_eq!(
                pick(&["a", "default"], &b),
                Err(Picked::UnknownIssuer),
                "{header}"
            );
            let d = jwt(header, "https://default.example");
            assert_eq!(
                pick(&["a", "b"], &d),
                Err(Picked::UnknownIssuer),
                "{header}"
            );
            // The same on a route that admits one issuer.
            assert_eq!(pick(&["a"], &b), Err(Picked::UnknownIssuer), "{header}");
            assert_eq!(pick(&[], &b), Err(Picked::UnknownIssuer), "{header}");
            assert_eq!(pick(&["b"], &b).unwrap(), "b");
            // Admitted: its own issuer, as before.
            assert_eq!(pick(&["a", "b"], &b).unwrap(), "b");
            // Nobody's: the first, as before.
            let x = jwt(header, "https://x.example");
            assert_eq!(pick(&["a", "b"], &x).unwrap(), "a");
        }
    }

    #[test]
    fn an_answer_naming_another_issuer_is_inactive() {
        let all = issuers();
        let a = &all.named[0];
        let key = token::hash("t");
        let answer = |iss: Option<&str>| Introspection {
            active: true,
            iss: iss.map(str::to_owned),
            ..Introspection::inactive()
        };
        assert!(
            a.checked_iss(answer(Some("https://a.example")), &key)
                .active
        );
        assert!(a.checked_iss(answer(None), &key).active, "iss is optional");
        assert!(
            !a.checked_iss(answer(Some("https://b.example")), &key)
                .active
        );
        assert!(
            all.default
                .checked_iss(answer(Some("https://b.example")), &key)
                .active,
            "the default issuer checks no iss (require_issuer does)"
        );
    }
}
