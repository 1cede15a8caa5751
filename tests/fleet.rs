//! Issue 7: a shared Redis L2 and fleet-wide purge. Every test starts its own
//! `redis-server` on a free port (no persistence) and two or more real
//! tokengates (`tokengate::run`) that share it, one fake AS and one upstream.
#![expect(
    clippy::disallowed_methods,
    reason = "tokens with a real exp for a real Redis TTL"
)]

mod common;

use common::*;
use hmac::{Hmac, Mac};
use http::Method;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokengate::cache::fleet::Fleet;
use tokengate::config::RawConfig;
use wiremock::ResponseTemplate;

// Generated (`openssl rand -hex 16`): tokengate refuses a key that looks typed.
const KEY_SECRET: &str = "5c0e9a71d4b28f63e17a0b9c2d48f5a6";

/// The key file every replica of one fleet shares; removed when dropped.
struct KeyFile(std::path::PathBuf);

impl KeyFile {
    fn new(secret: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("tokengate-fleet-key-{}-{n}", std::process::id()));
        std::fs::write(&p, format!("{secret}\n")).unwrap();
        Self(p)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn shared(raw: &mut RawConfig, redis: &RedisServer, key: &KeyFile) {
    raw.cache.shared.url = tokengate::config::RedisUrl(redis.url());
    raw.cache.shared.key_secret_file = key.path();
    // Generous: a slow CI box must not turn a healthy Redis into a "failure".
    raw.cache.shared.timeout = Duration::from_secs(2);
}

/// A second replica of `env`'s tokengate: same AS, same upstream, same Redis.
async fn replica(env: &Env, redis: &RedisServer, key: &KeyFile) -> Gate {
    let mut raw = base_config(&env.auth, &env.upstream.url());
    shared(&mut raw, redis, key);
    Gate::start(&raw).await
}

async fn get_via(env: &Env, gate: &Gate, token: &str) -> Resp {
    let req = request(Method::GET, &format!("http://{}/api", gate.addr))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    send(&env.http1, req).await
}

fn fleet(gate: &Gate) -> Arc<Fleet> {
    gate.fleet.clone().expect("[cache.shared] is configured")
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Polls `cond` every 10 ms; panics after `limit` (generous: this is a wait for
/// an event, not a timing assertion).
async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn subscribed(gates: &[&Gate]) {
    for g in gates {
        let f = fleet(g);
        eventually("purge subscriber up", Duration::from_secs(10), || {
            f.is_subscribed()
        })
        .await;
    }
}

#[tokio::test]
async fn l2_hit_on_another_replica_and_purge_reaches_every_replica() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| shared(raw, &redis, &key)).await;
    let r2 = replica(&env, &redis, &key).await;
    subscribed(&[&env.gate, &r2]).await;

    let body = json!({"active": true, "sub": "alice", "scope": "read", "exp": env.now() + 3600});
    introspection_of("tok-shared")
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .up_to_n_times(1)
        .expect(1)
        .named("first introspection: active")
        .mount(&env.auth)
        .await;

    // Replica 1 introspects and writes L2; replica 2 reads it from L2.
    let r = get_via(&env, &env.gate, "tok-shared").await;
    assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    let r = get_via(&env, &r2, "tok-shared").await;
    assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    assert_eq!(
        env.introspections().await.len(),
        1,
        "replica 2 must be served from L2"
    );
    assert_eq!(fleet(&r2).stats().l2_hits, 1);
    assert_eq!(fleet(&env.gate).stats().l2_writes, 1);

    // The token is revoked at the AS and purged through replica 2.
    env.answer("tok-shared", json!({"active": false}), 1).await;
    fleet(&r2)
        .purge(&sha256("tok-shared"))
        .await
        .expect("purge published");
    assert_eq!(fleet(&r2).stats().purges_sent, 1);
    let f1 = fleet(&env.gate);
    eventually("replica 1 hears the purge", Duration::from_secs(5), || {
        f1.stats().purges_received >= 1
    })
    .await;

    // Replica 1 no longer has it in L1, L2 is gone: it asks the AS and rejects.
    // (Each test gate's clock stands still until advanced, and replica 2's
    // started a little later: move replica 1's past the purge, as real time
    // would, so that its new answer is newer than the purge.)
    env.advance(Duration::from_secs(1));
    let r = get_via(&env, &env.gate, "tok-shared").await;
    assert_rejection(&r, 401, "invalid_token");
    assert_eq!(env.introspections().await.len(), 2);
    // The inactive answer went to L2 as a negative entry: replica 2 agrees
    // without asking the AS again.
    let r = get_via(&env, &r2, "tok-shared").await;
    assert_rejection(&r, 401, "invalid_token");
    assert_eq!(env.introspections().await.len(), 2);
}

#[tokio::test]
async fn purge_via_token_cache_invalidate_is_fleet_wide() {
    // The admin endpoint calls `TokenCache::invalidate`; with [cache.shared] it
    // must purge L2 and publish, not only drop the local entry.
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| shared(raw, &redis, &key)).await;
    let r2 = replica(&env, &redis, &key).await;
    subscribed(&[&env.gate, &r2]).await;
    env.allow("tok-inv", 2).await;
    get_via(&env, &env.gate, "tok-inv").await.echo();
    get_via(&env, &r2, "tok-inv").await.echo();

