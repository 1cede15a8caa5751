//! The fleet layer (`[cache.shared]`): a Redis/Valkey L2 cache behind the moka
//! L1, and fleet-wide purge over pub/sub.
//!
//! # Read path
//! L1 miss (inside the cache's single-flight, [`crate::flight`]) →
//! [`Fleet::read_through`]: `GET` the L2 key; a valid entry is the answer. Otherwise (optionally) take a short
//! `SET NX PX` lock so that replicas that see a new token at once introspect it
//! about once; the losers poll L2 for at most the introspection timeout, then
//! introspect themselves. The introspecting replica writes L2 with
//! `SET … PX ttl`, ttl = min(max_ttl, exp − now) (or `negative_ttl` for an
//! inactive answer), so Redis drops each entry on time by itself.
//!
//! # Redis is an optimisation, never a dependency for correctness
//! Every call has a short timeout (`cache.shared.timeout`). A timeout, a
//! connection error or an unreadable value means "not in L2": the request goes
//! on to the AS as if there were no Redis, and never gets a 5xx because of it.
//! After [`BREAKER_FAILURES`] consecutive failures a breaker skips Redis for
//! [`BREAKER_OPEN_FOR`], so an outage costs each request nothing after the
//! first few. Counters ([`Fleet::stats`]) and `warn!` logs show it.
//!
//! # Keys and values
//! * L2 key: `tokengate:t:` + hex HMAC-SHA-256(key_secret, label ‖ SHA-256(token)).
//!   Someone who dumps Redis cannot test a guessed token without the key. The
//!   HMAC is over the SHA-256 (the L1 key), not over the token, because a purge
//!   knows only that hash.
//! * Value: `tg1:` ‖ HMAC(key_secret, label ‖ L2 key ‖ json) ‖ json of the
//!   introspection. The prefix versions the format: a replica that does not know
//!   it (an older or newer release) treats it as a miss. The MAC means that a
//!   client that can write Redis but lacks the key cannot forge an active
//!   introspection, nor copy one token's entry onto another's key.
//!
//! # Purge
//! [`Fleet::purge`] drops the local L1 entry, deletes the L2 key and publishes
//! the token's SHA-256 (hex) on [`PURGE_CHANNEL`]; every replica's subscriber
//! ([`Fleet::run_subscriber`], its own connection) drops its L1 entry. A
//! subscriber that was disconnected may have missed purges, so it clears its
//! whole L1 each time it (re)subscribes.
//!
//! # Connection
//! One [`redis::Client`] ([`redis_client`]) makes both the command connection
//! and the subscriber's, so both get the same URL, password and TLS trust. For
//! `rediss://` (and `valkeys://`) that trust is the system roots plus
//! `[upstream_tls] ca_file`, so a Redis with a private CA needs no
//! `SSL_CERT_FILE` juggling. A password comes from the URL
//! (`redis://:secret@host`); [`crate::config::RedisUrl`] masks it in Debug and
//! in `--check-config`. A failed handshake or a refused password makes Redis
//! "unavailable" like an outage: introspection answers, the request never
//! fails because of it.
//!
//! Why the SHA-256 and not the HMAC on the channel: each replica must map the
//! message to its L1 key, and an HMAC cannot be mapped back without scanning
//! every L1 entry. The SHA-256 is what L1 already keys on; it cannot be turned
//! back into the token, and only purged tokens (normally revoked ones) ever
//! appear on the channel, whereas the L2 keys of every live token sit in Redis
//! where a dump would find them. A forged message can only drop an L1 entry,
//! which costs one introspection.

use crate::cache::{entry_ttl, CacheTtls, TokenCache, L1};
use crate::clock::Clock;
use crate::config::{RedisUrl, Settings, SharedCacheSettings};
use crate::introspect::{IntrospectError, Introspection};
use crate::token::{fingerprint, TokenHash};
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rustls_pki_types::CertificateDer;
use sha2::Sha256;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tracing::{debug, error, info, warn};

