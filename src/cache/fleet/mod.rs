//! The fleet layer (`[cache.shared]`): a Redis/Valkey L2 cache behind the moka
//! L1, and fleet-wide purge over pub/sub.
//!
//! # Read path
//! L1 miss (inside the cache's single-flight, [`crate::cache::flight`]) →
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
//! * Value: `tg2:` ‖ HMAC(key_secret, label ‖ L2 key ‖ not_after ‖ asked_at ‖
//!   json) ‖ not_after ‖ asked_at ‖ json of the introspection ([`L2Value`]).
//!   The prefix versions the format: a replica that does not know it (an older
//!   or newer release) treats it as a miss. The MAC means that a client that
//!   can write Redis but lacks the key cannot forge an active introspection,
//!   nor copy one token's entry onto another's key, nor change its times.
//! * `not_after` is the end of the entry's `SET PX` lifetime (never past
//!   `exp`), checked on the injected clock: a value saved from Redis and
//!   written back later (without expiry) is refused once its time is over,
//!   instead of being served until `exp`, or forever without `exp`. An L1
//!   copy of an L2 answer is fresh no longer than that either.
//! * `asked_at` is when the writer asked the AS: a value asked at or before
//!   the token's last purge is refused (see Purge).
//!
//! # Purge
//! [`Fleet::purge`] drops the local L1 entry, deletes the L2 key, writes a
//! *tombstone* (`tokengate:p:` ‖ same HMAC, value: the purge time, living as
//! long as any entry written before it) and publishes the token's SHA-256
//! (hex) on [`PURGE_CHANNEL`]; every replica's subscriber
//! ([`Fleet::run_subscriber`], its own connection) drops its L1 entry and
//! remembers the purge (bounded, in memory). An L2 value asked at or before
//! the purge (by the tombstone, read with the value in one round trip, or by
//! the memory, which someone who deletes the tombstone cannot reach) is
//! refused: a replay of a saved value, or the answer of an introspection that
//! was in flight during the purge. A lookup during which this replica records
//! a purge of its token answers its own request but caches nothing
//! ([`Fetched::raced_purge`]). A subscriber that was disconnected may
//! have missed purges, so it clears its whole L1 each time it (re)subscribes.
//!
//! What is left to someone who can write Redis without the key: a replica
//! that did not hear the purge (started later, or disconnected) after they
//! also deleted the tombstone serves a saved value until its `not_after`, at
//! most `max_ttl` after it was written, like an L1 entry without a purge.
//! They can always delete entries or poison tombstones: that costs
//! introspections, never grants access. Times compare across replicas'
//! clocks, so clock skew between replicas widens or narrows these windows by
//! the skew.
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

mod connect;
mod purge;
mod replay;
mod stats;

use super::l1::{entry_ttl, CacheTtls, L1};
use super::settings::SharedCacheSettings;
use crate::introspection::client::{IntrospectError, Introspection};
use crate::resilience::breaker::{Breaker, Outcome, Recovery, Transition};
use crate::resilience::clock::Clock;
use crate::token::{fingerprint, TokenHash};
pub use connect::redis_client;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::Sha256;
pub use stats::FleetStats;
use stats::{bump, Counters};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

/// The pub/sub channel that carries purges (hex SHA-256 of the token).
pub const PURGE_CHANNEL: &str = "tokengate:purge";
/// Consecutive Redis failures that open the breaker.
pub const BREAKER_FAILURES: u32 = 3;
/// How long an open breaker skips Redis before it lets one call try again.
pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);
/// The Redis breaker: [`BREAKER_FAILURES`] in a row open it for
/// [`BREAKER_OPEN_FOR`]; the fleet logs its transitions itself (with the call
/// that caused them).
fn redis_breaker() -> Breaker {
    Breaker::new(BREAKER_FAILURES, BREAKER_OPEN_FOR).with_recovery(Recovery::AllCalls)
}