    let mut raw = base_config(&env.auth, &env.upstream.url());
    shared(&mut raw, &redis, &key);
    // A third App used only as a purge client, like an admin handler would.
    let app = tokengate::App::new(raw.validate().unwrap());
    app.cache().invalidate(&sha256("tok-inv")).await;

    let (f1, f2) = (fleet(&env.gate), fleet(&r2));
    eventually(
        "both replicas hear the purge",
        Duration::from_secs(5),
        || f1.stats().purges_received >= 1 && f2.stats().purges_received >= 1,
    )
    .await;
    let mut c = redis.conn().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(f1.l2_key(&sha256("tok-inv")))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!exists, "the L2 entry is deleted");
    // Replica 2 re-introspects (the second and last allowed call).
    get_via(&env, &r2, "tok-inv").await.echo();
    assert_eq!(env.introspections().await.len(), 2);
}

#[tokio::test]
async fn redis_outage_falls_back_to_introspection_and_reconnect_clears_l1() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| {
        shared(raw, &redis, &key);
        raw.cache.shared.timeout = Duration::from_millis(300);
    })
    .await;
    subscribed(&[&env.gate]).await;
    let f = fleet(&env.gate);
    env.allow("tok-a", 2).await;
    for n in 0..6 {
        env.allow(&format!("tok-b{n}"), 1).await;
    }

    get_via(&env, &env.gate, "tok-a").await.echo();
    assert_eq!(f.stats().l2_writes, 1);
    let resyncs = f.stats().l1_resyncs;

    redis.kill();
    // New tokens: L2 is unreachable, introspection answers, the client sees 200.
    for n in 0..6 {
        let r = get_via(&env, &env.gate, &format!("tok-b{n}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let s = f.stats();
    assert!(s.l2_errors >= 1, "{s:?}");
    assert!(
        s.l2_skipped >= 1,
        "the breaker skips Redis after repeated failures: {s:?}"
    );
    // tok-a is still in this replica's L1 (no AS call).
    get_via(&env, &env.gate, "tok-a").await.echo();
    assert_eq!(env.introspections().await.len(), 7);
    // A purge while Redis is down is still tried (the breaker does not hold
    // it back), fails, and still drops the local entry.
    let errors = f.stats().l2_errors;
    assert!(f.purge(&sha256("tok-b0")).await.is_err());
    assert_eq!(f.stats().l2_errors, errors + 1, "the purge was attempted");

    // Redis comes back (empty): the subscriber reconnects and clears L1,
    // because purges published meanwhile never reached it.
    redis.spawn().await;
    eventually("the subscriber reconnects", Duration::from_secs(20), || {
        f.stats().l1_resyncs > resyncs && f.is_subscribed()
    })
    .await;
    get_via(&env, &env.gate, "tok-a").await.echo();
    assert_eq!(
        env.introspections().await.len(),
        8,
        "L1 was cleared on reconnect: tok-a is introspected again"
    );
}

#[tokio::test]
async fn garbage_wrong_type_and_forged_values_are_misses() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| shared(raw, &redis, &key)).await;
    let f = fleet(&env.gate);
    let mut c = redis.conn().await;

    // Plain garbage, then a wrong type.
    env.allow("tok-g1", 1).await;
    env.allow("tok-g2", 1).await;
    let k1 = f.l2_key(&sha256("tok-g1"));
    let k2 = f.l2_key(&sha256("tok-g2"));
    redis::cmd("SET")
        .arg(&k1)
        .arg(b"\x00\xffnot json at all".as_slice())
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    redis::cmd("RPUSH")
        .arg(&k2)
        .arg("x")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    get_via(&env, &env.gate, "tok-g1").await.echo();
    get_via(&env, &env.gate, "tok-g2").await.echo();
    let s = f.stats();
    assert_eq!(
        (s.l2_garbage, s.l2_errors, s.l2_hits),
        (2, 0, 0),
        "a miss, not an error: {s:?}"
    );
    // Both keys now hold good entries again.
    let v: Vec<u8> = redis::cmd("GET")
        .arg(&k1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(f.decode(&k1, &v).is_some_and(|i| i.active));

    // A forged "active" entry: the right version prefix and a MAC under another
    // secret. Someone who can write Redis cannot let a token in.
    env.answer("tok-forged", json!({"active": false}), 1).await;
    let other = KeyFile::new("b7f31c9e04a25d8e6f1a93c07d2e48b5");
    let mut raw = base_config(&env.auth, &env.upstream.url());
    shared(&mut raw, &redis, &other);
    let forger = tokengate::App::new(raw.validate().unwrap());
    let forger = forger.cache().fleet().unwrap().clone();
    let k = f.l2_key(&sha256("tok-forged"));
    let body: tokengate::introspection::Introspection =
        serde_json::from_value(json!({"active": true, "sub": "mallory"})).unwrap();
    let forged = forger.encode(&k, &body).unwrap();
    assert!(f.decode(&k, &forged).is_none());
    // And one of our own valid entries copied onto another token's key.
    let copied = f.encode(&f.l2_key(&sha256("elsewhere")), &body).unwrap();
    assert!(f.decode(&k, &copied).is_none());
    redis::cmd("SET")
        .arg(&k)
        .arg(forged)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let r = get_via(&env, &env.gate, "tok-forged").await;
    assert_rejection(&r, 401, "invalid_token");

    // A value from a future format version is a miss too.
    env.allow("tok-v2", 1).await;
    let kv = f.l2_key(&sha256("tok-v2"));
    let mut v2 = f.encode(&kv, &body).unwrap();
    v2[2] = b'3';
    redis::cmd("SET")
        .arg(&kv)
        .arg(v2)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let r = get_via(&env, &env.gate, "tok-v2").await;
    assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
}

#[tokio::test]
async fn l2_key_is_an_hmac_and_entries_expire_with_the_token() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| {
        shared(raw, &redis, &key);
        raw.cache.negative_ttl = Duration::from_secs(7);
    })
    .await;
    let exp = env.now() + 90;
    env.answer(
        "tok-secret-value",
        json!({"active": true, "sub": "alice", "exp": exp}),
        1,
    )
    .await;
    env.answer("tok-dead", json!({"active": false}), 1).await;
    get_via(&env, &env.gate, "tok-secret-value").await.echo();
    let r = get_via(&env, &env.gate, "tok-dead").await;
    assert_rejection(&r, 401, "invalid_token");

    let mut c = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    let hash = sha256("tok-secret-value");
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY_SECRET.as_bytes()).unwrap();
    mac.update(b"tokengate l2 key\0");
    mac.update(&hash);
    let want = format!("tokengate:t:{}", hex::encode(mac.finalize().into_bytes()));
    assert!(keys.contains(&want), "{keys:?} lacks {want}");
    assert_eq!(keys.len(), 2, "one entry per token, no lock left: {keys:?}");
    for k in &keys {
        assert!(!k.contains("tok-"), "a raw token in a key: {k}");
        assert!(
            !k.contains(&hex::encode(hash)) && !k.contains(&hex::encode(sha256("tok-dead"))),
            "a plain SHA-256 in a key: {k}"
        );
        let v: Vec<u8> = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
        assert!(
            !String::from_utf8_lossy(&v).contains("tok-"),
            "token in value"
        );
    }
    // Redis expires the entries itself: at exp for the token, after
    // negative_ttl for the inactive one.
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&want)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 90_000, "PTTL {pttl} ms, exp in 90 s");
    let dead = fleet(&env.gate).l2_key(&sha256("tok-dead"));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&dead)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        pttl > 0 && pttl <= 7_000,
        "PTTL {pttl} ms, negative_ttl 7 s"
    );
}