/// The pub/sub channel that carries purges (hex SHA-256 of the token).
pub const PURGE_CHANNEL: &str = "tokengate:purge";
/// Consecutive Redis failures that open the breaker.
pub const BREAKER_FAILURES: u32 = 3;
/// How long an open breaker skips Redis before it lets one call try again.
pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);
/// Value format version; bump when the layout or the JSON changes incompatibly.
const VALUE_PREFIX: &[u8] = b"tg1:";
const KEY_PREFIX: &str = "tokengate:t:";
const LOCK_PREFIX: &str = "tokengate:l:";
/// Domain separation: one HMAC key derives the L2 key and authenticates values.
const KEY_LABEL: &[u8] = b"tokengate l2 key\0";
const VALUE_LABEL: &[u8] = b"tokengate l2 value\0";
/// How often a replica that lost the lock race looks at L2 again.
const LOCK_POLL: Duration = Duration::from_millis(20);
/// Connecting (TCP + TLS + AUTH) may take longer than one command; this bounds
/// it, in the background for the command connection and for the subscriber.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The subscriber pings this often, so that a silently dead connection (no
/// FIN, e.g. a partition) is noticed and L1 is cleared on reconnect.
const SUBSCRIBER_PING: Duration = Duration::from_secs(5);
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(200);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(5);

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("shared cache skipped: breaker open after repeated failures")]
    BreakerOpen,
    #[error("cache.shared.key_secret_file: unusable HMAC key")]
    BadKey,
}

/// The Redis client for `url`. For a TLS URL with `ca_roots` (`[upstream_tls]
/// ca_file`) it trusts those and the system roots. The redis crate takes custom
/// roots only as one PEM bundle that *replaces* the system roots, so the
/// system roots go into the bundle too. Without `ca_roots`, or for a plain
/// URL, the crate's default applies (system roots). Nothing connects here.
pub fn redis_client(
    url: &RedisUrl,
    ca_roots: &[CertificateDer<'static>],
) -> Result<redis::Client, FleetError> {
    let is_tls = url::Url::parse(&url.0).is_ok_and(|u| matches!(u.scheme(), "rediss" | "valkeys"));
    if !is_tls || ca_roots.is_empty() {
        return Ok(redis::Client::open(url.0.as_str())?);
    }
    let native = rustls_native_certs::load_native_certs();
    if let Some(e) = native.errors.first() {
        // The redis crate loads them again on each connect and refuses to
        // connect on such an error, so say so now, once, at start-up.
        warn!(error = %e, "cannot read every system CA certificate; rediss:// may fail to connect");
    }
    let mut pem = String::new();
    for cert in ca_roots.iter().chain(native.certs.iter().filter(|c| {
        // One system certificate that rustls cannot use would make the crate
        // reject the whole bundle; leave such certificates out.
        rustls::RootCertStore::empty().add((*c).clone()).is_ok()
    })) {
        push_pem(&mut pem, cert);
    }
    Ok(redis::Client::build_with_tls(
        url.0.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.into_bytes()),
        },
    )?)
}

/// Appends `cert` as a PEM block (64-column base64, RFC 7468).
fn push_pem(out: &mut String, cert: &CertificateDer<'_>) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
}

/// Puts the fleet layer behind `cache` when `[cache.shared]` is set.
pub fn attach(cache: TokenCache, settings: &Settings, clock: Arc<dyn Clock>) -> TokenCache {
    let Some(shared) = &settings.shared_cache else {
        return cache;
    };
    // No negative entries in L2 when L1 keeps none: the operator turned them off.
    let negative_entries = settings.cache.negative_max_entries > 0;
    match Fleet::new(
        shared,
        cache.l1(),
        cache.ttls(),
        negative_entries,
        settings.introspection.timeout,
        clock,
    ) {
        Ok(fleet) => cache.with_fleet(Arc::new(fleet)),
        Err(e) => {
            // `validate()` parsed the URL already, so this is not expected;
            // serving without L2 is still correct, only slower.
            error!(error = %e, "cannot set up the shared cache; running without it");
            cache
        }
    }
}