/// Value format version; bump when the layout or the JSON changes incompatibly.
/// `tg1:` values (no MAC'd expiry, no purge time) are refused as unreadable:
/// they are exactly what a replay would bring back.
const VALUE_PREFIX: &[u8] = b"tg2:";
/// MAC, then `not_after` and `asked_at` (u64 big-endian, ms since the epoch).
const VALUE_HEADER: usize = 32 + 8 + 8;
const KEY_PREFIX: &str = "tokengate:t:";
const LOCK_PREFIX: &str = "tokengate:l:";
/// A purge tombstone: the purge time (ms since the epoch, decimal), kept as
/// long as an entry written before the purge could still be served.
const TOMB_PREFIX: &str = "tokengate:p:";
/// Domain separation: one HMAC key derives the L2 key and authenticates values.
const KEY_LABEL: &[u8] = b"tokengate l2 key\0";
const VALUE_LABEL: &[u8] = b"tokengate l2 value v2\0";
/// Added to a purge record's lifetime (tombstone and memory): replicas' clocks
/// differ a little, and a record must outlive every entry it refuses.
const PURGE_SLACK: Duration = Duration::from_secs(60);
/// Purges this replica remembers (hash → time) without asking Redis. Purges
/// are rare operator actions; past this many within a `max_ttl`, the oldest
/// are forgotten here and only the tombstones in Redis refuse their entries.
const PURGE_MEMORY: u64 = 10_000;
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

impl FleetError {
    /// A short label (the Redis span's `error.type`).
    fn kind(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Timeout(_) => "timeout",
            Self::BreakerOpen => "breaker_open",
            Self::BadKey => "bad_key",
        }
    }
}

enum Lookup {
    Hit(Box<L2Value>),
    Miss,
    /// Redis failed or was skipped: go on as if it did not exist.
    Unavailable,
}

/// An L2 value whose MAC checked out: the answer, and the two MAC'd times that
/// bound its use (both ms since the Unix epoch, on the writer's clock).
#[derive(Debug, Clone, PartialEq)]
pub struct L2Value {
    pub answer: Introspection,
    /// When the writing replica asked the AS: a purge at or after this moment
    /// refuses the value.
    pub asked_at: u64,
    /// When the value stops being served: the end of its `SET PX` lifetime,
    /// so never past `exp`. Redis drops the key then; a copy written back
    /// later (a replay) is refused by this.
    pub not_after: u64,
}

/// What [`Fleet::read_through`] found.
#[derive(Debug)]
pub struct Fetched {
    pub answer: Introspection,
    /// From L2: when its L2 entry stops being served (MAC'd), which bounds
    /// the L1 copy's life too. `None`: the answer is fresh from the AS.
    pub l2_until: Option<SystemTime>,
    /// A purge of the token was recorded during the lookup: use the answer
    /// for the request that asked, cache it nowhere.
    pub raced_purge: bool,
}

/// `t` in milliseconds since the Unix epoch; 0 before it.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn as_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How long purge records live: as long as any L2 entry written before them.
#[derive(Clone)]
struct PurgeLifetime {
    ttls: CacheTtls,
    /// The longest L2 lifetime this replica ever wrote (ms): a reload that
    /// shortens `max_ttl` leaves older, longer entries behind.
    longest_ms: Arc<AtomicU64>,
}

impl PurgeLifetime {
    fn get(&self) -> Duration {
        Duration::from_millis(self.longest_ms.load(Ordering::Relaxed))
            .max(self.ttls.max_ttl())
            .max(self.ttls.negative_ttl())
            .saturating_add(PURGE_SLACK)
    }
}