#[tokio::test]
async fn replicas_that_see_a_new_token_at_once_introspect_it_once() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| shared(raw, &redis, &key)).await;
    let r2 = replica(&env, &redis, &key).await;
    let r3 = replica(&env, &redis, &key).await;
    let body = json!({"active": true, "sub": "alice", "exp": env.now() + 3600});
    introspection_of("tok-herd")
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(body)
                .set_delay(Duration::from_millis(400)),
        )
        .expect(1)
        .mount(&env.auth)
        .await;
    let gates = [&env.gate, &r2, &r3];
    let calls = gates.iter().flat_map(|g| {
        (0..3).map(|_| async {
            let r = get_via(&env, g, "tok-herd").await;
            r.status
        })
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(env.introspections().await.len(), 1);
    let waits: u64 = gates.iter().map(|g| fleet(g).stats().lock_waits).sum();
    let acquired: u64 = gates.iter().map(|g| fleet(g).stats().lock_acquired).sum();
    assert_eq!(acquired, 1, "one replica introspects");
    assert!(waits <= 2, "the others wait for it: {waits}");
}

#[tokio::test]
async fn a_redis_that_never_answers_costs_one_timeout_not_an_error() {
    // A "Redis" that accepts connections and never says a word: the slowest
    // possible Redis. Every call hits `cache.shared.timeout`.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = blackhole.local_addr().unwrap().port();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = blackhole.accept().await {
            keep.lock().unwrap().push(s);
        }
    });
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| {
        raw.cache.shared.url = tokengate::config::RedisUrl(format!("redis://127.0.0.1:{port}"));
        raw.cache.shared.key_secret_file = key.path();
        raw.cache.shared.timeout = Duration::from_millis(100);
    })
    .await;
    for n in 0..5 {
        env.allow(&format!("tok-slow{n}"), 1).await;
        let r = get_via(&env, &env.gate, &format!("tok-slow{n}")).await;
        assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    }
    let s = fleet(&env.gate).stats();
    assert!(s.l2_errors >= 1 && s.l2_skipped >= 1, "{s:?}");
    assert_eq!(s.l2_hits + s.l2_writes, 0, "{s:?}");
    assert!(!held.lock().unwrap().is_empty(), "tokengate did connect");
}