/// A snapshot of the fleet counters, for `/metrics` (wired by the metrics layer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// L1 misses answered from L2.
    pub l2_hits: u64,
    /// L2 lookups that found nothing usable (absent, or unreadable: see `l2_garbage`).
    pub l2_misses: u64,
    /// Values that were present but unreadable (bad MAC, unknown version, bad JSON, wrong type).
    pub l2_garbage: u64,
    /// Redis calls that failed or timed out (each fell back to introspection).
    pub l2_errors: u64,
    /// Redis calls skipped because the breaker was open.
    pub l2_skipped: u64,
    /// Entries written to L2.
    pub l2_writes: u64,
    /// Purges published by this replica.
    pub purges_sent: u64,
    /// Purge messages received (its own included).
    pub purges_received: u64,
    /// Times the subscriber (re)subscribed and cleared L1.
    pub l1_resyncs: u64,
    /// Times this replica won the single-flight lock.
    pub lock_acquired: u64,
    /// Times this replica lost it and polled L2.
    pub lock_waits: u64,
    /// Of those, the times L2 filled in before the deadline.
    pub lock_wait_hits: u64,
}

#[derive(Default)]
struct Counters {
    l2_hits: AtomicU64,
    l2_misses: AtomicU64,
    l2_garbage: AtomicU64,
    l2_errors: AtomicU64,
    l2_skipped: AtomicU64,
    l2_writes: AtomicU64,
    purges_sent: AtomicU64,
    purges_received: AtomicU64,
    l1_resyncs: AtomicU64,
    lock_acquired: AtomicU64,
    lock_waits: AtomicU64,
    lock_wait_hits: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Consecutive-failure breaker. Pure state; the caller passes the time.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// May a Redis call be made now? After `BREAKER_OPEN_FOR` calls go through
    /// again; one more failure reopens it at once (the count is still high).
    pub fn allows(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|until| now >= until)
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    /// Records a failure; `true` when this one opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= BREAKER_FAILURES {
            let was_closed = self.open_until.is_none();
            self.open_until = Some(now + BREAKER_OPEN_FOR);
            return was_closed;
        }
        false
    }
}

enum Lookup {
    Hit(Box<Introspection>),
    Miss,
    /// Redis failed or was skipped: go on as if it did not exist.
    Unavailable,
}

/// One replica's view of the shared cache. Cheap to share (`Arc`).
pub struct Fleet {
    client: redis::Client,
    /// Created on first use, so that building the `App` needs no runtime and
    /// no Redis: tokengate starts (and serves) while Redis is down.
    conn: OnceCell<ConnectionManager>,
    /// HMAC-SHA-256 keyed with `key_secret`, ready to clone for each use.
    key: HmacSha256,
    /// This replica's L1, for purges received and for the clear on reconnect.
    l1: L1,
    timeout: Duration,
    single_flight: bool,
    /// The longest a replica waits for another's introspection (never longer
    /// than it would wait for its own).
    lock_wait: Duration,
    /// The L1's live `max_ttl`/`negative_ttl`, so a config reload changes the
    /// L2 lifetimes of new entries exactly as it does for L1.
    ttls: CacheTtls,
    /// `false`: `negative_max_entries = 0`, so no inactive answers in L2 either.
    negative_entries: bool,
    clock: Arc<dyn Clock>,
    breaker: Mutex<Breaker>,
    subscribed: AtomicBool,
    counters: Counters,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("timeout", &self.timeout)
            .field("single_flight", &self.single_flight)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// `introspection_timeout` bounds the single-flight wait.
    pub fn new(
        cfg: &SharedCacheSettings,
        l1: L1,
        ttls: CacheTtls,
        negative_entries: bool,
        introspection_timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, FleetError> {
        Ok(Self {
            client: redis_client(&cfg.url, &cfg.ca_roots)?,
            conn: OnceCell::new(),
            key: HmacSha256::new_from_slice(cfg.key_secret.expose().as_bytes())
                .map_err(|_| FleetError::BadKey)?,
            l1,
            timeout: cfg.timeout,
            single_flight: cfg.single_flight,
            lock_wait: introspection_timeout,
            ttls,
            negative_entries,
            clock,
            breaker: Mutex::new(Breaker::default()),
            subscribed: AtomicBool::new(false),
            counters: Counters::default(),
        })
    }

    pub fn stats(&self) -> FleetStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FleetStats {
            l2_hits: g(&c.l2_hits),
            l2_misses: g(&c.l2_misses),
            l2_garbage: g(&c.l2_garbage),
            l2_errors: g(&c.l2_errors),
            l2_skipped: g(&c.l2_skipped),
            l2_writes: g(&c.l2_writes),
            purges_sent: g(&c.purges_sent),
            purges_received: g(&c.purges_received),
            l1_resyncs: g(&c.l1_resyncs),
            lock_acquired: g(&c.lock_acquired),
            lock_waits: g(&c.lock_waits),
            lock_wait_hits: g(&c.lock_wait_hits),
        }
    }

