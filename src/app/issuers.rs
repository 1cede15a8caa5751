//! The running authorization servers (their settings: `crate::config::issuers`). An [`Issuer`] is one AS with
//! everything that must never be shared with another: its introspection
//! client (endpoint, credentials, TLS), its circuit breaker, its start-up
//! probe and discovery, its metrics, and its **cache partition**
//! ([`Issuer::cache_key`]). [`Issuers`] holds the default one
//! (`[introspection]` / `[discovery]`, named [`DEFAULT_ISSUER`]) and every
//! `[issuers.<name>]`.
//!
//! Which AS is asked about a token is decided by the route
//! (`[[routes]] issuer`, else the default), never by trying each AS in turn:
//! that would send every token to every AS (a leak) and multiply AS load.

pub use crate::config::{IssuerSettings, DEFAULT_ISSUER};

use crate::introspection::client::{
    IntrospectError, Introspection, IntrospectionSettings, Introspector, ProbeMode,
};
use crate::introspection::discovery::DiscoverySettings;
use crate::ops::metrics::{IssuerMetrics, IssuerName};
use crate::resilience::breaker::{Breaker, BreakerState};
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
    // Local JWT validation (`[jwt]`) is the default issuer's only, held by
    // `App` (`pipeline::authorize::load` applies it on the default issuer's
    // routes); a named issuer's tokens, JWTs included, are introspected.
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
        }
    }

    /// A named issuer with a client and breaker of its own.
    pub fn named(
        s: &IssuerSettings,
        breaker_failures: u32,
        breaker_open_for: Duration,
        metrics: IssuerMetrics,
    ) -> Self {
        let mut partition = PARTITION_LABEL.to_vec();
        partition.extend_from_slice(s.name.as_bytes());
        // Names cannot hold a NUL (`valid_name`): the separator is unambiguous.
        partition.push(0);
        Self {
            name: IssuerName::Owned(s.name.clone()),
            iss: Some(s.iss.clone()),
            introspector: Arc::new(Introspector::new(&s.introspection)),
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

    /// `introspection.probe` for a named issuer: like the default issuer's
    /// start-up probe (`listen::probe_introspection`), without the readiness
    /// gate: retries with backoff until one well-formed answer, logging each
    /// failure with what to check.
    pub async fn run_probe(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        let mut failures = 0u32;
        loop {
            if self.introspector.url().is_some() {
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

    /// The background tasks this issuer needs (discovery, probe).
    pub fn spawn_background(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if self.discovery.is_some() {
            tasks.push(tokio::spawn(self.clone().run_discovery()));
        }
        if self.probe != ProbeMode::Off {
            tasks.push(tokio::spawn(self.clone().run_probe()));
        }
        tasks
    }
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
        }
    }

    fn issuers() -> Issuers {
        crate::install_crypto_provider();
        let m = Metrics::new();
        let s = settings("default_like");
        let default = Issuer::default_issuer(
            &s.introspection,
            Arc::new(Introspector::new(&s.introspection)),
            Arc::new(Breaker::new(5, Duration::from_secs(1))),
            Arc::new(AtomicBool::new(false)),
            m.issuer(IssuerName::Borrowed(DEFAULT_ISSUER)),
        );
        let named = ["a", "b"]
            .into_iter()
            .map(|n| {
                Arc::new(Issuer::named(
                    &settings(n),
                    5,
                    Duration::from_secs(1),
                    m.issuer(IssuerName::Owned(n.into())),
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