#[tokio::test]
async fn admin_purge_on_one_replica_reaches_the_other_and_metrics_show_the_fleet() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| shared(raw, &redis, &key)).await;
    let r2 = replica(&env, &redis, &key).await;
    subscribed(&[&env.gate, &r2]).await;
    let body = json!({"active": true, "sub": "bob", "exp": env.now() + 3600});
    introspection_of("tok-admin")
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .up_to_n_times(1)
        .expect(1)
        .mount(&env.auth)
        .await;
    assert_eq!(get_via(&env, &env.gate, "tok-admin").await.status, 200);
    assert_eq!(get_via(&env, &r2, "tok-admin").await.status, 200);
    assert_eq!(env.introspections().await.len(), 1, "replica 2 read L2");

    // Revoked at the AS, purged through replica 1's admin endpoint.
    env.answer("tok-admin", json!({"active": false}), 1).await;
    let r = env
        .purge("application/x-www-form-urlencoded", "token=tok-admin", None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let f2 = fleet(&r2);
    eventually("replica 2 hears the purge", Duration::from_secs(5), || {
        f2.stats().purges_received >= 1
    })
    .await;
    assert_rejection(&get_via(&env, &r2, "tok-admin").await, 401, "invalid_token");

    let m1 = env.scrape().await;
    assert_eq!(
        m1.sum("tokengate_purge_messages_total", &[("kind", "sent")]),
        1.0
    );
    assert!(
        m1.sum(
            "tokengate_shared_cache_operations_total",
            &[("kind", "write")]
        ) >= 1.0
    );
    let r = send(
        &env.http1,
        request(Method::GET, &r2.admin_url("/metrics"))
            .body(empty())
            .unwrap(),
    )
    .await;
    let m2 = Scrape::parse(&r.text()).expect("replica 2 metrics parse");
    assert_eq!(
        m2.sum(
            "tokengate_shared_cache_operations_total",
            &[("kind", "hit")]
        ),
        1.0
    );
    assert!(m2.sum("tokengate_purge_messages_total", &[("kind", "received")]) >= 1.0);
}