    /// Whether the purge subscriber is connected and subscribed right now.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    /// The Redis key of a token's L2 entry.
    pub fn l2_key(&self, hash: &TokenHash) -> String {
        format!("{KEY_PREFIX}{}", hex::encode(self.mac(&[KEY_LABEL, hash])))
    }

    fn lock_key(l2_key: &str) -> String {
        format!("{LOCK_PREFIX}{}", &l2_key[KEY_PREFIX.len()..])
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.hmac(parts).finalize().into_bytes().into()
    }

    fn hmac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut m = self.key.clone();
        for p in parts {
            m.update(p);
        }
        m
    }

    /// The stored form: version prefix, MAC, JSON.
    pub fn encode(&self, l2_key: &str, i: &Introspection) -> Option<Vec<u8>> {
        let json = serde_json::to_vec(i).ok()?;
        let mac = self.mac(&[VALUE_LABEL, l2_key.as_bytes(), &json]);
        let mut v = Vec::with_capacity(VALUE_PREFIX.len() + mac.len() + json.len());
        v.extend_from_slice(VALUE_PREFIX);
        v.extend_from_slice(&mac);
        v.extend_from_slice(&json);
        Some(v)
    }

    /// `None` for anything that is not a value this release wrote for this key.
    pub fn decode(&self, l2_key: &str, raw: &[u8]) -> Option<Introspection> {
        let rest = raw.strip_prefix(VALUE_PREFIX)?;
        if rest.len() < 32 {
            return None;
        }
        let (mac, json) = rest.split_at(32);
        self.hmac(&[VALUE_LABEL, l2_key.as_bytes(), json])
            .verify_slice(mac)
            .ok()?;
        serde_json::from_slice(json).ok()
    }

    async fn connection(&self) -> Result<ConnectionManager, FleetError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(self.client.clone(), cfg)
            })
            .await?;
        Ok(conn.clone())
    }

    /// Runs one Redis exchange under the timeout and the breaker. Connection,
    /// TLS and authentication failures, timeouts and server-wide error replies
    /// count against the breaker; an error about the value at one key (e.g.
    /// WRONGTYPE for a key someone else wrote) does not.
    async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, FleetError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.call_with(what, true, f).await
    }

    /// `respect_breaker = false` for purges: they are rare, and a purge that
    /// is not even tried because lookups failed recently would be a silent loss.
    async fn call_with<T, F, Fut>(
        &self,
        what: &'static str,
        respect_breaker: bool,
        f: F,
    ) -> Result<T, FleetError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if respect_breaker && !self.breaker_lock().allows(Instant::now()) {
            bump(&self.counters.l2_skipped);
            return Err(FleetError::BreakerOpen);
        }
        let result = match self.connection().await {
            Ok(conn) => within(self.timeout, f(conn)).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => self.breaker_lock().success(),
            Err(FleetError::Redis(e)) if is_about_the_key(e) => {
                self.breaker_lock().success();
                debug!(op = what, error = %e, "shared cache: error reply");
            }
            Err(e) => {
                bump(&self.counters.l2_errors);
                let opened = self.breaker_lock().failure(Instant::now());
                if opened {
                    warn!(op = what, error = %e, open_for = ?BREAKER_OPEN_FOR,
                        "shared cache unavailable; going straight to introspection for a while");
                } else {
                    warn!(op = what, error = %e, "shared cache call failed; falling back to introspection");
                }
            }
        }
        result
    }

    fn breaker_lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        // A panic while holding it cannot leave the counters inconsistent in
        // a way that matters; keep going.
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn lookup(&self, l2_key: &str) -> Lookup {
        let key = l2_key.to_owned();
        let got = self
            .call("get", |mut c| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<Vec<u8>>>(&mut c)
                    .await
            })
            .await;
        match got {
            Ok(Some(raw)) => match self.decode_counted(l2_key, &raw) {
                Some(i) => Lookup::Hit(Box::new(i)),
                None => Lookup::Miss,
            },
            Ok(None) => {
                bump(&self.counters.l2_misses);
                Lookup::Miss
            }
            Err(FleetError::Redis(e)) if is_about_the_key(&e) => {
                // The server answered, with an error about this key (e.g. not a string).
                bump(&self.counters.l2_garbage);
                bump(&self.counters.l2_misses);
                Lookup::Miss
            }
            Err(_) => Lookup::Unavailable,
        }
    }

    /// Writes an answer with its own lifetime. Best effort.
    async fn store(&self, l2_key: &str, i: &Introspection) {
        let ttl = if i.active {
            entry_ttl(i.exp, self.clock.now(), self.ttls.max_ttl())
        } else if self.negative_entries {
            self.ttls.negative_ttl()
        } else {
            Duration::ZERO
        };
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let Some(value) = (ms > 0).then(|| self.encode(l2_key, i)).flatten() else {
            return;
        };
        let key = l2_key.to_owned();
        let done = self
            .call("set", |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(value)
                    .arg("PX")
                    .arg(ms)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        if done.is_ok() {
            bump(&self.counters.l2_writes);
        }
    }

    /// `Some(true)`: we hold the lock; `Some(false)`: another replica does;
    /// `None`: Redis failed.
    async fn try_lock(&self, l2_key: &str) -> Option<bool> {
        let key = Self::lock_key(l2_key);
        let ms = u64::try_from(self.lock_wait.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.call("lock", |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await
        .ok()
        .map(|ok| ok.is_some())
    }

    async fn unlock(&self, l2_key: &str) {
        let key = Self::lock_key(l2_key);
        let _ = self
            .call("unlock", |mut c| async move {
                redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
            })
            .await;
    }

    /// Polls L2 while another replica introspects. Gives up at the deadline,
    /// when the lock disappears without a value (its holder failed), or when
    /// Redis fails.
    /// Decodes a value read from L2 and counts it: a hit, or an unreadable
    /// value (garbage) that is a miss. Every L2 read goes through here.
    fn decode_counted(&self, l2_key: &str, raw: &[u8]) -> Option<Introspection> {
        let found = self.decode(l2_key, raw);
        if found.is_some() {
            bump(&self.counters.l2_hits);
        } else {
            bump(&self.counters.l2_garbage);
            bump(&self.counters.l2_misses);
            debug!("shared cache: unreadable value (other version, bad MAC or JSON); a miss");
        }
        found
    }

    async fn wait_for_other(&self, l2_key: &str) -> Option<Introspection> {
        bump(&self.counters.lock_waits);
        let deadline = tokio::time::Instant::now() + self.lock_wait;
        let lock = Self::lock_key(l2_key);
        loop {
            tokio::time::sleep(LOCK_POLL).await;
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            let (key, lock) = (l2_key.to_owned(), lock.clone());
            let (raw, locked) = self
                .call("poll", |mut c| async move {
                    redis::pipe()
                        .cmd("GET")
                        .arg(&key)
                        .cmd("EXISTS")
                        .arg(&lock)
                        .query_async::<(Option<Vec<u8>>, bool)>(&mut c)
                        .await
                })
                .await
                .ok()?;
            if let Some(raw) = raw {
                let found = self.decode_counted(l2_key, &raw);
                if found.is_some() {
                    bump(&self.counters.lock_wait_hits);
                }
                return found;
            }
            if !locked {
                return None;
            }
        }
    }

    /// L2 in front of `load` (the introspection call). Only `load`'s errors
    /// come back; Redis problems are logged, counted and otherwise ignored.
    pub async fn read_through<F, Fut>(
        &self,
        hash: &TokenHash,
        load: F,
    ) -> Result<Introspection, IntrospectError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Introspection, IntrospectError>>,
    {
        let l2_key = self.l2_key(hash);
        let redis_up = match self.lookup(&l2_key).await {
            Lookup::Hit(i) => return Ok(*i),
            Lookup::Miss => true,
            Lookup::Unavailable => false,
        };
        let mut locked = false;
        if redis_up && self.single_flight {
            match self.try_lock(&l2_key).await {
                Some(true) => {
                    bump(&self.counters.lock_acquired);
                    locked = true;
                }
                Some(false) => {
                    if let Some(i) = self.wait_for_other(&l2_key).await {
                        return Ok(i);
                    }
                }
                None => {}
            }
        }
        let answer = load().await;
        if let Ok(i) = &answer {
            if redis_up {
                self.store(&l2_key, i).await;
            }
        }
        if locked {
            // Also after a failed introspection, so that waiters stop waiting.
            self.unlock(&l2_key).await;
        }
        answer
    }

    /// Fleet-wide purge: this replica's L1, the L2 entry, and a message that
    /// makes every subscribed replica drop its L1 entry. L1 goes first and
    /// always; the error says that the rest of the fleet may not have heard.
    pub async fn purge(&self, hash: &TokenHash) -> Result<(), FleetError> {
        self.l1.invalidate(hash).await;
        let key = self.l2_key(hash);
        let msg = hex::encode(hash);
        let sent = self
            .call_with("purge", false, |mut c| async move {
                redis::pipe()
                    .cmd("DEL")
                    .arg(&key)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(PURGE_CHANNEL)
                    .arg(&msg)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        match &sent {
            Ok(()) => {
                bump(&self.counters.purges_sent);
                info!(token = %fingerprint(hash), "purge published to the fleet");
            }
            Err(e) => warn!(token = %fingerprint(hash), error = %e,
                "purge reached this replica only: the shared cache is unavailable"),
        }
        sent
    }

    /// The purge subscriber: its own connection, reconnecting with backoff,
    /// until the task is aborted (at shutdown).
    pub async fn run_subscriber(self: Arc<Self>) {
        let mut backoff = RESUBSCRIBE_MIN;
        loop {
            match self.subscribe_once().await {
                // It had been up: try again soon.
                Ok(()) => backoff = RESUBSCRIBE_MIN,
                Err(e) => debug!(error = %e, "purge subscriber: cannot subscribe"),
            }
            if self.subscribed.swap(false, Ordering::SeqCst) {
                warn!("purge subscriber disconnected; L1 will be cleared on reconnect");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
        }
    }

    /// One subscription's life. `Ok` when an established subscription ended.
    async fn subscribe_once(&self) -> Result<(), FleetError> {
        let pubsub = within(CONNECT_TIMEOUT, self.client.get_async_pubsub()).await?;
        let (mut sink, mut stream) = pubsub.split();
        within(CONNECT_TIMEOUT, sink.subscribe(PURGE_CHANNEL)).await?;
        // Purges published while we were not subscribed are lost to us; the
        // only safe assumption is that any L1 entry may have been purged.
        self.l1.clear();
        bump(&self.counters.l1_resyncs);
        self.subscribed.store(true, Ordering::SeqCst);
        info!(
            channel = PURGE_CHANNEL,
            "purge subscriber connected; L1 cleared"
        );
        let mut ping = tokio::time::interval(SUBSCRIBER_PING);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.on_message(msg.get_payload_bytes()).await,
                    None => return Ok(()),
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(CONNECT_TIMEOUT, sink.ping::<String>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn on_message(&self, payload: &[u8]) {
        let mut hash: TokenHash = [0; 32];
        if payload.len() != 64 || hex::decode_to_slice(payload, &mut hash).is_err() {
            debug!(
                len = payload.len(),
                "purge subscriber: ignoring a malformed message"
            );
            return;
        }
        bump(&self.counters.purges_received);
        self.l1.invalidate(&hash).await;
        debug!(token = %fingerprint(&hash), "purge received; L1 entry dropped");
    }
}

async fn within<T>(
    limit: Duration,
    f: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, FleetError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(FleetError::from),
        Err(_) => Err(FleetError::Timeout(limit)),
    }
}

/// An error about the value stored at one key, from a Redis that works: a miss
/// for that key, not a sign of trouble. Everything else (I/O, TLS, timeouts,
/// a refused password, NOAUTH, NOPERM, OOM, READONLY, ...) means this Redis
/// cannot serve us now, and is counted and logged as such, so that a wrong
/// password shows up as `l2_errors` and a warning, not as a stream of misses.
fn is_about_the_key(e: &redis::RedisError) -> bool {
    e.code() == Some("WRONGTYPE") || e.kind() == redis::ErrorKind::UnexpectedReturnType
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::config::{RawCache, RedisUrl, Secret};

    fn fleet(secret: &str) -> Fleet {
        let cfg = SharedCacheSettings {
            url: RedisUrl("redis://127.0.0.1:1".into()),
            key_secret: Secret::new(secret),
            timeout: Duration::from_millis(100),
            single_flight: true,
            ca_roots: Vec::new(),
        };
        let cache = TokenCache::new(&RawCache::default(), Arc::new(SystemClock));
        let d = Duration::from_secs(1);
        Fleet::new(
            &cfg,
            cache.l1(),
            cache.ttls(),
            true,
            d,
            Arc::new(SystemClock),
        )
        .unwrap()
    }

    #[test]
    fn values_round_trip_and_are_bound_to_key_secret_and_version() {
        let f = fleet("0123456789abcdef");
        let i: Introspection = serde_json::from_value(serde_json::json!({
            "active": true, "scope": "read write", "client_id": "app", "username": "al",
            "token_type": "Bearer", "exp": 2_000_000_000u64, "iat": 1_000, "nbf": 1_000,
            "sub": "alice", "aud": ["api", "web"], "iss": "https://as", "jti": "j1",
            "token_use": "access_token", "nested": {"a": [1, 2]},
        }))
        .unwrap();
        let k = f.l2_key(&[7; 32]);
        assert!(k.starts_with(KEY_PREFIX) && k.len() == KEY_PREFIX.len() + 64);
        let v = f.encode(&k, &i).unwrap();
        assert_eq!(f.decode(&k, &v), Some(i.clone()), "lossless round trip");
        assert_eq!(f.decode(&f.l2_key(&[8; 32]), &v), None, "bound to its key");
        assert_eq!(fleet("another-secret-16b").decode(&k, &v), None);
        assert_ne!(fleet("another-secret-16b").l2_key(&[7; 32]), k);
        let mut tampered = v.clone();
        let last = tampered.len() - 2;
        tampered[last] ^= 1;
        assert_eq!(f.decode(&k, &tampered), None);
        for junk in [&b""[..], b"tg1:", b"tg1:short", b"{\"active\":true}"] {
            assert_eq!(f.decode(&k, junk), None);
        }
    }

    #[test]
    fn ca_roots_go_into_a_pem_bundle_that_round_trips() {
        use rustls_pki_types::pem::PemObject;
        // Any DER-shaped bytes do for the encoding; length not a multiple of 48
        // so that the last line is short.
        let certs: Vec<CertificateDer<'static>> = vec![
            CertificateDer::from((0u8..=200).collect::<Vec<_>>()),
            CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x05]),
        ];
        let mut pem = String::new();
        for c in &certs {
            push_pem(&mut pem, c);
        }
        assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
        let back = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(back, certs);
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_retries_after_the_pause() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        assert!(b.allows(t0));
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        b.success();
        assert!(!b.failure(t0), "success resets the count");
        assert!(!b.failure(t0));
        assert!(b.failure(t0), "the third failure in a row opens it");
        assert!(!b.allows(t0 + Duration::from_secs(1)));
        let later = t0 + BREAKER_OPEN_FOR;
        assert!(b.allows(later), "half-open after the pause");
        assert!(!b.failure(later), "already open: no second 'opened' log");
        assert!(
            !b.allows(later + Duration::from_millis(1)),
            "one failure reopens it"
        );
        b.success();
        assert!(b.allows(later));
    }
}