impl moka::Expiry<TokenHash, (u64, u64)> for PurgeLifetime {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        _value: &(u64, u64),
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.get())
    }

    fn expire_after_update(
        &self,
        _key: &TokenHash,
        _value: &(u64, u64),
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.get())
    }
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
    /// Skips Redis after repeated failures ([`Recovery::AllCalls`]: Redis is
    /// an optimisation, so after the pause every call may try it again).
    breaker: Breaker,
    subscribed: AtomicBool,
    counters: Counters,
    /// Tokens purged recently (hash → purge time, ms on our clock, and the
    /// purge's number in `purge_seq`), from our own purges and the channel.
    /// Someone who can write Redis can delete a tombstone, but not this.
    purged: moka::future::Cache<TokenHash, (u64, u64)>,
    /// Purges this replica has recorded, counted: a lookup that sees the
    /// count of its token's record move past the count at its start raced a
    /// purge (the clock may not have moved in between).
    purge_seq: AtomicU64,
    purge_lifetime: PurgeLifetime,
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
        let purge_lifetime = PurgeLifetime {
            ttls: ttls.clone(),
            longest_ms: Arc::new(AtomicU64::new(0)),
        };
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
            breaker: redis_breaker(),
            subscribed: AtomicBool::new(false),
            counters: Counters::default(),
            purged: moka::future::Cache::builder()
                .max_capacity(PURGE_MEMORY)
                .expire_after(purge_lifetime.clone())
                .build(),
            purge_lifetime,
            purge_seq: AtomicU64::new(0),
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
            l2_refused: g(&c.l2_refused),
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

    /// The Redis key of a token's purge tombstone.
    fn tomb_key(l2_key: &str) -> String {
        format!("{TOMB_PREFIX}{}", &l2_key[KEY_PREFIX.len()..])
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

    /// The L2 lifetime of an answer written now: min(max_ttl, exp − now) for
    /// an active one, `negative_ttl` for an inactive one (zero: not written).
    fn l2_ttl(&self, i: &Introspection, now: SystemTime) -> Duration {
        if i.active {
            entry_ttl(i.exp, now, self.ttls.max_ttl())
        } else if self.negative_entries {
            self.ttls.negative_ttl()
        } else {
            Duration::ZERO
        }
    }

    /// The stored form of an answer asked for and written now, with its
    /// normal L2 lifetime (see [`Fleet::encode_at`]).
    pub fn encode(&self, l2_key: &str, i: &Introspection) -> Option<Vec<u8>> {
        let now = self.clock.now();
        let not_after = unix_ms(now).saturating_add(as_ms(self.l2_ttl(i, now)));
        self.encode_at(l2_key, i, unix_ms(now), not_after)
    }

    /// The stored form: version prefix, then MAC(label ‖ L2 key ‖ not_after ‖
    /// asked_at ‖ json), not_after, asked_at, json. The times are under the
    /// MAC, so someone who can write Redis but lacks the key can neither
    /// extend a value's life nor make it look newer than a purge.
    pub fn encode_at(
        &self,
        l2_key: &str,
        i: &Introspection,
        asked_at: u64,
        not_after: u64,
    ) -> Option<Vec<u8>> {
        let json = serde_json::to_vec(i).ok()?;
        let (na, aa) = (not_after.to_be_bytes(), asked_at.to_be_bytes());
        let mac = self.mac(&[VALUE_LABEL, l2_key.as_bytes(), &na, &aa, &json]);
        let mut v = Vec::with_capacity(VALUE_PREFIX.len() + VALUE_HEADER + json.len());
        v.extend_from_slice(VALUE_PREFIX);
        v.extend_from_slice(&mac);
        v.extend_from_slice(&na);
        v.extend_from_slice(&aa);
        v.extend_from_slice(&json);
        Some(v)
    }

    /// `None` for anything that is not a value this release wrote for this
    /// key (version, MAC, JSON). Says nothing about its times: see [`Fleet::decode`].
    pub fn open(&self, l2_key: &str, raw: &[u8]) -> Option<L2Value> {
        let rest = raw.strip_prefix(VALUE_PREFIX)?;
        if rest.len() < VALUE_HEADER {
            return None;
        }
        let (mac, rest) = rest.split_at(32);
        let (na, rest) = rest.split_at(8);
        let (aa, json) = rest.split_at(8);
        self.hmac(&[VALUE_LABEL, l2_key.as_bytes(), na, aa, json])
            .verify_slice(mac)
            .ok()?;
        Some(L2Value {
            answer: serde_json::from_slice(json).ok()?,
            not_after: u64::from_be_bytes(na.try_into().ok()?),
            asked_at: u64::from_be_bytes(aa.try_into().ok()?),
        })
    }

    /// The answer in a value this release wrote for this key, if it is still
    /// before its MAC'd expiry on our clock (purges are not looked at here).
    pub fn decode(&self, l2_key: &str, raw: &[u8]) -> Option<Introspection> {
        self.open(l2_key, raw)
            .filter(|v| unix_ms(self.clock.now()) < v.not_after)
            .map(|v| v.answer)
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
        let ticket = if respect_breaker {
            let Some(ticket) = self.breaker.try_admit() else {
                bump(&self.counters.l2_skipped);
                return Err(FleetError::BreakerOpen);
            };
            Some(ticket)
        } else {
            None
        };
        let record = |outcome| match ticket {
            Some(ticket) => ticket.finish(outcome),
            None => self.breaker.record_unadmitted(outcome),
        };
        // `[tracing]`: one span per Redis exchange made for a traced request.
        let span = crate::http::trace::child(crate::http::trace::Call::Redis(what));
        let exchange = async {
            match self.connection().await {
                Ok(conn) => within(self.timeout, f(conn)).await,
                Err(e) => Err(e),
            }
        };
        let result = crate::http::trace::within(span.as_ref(), exchange).await;
        crate::http::trace::record_outcome(
            span.as_ref(),
            None,
            result.as_ref().err().map(FleetError::kind),
        );
        match &result {
            Ok(_) => {
                record(Outcome::Success);
            }
            Err(FleetError::Redis(e)) if is_about_the_key(e) => {
                record(Outcome::Success);
                debug!(op = what, error = %e, "shared cache: error reply");
            }
            Err(e) => {
                bump(&self.counters.l2_errors);
                if record(Outcome::Failure) == Transition::Opened {
                    warn!(op = what, error = %e, open_for = ?BREAKER_OPEN_FOR,
                        "shared cache unavailable; going straight to introspection for a while");
                } else {
                    warn!(op = what, error = %e, "shared cache call failed; falling back to introspection");
                }
            }
        }
        result
    }

    /// Reads the value and the token's purge tombstone in one round trip.
    async fn lookup(&self, hash: &TokenHash, l2_key: &str) -> Lookup {
        let (key, tomb) = (l2_key.to_owned(), Self::tomb_key(l2_key));
        let got = self
            .call("get", |mut c| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(&key)
                    .cmd("GET")
                    .arg(&tomb)
                    .query_async::<(Option<Vec<u8>>, Option<Vec<u8>>)>(&mut c)
                    .await
            })
            .await;
        match got {
            Ok((Some(raw), tomb)) => {
                match self
                    .decode_counted(hash, l2_key, &raw, tomb.as_deref())
                    .await
                {
                    Some(v) => Lookup::Hit(Box::new(v)),
                    None => Lookup::Miss,
                }
            }
            Ok((None, _)) => {
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

    /// Writes an answer with its own lifetime, which is also MAC'd into the
    /// value. Best effort. `asked_at`: when the AS was asked (ms).
    async fn store(&self, l2_key: &str, i: &Introspection, asked_at: u64) {
        let now = self.clock.now();
        let ms = as_ms(self.l2_ttl(i, now));
        let not_after = unix_ms(now).saturating_add(ms);
        let Some(value) = (ms > 0)
            .then(|| self.encode_at(l2_key, i, asked_at, not_after))
            .flatten()
        else {
            return;
        };
        self.purge_lifetime
            .longest_ms
            .fetch_max(ms, Ordering::Relaxed);
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
        self.set_nx_px("lock", Self::lock_key(l2_key), self.lock_wait)
            .await
            .ok()
    }

    /// `SET key 1 NX PX ttl` (at least 1 ms): `true` when this call set the
    /// key, `false` when it was already there. The lock above and the DPoP
    /// replay record (`replay.rs`) are both this one command.
    async fn set_nx_px(
        &self,
        what: &'static str,
        key: String,
        ttl: Duration,
    ) -> Result<bool, FleetError> {
        let ms = as_ms(ttl).max(1);
        self.call(what, |mut c| async move {
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
        .map(|set| set.is_some())
    }

    async fn unlock(&self, l2_key: &str) {
        let key = Self::lock_key(l2_key);
        let _ = self
            .call("unlock", |mut c| async move {
                redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
            })
            .await;
    }

    /// Decodes a value read from L2 and counts it: a hit, an unreadable
    /// value (garbage), or a value refused for its times; the last two are
    /// misses. Every L2 read goes through here. `tomb`: the token's purge
    /// tombstone as read with the value.
    async fn decode_counted(
        &self,
        hash: &TokenHash,
        l2_key: &str,
        raw: &[u8],
        tomb: Option<&[u8]>,
    ) -> Option<L2Value> {
        let Some(value) = self.open(l2_key, raw) else {
            bump(&self.counters.l2_garbage);
            bump(&self.counters.l2_misses);
            debug!("shared cache: unreadable value (other version, bad MAC or JSON); a miss");
            return None;
        };
        let now = unix_ms(self.clock.now());
        // A tombstone that is not a number was not written by us: assume the
        // worst (purged now), which only costs an introspection.
        let tomb = tomb.map(|t| {
            std::str::from_utf8(t)
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        });
        let purged_at = tomb.max(self.purged.get(hash).await.map(|(at, _)| at));
        let why = if now >= value.not_after {
            Some("past its expiry")
        } else if purged_at.is_some_and(|p| value.asked_at <= p) {
            Some("older than the token's purge")
        } else {
            None
        };
        if let Some(why) = why {
            bump(&self.counters.l2_refused);
            bump(&self.counters.l2_misses);
            warn!(token = %fingerprint(hash), why,
                "shared cache: refused a value with a valid MAC (a replay, a purge that raced an introspection, or clock skew); introspecting");
            return None;
        }
        bump(&self.counters.l2_hits);
        Some(value)
    }

    /// Polls L2 while another replica introspects. Gives up at the deadline,
    /// when the lock disappears without a value (its holder failed), or when
    /// Redis fails.
    async fn wait_for_other(&self, hash: &TokenHash, l2_key: &str) -> Option<L2Value> {
        bump(&self.counters.lock_waits);
        let deadline = tokio::time::Instant::now() + self.lock_wait;
        let lock = Self::lock_key(l2_key);
        loop {
            tokio::time::sleep(LOCK_POLL).await;
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            let (key, lock, tomb) = (l2_key.to_owned(), lock.clone(), Self::tomb_key(l2_key));
            let (raw, locked, tomb) = self
                .call("poll", |mut c| async move {
                    redis::pipe()
                        .cmd("GET")
                        .arg(&key)
                        .cmd("EXISTS")
                        .arg(&lock)
                        .cmd("GET")
                        .arg(&tomb)
                        .query_async::<(Option<Vec<u8>>, bool, Option<Vec<u8>>)>(&mut c)
                        .await
                })
                .await
                .ok()?;
            if let Some(raw) = raw {
                let found = self
                    .decode_counted(hash, l2_key, &raw, tomb.as_deref())
                    .await;
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

    /// Records a purge of `hash` at our clock's now.
    async fn remember_purge(&self, hash: &TokenHash) -> u64 {
        let now = unix_ms(self.clock.now());
        let seq = self.purge_seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.purged.insert(*hash, (now, seq)).await;
        now
    }

    /// L2 in front of `load` (the introspection call). Only `load`'s errors
    /// come back; Redis problems are logged, counted and otherwise ignored.
    pub async fn read_through<F, Fut>(
        &self,
        hash: &TokenHash,
        load: F,
    ) -> Result<Fetched, IntrospectError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Introspection, IntrospectError>>,
    {
        let started = self.purge_seq.load(Ordering::SeqCst);
        let fetched = self.read_through_inner(hash, load).await?;
        // A purge of this token was recorded while we looked it up: the answer
        // may be from before it. It may answer this request (which began
        // before the purge), but no cache may keep it.
        let raced_purge = self
            .purged
            .get(hash)
            .await
            .is_some_and(|(_, seq)| seq > started);
        if raced_purge {
            debug!(token = %fingerprint(hash), "a purge arrived during the lookup; not caching the answer");
        }
        Ok(Fetched {
            raced_purge,
            ..fetched
        })
    }

    async fn read_through_inner<F, Fut>(
        &self,
        hash: &TokenHash,
        load: F,
    ) -> Result<Fetched, IntrospectError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Introspection, IntrospectError>>,
    {
        let from_l2 = |v: L2Value| {
            Ok(Fetched {
                answer: v.answer,
                l2_until: Some(UNIX_EPOCH + Duration::from_millis(v.not_after)),
                raced_purge: false,
            })
        };
        let l2_key = self.l2_key(hash);
        let redis_up = match self.lookup(hash, &l2_key).await {
            Lookup::Hit(v) => return from_l2(*v),
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
                    if let Some(v) = self.wait_for_other(hash, &l2_key).await {
                        return from_l2(v);
                    }
                }
                None => {}
            }
        }
        let asked_at = unix_ms(self.clock.now());
        let answer = load().await;
        if let Ok(i) = &answer {
            if redis_up {
                self.store(&l2_key, i, asked_at).await;
            }
        }
        if locked {
            // Also after a failed introspection, so that waiters stop waiting.
            self.unlock(&l2_key).await;
        }
        answer.map(|answer| Fetched {
            answer,
            l2_until: None,
            raced_purge: false,
        })
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
    e.code() == Some("WRONGTYPE")
        || e.kind() == redis::ErrorKind::UnexpectedReturnType
        // In a pipeline (value + tombstone) the reply errors come as a list.
        || e.clone().into_server_errors().is_some_and(|errors| {
            !errors.is_empty() && errors.iter().all(|(_, s)| s.code() == "WRONGTYPE")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::TokenCache;
    use crate::config::{CacheSettings, RedisUrl, Secret};
    use crate::resilience::clock::SystemClock;

    fn fleet(secret: &str) -> Fleet {
        let cfg = SharedCacheSettings {
            url: RedisUrl("redis://127.0.0.1:1".into()),
            key_secret: Secret::new(secret),
            timeout: Duration::from_millis(100),
            single_flight: true,
            ca_roots: Vec::new(),
        };
        let cache = TokenCache::new(&CacheSettings::default(), Arc::new(SystemClock));
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
    fn the_macd_times_bound_a_value_and_cannot_be_changed() {
        let clock = Arc::new(crate::resilience::clock::ManualClock::default());
        let cfg = SharedCacheSettings {
            url: RedisUrl("redis://127.0.0.1:1".into()),
            key_secret: Secret::new("0123456789abcdef"),
            timeout: Duration::from_millis(100),
            single_flight: true,
            ca_roots: Vec::new(),
        };
        let cache = TokenCache::new(&CacheSettings::default(), clock.clone());
        let d = Duration::from_secs(1);
        let f = Fleet::new(&cfg, cache.l1(), cache.ttls(), true, d, clock.clone()).unwrap();
        let k = f.l2_key(&[9; 32]);
        let i = Introspection {
            active: true,
            ..Introspection::inactive()
        };
        let now = unix_ms(clock.now());
        let v = f.encode_at(&k, &i, now, now + 60_000).unwrap();
        assert!(v.starts_with(b"tg2:"));
        let opened = f.open(&k, &v).unwrap();
        assert_eq!((opened.asked_at, opened.not_after), (now, now + 60_000));
        assert_eq!(f.decode(&k, &v), Some(i.clone()));
        // Either time changed without the key: the MAC fails.
        for at in [4 + 32, 4 + 32 + 7, 4 + 40, 4 + 47] {
            let mut t = v.clone();
            t[at] ^= 1;
            assert_eq!(f.open(&k, &t), None, "byte {at}");
        }
        // The previous format (no MAC'd times) is refused, not misread.
        let json = serde_json::to_vec(&i).unwrap();
        let mut old = b"tg1:".to_vec();
        old.extend_from_slice(&f.mac(&[b"tokengate l2 value\0", k.as_bytes(), &json]));
        old.extend_from_slice(&json);
        assert_eq!(f.open(&k, &old), None);
        // Past not_after on the injected clock: refused.
        clock.advance(Duration::from_secs(59));
        assert!(f.decode(&k, &v).is_some());
        clock.advance(Duration::from_secs(1));
        assert_eq!(f.decode(&k, &v), None, "refused at not_after");
        // encode() gives a value the normal L2 lifetime: min(max_ttl, exp).
        let soon = Introspection {
            exp: Some(clock.unix_secs() + 10),
            ..i.clone()
        };
        let o = f.open(&k, &f.encode(&k, &soon).unwrap()).unwrap();
        assert!(o.not_after <= u64::try_from(clock.unix_secs() + 10).unwrap() * 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_consecutive_failures_and_retries_after_the_pause() {
        let b = redis_breaker();
        let fail = |b: &Breaker| b.try_admit().unwrap().finish(Outcome::Failure);
        let succeed = |b: &Breaker| b.try_admit().unwrap().finish(Outcome::Success);
        assert!(b.try_admit().is_some());
        assert_ne!(fail(&b), Transition::Opened);
        assert_ne!(fail(&b), Transition::Opened);
        succeed(&b);
        assert_ne!(fail(&b), Transition::Opened, "success resets the count");
        assert_ne!(fail(&b), Transition::Opened);
        assert_eq!(
            fail(&b),
            Transition::Opened,
            "the third failure in a row opens it"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.try_admit().is_none());
        tokio::time::advance(BREAKER_OPEN_FOR - Duration::from_secs(1)).await;
        assert!(b.try_admit().is_some(), "half-open after the pause");
        assert!(b.try_admit().is_some(), "every call may try Redis again");
        assert_ne!(
            fail(&b),
            Transition::Opened,
            "already open: no second 'opened' log"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.try_admit().is_none(), "one failure reopens it");
        b.record_unadmitted(Outcome::Success);
        assert!(b.try_admit().is_some());
    }
}