/// stale_if_error with a fleet: an L1 entry past its fresh time is revalidated
/// from L2 (another replica's answer) without calling the failing AS; only when
/// L2 has nothing either is the L1 entry served stale; and a purge drops the
/// stale entry too.
#[tokio::test]
async fn a_stale_l1_entry_revalidates_from_l2_before_it_is_served_stale() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| {
        shared(raw, &redis, &key);
        raw.cache.max_ttl = Duration::from_secs(60);
        raw.resilience.stale_if_error = Duration::from_secs(30);
        raw.resilience.breaker_failures = 0;
    })
    .await;
    let token = "tok-stale-l2";
    env.allow(token, 1).await;
    assert_eq!(get_via(&env, &env.gate, token).await.status, 200);
    assert_eq!(fleet(&env.gate).stats().l2_writes, 1);

    // The AS fails from now on.
    env.auth.reset().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(500))
        .mount(&env.auth)
        .await;
    let stale_answers = || async { env.scrape().await.sum("tokengate_stale_answers_total", &[]) };

    // Past L1's fresh time (injected clock). Our own L2 entry is past its
    // MAC'd expiry too (same lifetime), but another replica has just written
    // a fresh answer: the revalidation is an L2 hit.
    env.advance(Duration::from_secs(61));
    let f = fleet(&env.gate);
    let k = f.l2_key(&sha256(token));
    let now_ms = u64::try_from(env.now()).unwrap() * 1000;
    let fresh: tokengate::introspection::Introspection =
        serde_json::from_value(json!({"active": true, "sub": "alice", "exp": env.now() + 3600}))
            .unwrap();
    redis::cmd("SET")
        .arg(&k)
        .arg(f.encode_at(&k, &fresh, now_ms, now_ms + 60_000).unwrap())
        .query_async::<()>(&mut redis.conn().await)
        .await
        .unwrap();
    let r = get_via(&env, &env.gate, token).await;
    assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    assert_eq!(env.introspections().await.len(), 0, "answered by L2");
    assert_eq!(fleet(&env.gate).stats().l2_hits, 1);
    assert_eq!(stale_answers().await, 0.0);

    // L2 loses it: now the failing AS is asked, and the L1 entry is served stale.
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut redis.conn().await)
        .await
        .unwrap();
    env.advance(Duration::from_secs(61));
    let r = get_via(&env, &env.gate, token).await;
    assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    assert_eq!(env.introspections().await.len(), 1);
    assert_eq!(stale_answers().await, 1.0);

    // A purged token is not served stale.
    fleet(&env.gate)
        .purge(&sha256(token))
        .await
        .expect("purge published");
    let r = get_via(&env, &env.gate, token).await;
    assert_rejection(&r, 503, "temporarily_unavailable");
    assert_eq!(stale_answers().await, 1.0);
}

/// A `[upstream_tls] ca_file` holding `ca`'s certificate, in a fresh temp
/// directory (a public certificate; left behind like the other test files).
fn ca_file(ca: &TestCa) -> String {
    let p = temp_dir("redis-ca").join("ca.pem");
    std::fs::write(&p, ca.pem()).unwrap();
    p.display().to_string()
}

/// `rediss://` to a Redis whose certificate comes from a private CA: with that
/// CA in `[upstream_tls] ca_file` both connections (commands and the purge
/// subscriber) verify it, so L2 and purges work as over plain TCP.
#[tokio::test]
async fn rediss_with_upstream_tls_ca_file_shares_l2_and_purges() {
    let ca = TestCa::new("tokengate test redis CA");
    let Some(redis) = RedisServer::start_with(None, Some(&ca)).await else {
        return;
    };
    assert!(
        redis.url().starts_with("rediss://localhost:"),
        "{}",
        redis.url()
    );
    let key = KeyFile::new(KEY_SECRET);
    let ca_path = ca_file(&ca);
    let env = Env::start_with(|raw| {
        shared(raw, &redis, &key);
        raw.upstream_tls.ca_file = ca_path.clone();
    })
    .await;
    let mut raw = base_config(&env.auth, &env.upstream.url());
    shared(&mut raw, &redis, &key);
    raw.upstream_tls.ca_file = ca_path.clone();
    let r2 = Gate::start(&raw).await;
    // The subscriber's own connection is up over TLS too.
    subscribed(&[&env.gate, &r2]).await;

    let body = json!({"active": true, "sub": "alice", "scope": "read", "exp": env.now() + 3600});
    introspection_of("tok-tls")
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .up_to_n_times(1)
        .expect(1)
        .mount(&env.auth)
        .await;
    let r = get_via(&env, &env.gate, "tok-tls").await;
    assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    let r = get_via(&env, &r2, "tok-tls").await;
    assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    assert_eq!(env.introspections().await.len(), 1, "replica 2 read L2");
    let (f1, f2) = (fleet(&env.gate), fleet(&r2));
    assert_eq!((f1.stats().l2_writes, f2.stats().l2_hits), (1, 1));
    assert_eq!(f1.stats().l2_errors + f2.stats().l2_errors, 0);
    // The entry is in this (TLS-only) Redis.
    let exists: bool = redis::cmd("EXISTS")
        .arg(f1.l2_key(&sha256("tok-tls")))
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert!(exists);

    // Revoked and purged through replica 2: replica 1 hears it over TLS.
    env.answer("tok-tls", json!({"active": false}), 1).await;
    f2.purge(&sha256("tok-tls")).await.expect("purge published");
    eventually("replica 1 hears the purge", Duration::from_secs(5), || {
        f1.stats().purges_received >= 1
    })
    .await;
    assert_rejection(
        &get_via(&env, &env.gate, "tok-tls").await,
        401,
        "invalid_token",
    );
    assert_eq!(env.introspections().await.len(), 2);
}

/// The same TLS Redis without the CA: the handshake fails (unknown issuer), so
/// L2 is unavailable. Requests are still answered by introspection, never a
/// 5xx, and the failures are counted.
#[tokio::test]
async fn rediss_without_the_ca_file_fails_closed_to_introspection() {
    let ca = TestCa::new("tokengate untrusted redis CA");
    let Some(redis) = RedisServer::start_with(None, Some(&ca)).await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| shared(raw, &redis, &key)).await;
    for n in 0..4 {
        let token = format!("tok-untrusted{n}");
        env.allow(&token, 1).await;
        let r = get_via(&env, &env.gate, &token).await;
        assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    }
    assert_eq!(env.introspections().await.len(), 4);
    let f = fleet(&env.gate);
    let s = f.stats();
    assert!(s.l2_errors >= 1, "handshake failures are errors: {s:?}");
    assert_eq!(
        (s.l2_hits, s.l2_writes, s.l2_misses, s.l1_resyncs),
        (0, 0, 0, 0),
        "nothing was read or written, the subscriber never got in: {s:?}"
    );
    assert!(!f.is_subscribed());
    let m = env.scrape().await;
    assert!(
        m.sum(
            "tokengate_shared_cache_operations_total",
            &[("kind", "error")]
        ) >= 1.0
    );
}

/// A password in the URL (`redis://:secret@host`): it authenticates both
/// connections; a wrong one makes L2 unavailable (introspection answers, the
/// failure is counted); and it never shows in Debug or `--check-config`.
#[tokio::test]
async fn a_password_in_the_url_authenticates_and_a_wrong_one_falls_back() {
    const PASSWORD: &str = "s3cret-redis-pw";
    let Some(redis) = RedisServer::start_with(Some(PASSWORD), None).await else {
        return;
    };
    assert!(redis.url().contains(&format!(":{PASSWORD}@")));
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| shared(raw, &redis, &key)).await;
    let r2 = replica(&env, &redis, &key).await;
    subscribed(&[&env.gate, &r2]).await;
    let body = json!({"active": true, "sub": "alice", "exp": env.now() + 3600});
    introspection_of("tok-pw")
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .up_to_n_times(1)
        .expect(1)
        .mount(&env.auth)
        .await;
    get_via(&env, &env.gate, "tok-pw").await.echo();
    let r = get_via(&env, &r2, "tok-pw").await;
    assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    assert_eq!(env.introspections().await.len(), 1, "replica 2 read L2");
    assert_eq!(fleet(&r2).stats().l2_hits, 1);

    // A replica with the wrong password: every request still succeeds through
    // the AS; the refused AUTH counts as an error, not as a miss.
    let wrong = "wrong-redis-pw-42";
    let mut raw = base_config(&env.auth, &env.upstream.url());
    shared(&mut raw, &redis, &key);
    raw.cache.shared.url =
        tokengate::config::RedisUrl(format!("redis://:{wrong}@127.0.0.1:{}/0", redis.port));
    let bad = Gate::start(&raw).await;
    for n in 0..3 {
        let token = format!("tok-wrongpw{n}");
        env.allow(&token, 1).await;
        let r = get_via(&env, &bad, &token).await;
        assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    }
    assert_eq!(env.introspections().await.len(), 4);
    let f = fleet(&bad);
    let s = f.stats();
    assert!(s.l2_errors >= 1, "{s:?}");
    assert_eq!((s.l2_hits, s.l2_writes, s.l2_garbage), (0, 0, 0), "{s:?}");
    assert!(!f.is_subscribed());

    // Neither password in Debug (raw config, settings, the fleet) nor in the
    // redacted TOML.
    let settings = raw.validate().unwrap();
    for shown in [
        format!("{raw:?}"),
        format!("{settings:?}"),
        format!("{:?}", fleet(&env.gate)),
        format!("{:?}", fleet(&bad)),
        raw.to_redacted_toml(),
    ] {
        assert!(
            !shown.contains(wrong) && !shown.contains(PASSWORD),
            "{shown}"
        );
    }

    // `--check-config` of the real binary with the right password in the file.
    let dir = temp_dir("redis-pw-check");
    let config = dir.join("tokengate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
listen = "127.0.0.1:0"
upstream = "{upstream}"

[introspection]
url = "{auth}{INTROSPECT_PATH}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"

[cache.shared]
url = "{url}"
key_secret_file = "{key}"
"#,
            upstream = env.upstream.url(),
            auth = env.auth.uri(),
            url = redis.url(),
            key = key.path(),
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run_bin(
        &[],
        &["--check-config", "--config", &config.display().to_string()],
    )
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("127.0.0.1:{}", redis.port)),
        "{stdout}"
    );
    assert!(
        !stdout.contains(PASSWORD) && !stderr.contains(PASSWORD),
        "{stdout}\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_reloaded_cache_lifetime_applies_to_new_l2_entries() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| shared(raw, &redis, &key)).await;
    // Shorter lifetimes from a reload: L2 must follow them like L1 does.
    let mut raw = base_config(&env.auth, &env.upstream.url());
    shared(&mut raw, &redis, &key);
    raw.cache.max_ttl = Duration::from_secs(20);
    raw.cache.negative_ttl = Duration::from_secs(3);
    env.gate
        .reload()
        .reload(raw.validate().unwrap())
        .expect("a valid config reloads");

    env.answer(
        "tok-long",
        json!({"active": true, "sub": "alice", "exp": env.now() + 3600}),
        1,
    )
    .await;
    env.answer("tok-gone", json!({"active": false}), 1).await;
    assert_eq!(get_via(&env, &env.gate, "tok-long").await.status, 200);
    assert_rejection(
        &get_via(&env, &env.gate, "tok-gone").await,
        401,
        "invalid_token",
    );

    let mut c = redis.conn().await;
    let f = fleet(&env.gate);
    for (token, max_ms) in [("tok-long", 20_000), ("tok-gone", 3_000)] {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(f.l2_key(&sha256(token)))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(
            pttl > 0 && pttl <= max_ms,
            "{token}: PTTL {pttl} ms, want ≤ {max_ms}"
        );
    }
}

// ---------------------------------------------------------------------------
// Issue 12, item 6: replaying a saved L2 value
// ---------------------------------------------------------------------------

async fn redis_get(redis: &RedisServer, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut redis.conn().await)
        .await
        .unwrap()
}

/// What someone with write access to Redis (but not the HMAC key) can do:
/// write saved bytes back, without an expiry.
async fn redis_set_forever(redis: &RedisServer, key: &str, value: &[u8]) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async::<()>(&mut redis.conn().await)
        .await
        .unwrap();
}

/// The attack: save a token's L2 value, wait until the token is revoked and
/// purged (the next request is a 401), write the saved bytes back without
/// expiry. Before the fix, a replica without the token in L1 served the
/// revoked token from L2 (`cache="miss"`, 200) until `exp`, or forever for an
/// answer without `exp`.
async fn replayed_value_is_refused_after_a_purge(token: &str, answer: serde_json::Value) {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| shared(raw, &redis, &key)).await;
    let r2 = replica(&env, &redis, &key).await;
    subscribed(&[&env.gate, &r2]).await;
    introspection_of(token)
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .up_to_n_times(1)
        .expect(1)
        .named("active before the revocation")
        .mount(&env.auth)
        .await;
    assert_eq!(get_via(&env, &env.gate, token).await.status, 200);
    let k = fleet(&env.gate).l2_key(&sha256(token));
    let saved = redis_get(&redis, &k).await.expect("the L2 value");

    // Revoked at the AS and purged (what admin POST /purge does), fleet-wide.
    // Replicas 1 and 2 and the replica started later each ask the AS once.
    env.answer(token, json!({"active": false}), 3).await;
    let r = env
        .purge(
            "application/x-www-form-urlencoded",
            &format!("token={token}"),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let f2 = fleet(&r2);
    eventually("replica 2 hears the purge", Duration::from_secs(5), || {
        f2.stats().purges_received >= 1
    })
    .await;
    assert_rejection(&get_via(&env, &env.gate, token).await, 401, "invalid_token");

    // The replay, read by a replica that has no L1 entry for the token.
    redis_set_forever(&redis, &k, &saved).await;
    let r = get_via(&env, &r2, token).await;
    assert_rejection(&r, 401, "invalid_token");
    assert_eq!(f2.stats().l2_refused, 1, "{:?}", f2.stats());
    assert_eq!(f2.stats().l2_hits, 0);

    // A replica started after the purge has no memory of it: the tombstone
    // that the purge left in Redis refuses the value.
    redis_set_forever(&redis, &k, &saved).await;
    let r3 = replica(&env, &redis, &key).await;
    let r = get_via(&env, &r3, token).await;
    assert_rejection(&r, 401, "invalid_token");
    assert_eq!(fleet(&r3).stats().l2_refused, 1);
    assert_eq!(
        env.upstream.hits(),
        1,
        "only the request before the revocation"
    );
}

#[tokio::test]
async fn a_saved_l2_value_written_back_after_a_purge_is_refused() {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    replayed_value_is_refused_after_a_purge(
        "tok-replay-exp",
        json!({"active": true, "sub": "mallory", "scope": "read", "exp": exp}),
    )
    .await;
}

#[tokio::test]
async fn a_saved_l2_value_without_exp_written_back_after_a_purge_is_refused() {
    replayed_value_is_refused_after_a_purge(
        "tok-replay-noexp",
        json!({"active": true, "sub": "mallory", "scope": "read"}),
    )
    .await;
}

/// A value past the expiry MAC'd into it is refused, even if Redis still
/// holds it (written back without expiry), and even for an answer without
/// `exp`: before the fix it was served until `exp`, or forever.
#[tokio::test]
async fn an_l2_value_past_its_macd_expiry_is_refused() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| {
        shared(raw, &redis, &key);
        raw.cache.max_ttl = Duration::from_secs(60);
    })
    .await;
    let token = "tok-old-value";
    introspection_of(token)
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"active": true, "sub": "alice"})),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&env.auth)
        .await;
    assert_eq!(get_via(&env, &env.gate, token).await.status, 200);
    let f = fleet(&env.gate);
    let k = f.l2_key(&sha256(token));
    let saved = redis_get(&redis, &k).await.expect("the L2 value");
    assert!(f.decode(&k, &saved).is_some());

    // Revoked (no purge); the L1 entry and the L2 value are both 60 s old on
    // tokengate's clock. Redis (on its own clock) would still hold the value,
    // and someone could write it back anyway.
    env.answer(token, json!({"active": false}), 1).await;
    env.advance(Duration::from_secs(61));
    assert!(f.decode(&k, &saved).is_none(), "past its MAC'd expiry");
    redis_set_forever(&redis, &k, &saved).await;
    let r = get_via(&env, &env.gate, token).await;
    assert_rejection(&r, 401, "invalid_token");
    assert_eq!(f.stats().l2_refused, 1);
}

/// An answer read from L2 is fresh in the reader's L1 no longer than the L2
/// entry it came from (its end is MAC'd into the value). Before, it started a
/// fresh `max_ttl` there: a revoked token could pass for 2 × `max_ttl`.
#[tokio::test]
async fn an_l1_copy_of_an_l2_answer_lives_no_longer_than_the_l2_entry() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| {
        shared(raw, &redis, &key);
        raw.cache.max_ttl = Duration::from_secs(60);
    })
    .await;
    let mut raw = base_config(&env.auth, &env.upstream.url());
    shared(&mut raw, &redis, &key);
    raw.cache.max_ttl = Duration::from_secs(60);
    let r2 = Gate::start(&raw).await;
    let token = "tok-l1-copy";
    introspection_of(token)
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"active": true, "sub": "alice"})),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&env.auth)
        .await;
    assert_eq!(get_via(&env, &env.gate, token).await.status, 200);
    // Replica 2 reads the entry when it is 30 s old.
    r2.clock.advance(Duration::from_secs(30));
    assert_eq!(get_via(&env, &r2, token).await.status, 200);
    assert_eq!(fleet(&r2).stats().l2_hits, 1);
    // Revoked (no purge). 31 s later the L2 entry's 60 s are over, and so is
    // replica 2's copy: it asks the AS.
    env.answer(token, json!({"active": false}), 1).await;
    r2.clock.advance(Duration::from_secs(31));
    assert_rejection(&get_via(&env, &r2, token).await, 401, "invalid_token");
}

/// A purge that arrives while the token is being introspected: the answer (from
/// before the revocation) may answer the request that asked, but no cache may
/// keep it. Before, the replica put it into its L1 after the purge had dropped
/// the old entry, and the revoked token passed for another `max_ttl`.
#[tokio::test]
async fn an_answer_that_raced_a_purge_is_not_cached() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = KeyFile::new(KEY_SECRET);
    let env = Env::start_with(|raw| shared(raw, &redis, &key)).await;
    subscribed(&[&env.gate]).await;
    let token = "tok-raced";
    introspection_of(token)
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"active": true, "sub": "alice"}))
                .set_delay(Duration::from_millis(500)),
        )
        .up_to_n_times(1)
        .expect(1)
        .named("active, slow: the purge lands meanwhile")
        .mount(&env.auth)
        .await;
    env.answer(token, json!({"active": false}), 1).await;
    let purge_during_the_call = async {
        let start = tokio::time::Instant::now();
        while env.introspections().await.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no introspection call"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        fleet(&env.gate)
            .purge(&sha256(token))
            .await
            .expect("purge published");
    };
    let (r, ()) = tokio::join!(get_via(&env, &env.gate, token), purge_during_the_call);
    assert_eq!(r.status, 200, "the request began before the purge");
    assert_rejection(&get_via(&env, &env.gate, token).await, 401, "invalid_token");
}
