//! Failure modes and limits, end to end: AS failures of every kind, the circuit
//! breaker, stale-if-error, and the header / body / connection / idle limits.

mod common;

use common::*;
use http::Method;
use serde_json::{json, Value};
use std::time::Duration;
use tokengate::config::RawRoute;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wiremock::matchers::any;
use wiremock::{Mock, ResponseTemplate};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Every AS failure: 503, `Retry-After`, JSON, no challenge.
fn assert_503(r: &Resp) {
    assert_ne!(
        r.status, 401,
        "an AS failure must never look like a bad token"
    );
    assert_rejection(r, 503, "temporarily_unavailable");
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(r.header("www-authenticate").is_none());
}

/// [`assert_503`], in a test where nothing was ever forwarded.
fn assert_as_failure(r: &Resp, env: &Env) {
    assert_503(r);
    assert_eq!(
        env.upstream.hits(),
        0,
        "nothing is forwarded on an AS failure"
    );
}

/// The AS answers 500 to everything.
async fn as_down(env: &Env) {
    env.auth.reset().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(500))
        .mount(&env.auth)
        .await;
}

/// Moves tokio's clock (the breaker's) forward at once, then lets it run on in
/// real time, so real sockets keep working around the jump. The wall clock
/// (`ManualClock`) and moka are not affected.
async fn jump_tokio_clock(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

fn public_everything(c: &mut tokengate::config::RawConfig) {
    c.routes = vec![RawRoute::public("/")];
}

/// JSON log lines about one token (by fingerprint).
fn lines_for(logs: &LogBuf, token: &str) -> Vec<Value> {
    let fp = fingerprint(token);
    logs.json_lines()
        .into_iter()
        .filter(|l| l["token"] == fp.as_str())
        .collect()
}

fn access_cache_field(logs: &LogBuf, token: &str) -> Vec<String> {
    lines_for(logs, token)
        .into_iter()
        .filter(|l| l["target"] == "tokengate::access")
        .map(|l| l["cache"].as_str().unwrap_or_default().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// AS failures
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_503_with_retry_after_json_and_a_warning_naming_each_as_failure() {
    let logs = capture();
    let env = Env::start_with(|c| {
        c.introspection.timeout = Duration::from_millis(300);
        c.resilience.breaker_failures = 0;
    })
    .await;
    let cases: [(&str, ResponseTemplate, &str); 5] = [
        (
            "fail-hang-Qz1",
            ResponseTemplate::new(200)
                .set_body_json(json!({"active": true}))
                .set_delay(Duration::from_secs(5)),
            "timeout",
        ),
        ("fail-500-Qz2", ResponseTemplate::new(500), "status"),
        (
            "fail-401-Qz3",
            ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})),
            "unauthorized",
        ),
        (
            "fail-html-Qz4",
            ResponseTemplate::new(200).set_body_raw("<html>oops</html>", "text/html"),
            "invalid_response",
        ),
        (
            "fail-json-Qz5",
            ResponseTemplate::new(200).set_body_json(json!({"active": "yes"})),
            "invalid_response",
        ),
    ];
    for (token, answer, _) in &cases {
        introspection_of(token)
            .respond_with(answer.clone())
            .mount(&env.auth)
            .await;
    }
    for (token, _, kind) in &cases {
        let r = env.get("/x", token).await;
        assert_as_failure(&r, &env);
        let warned = lines_for(&logs, token).into_iter().any(|l| {
            l["level"] == "WARN"
                && l["kind"] == *kind
                && l["message"].as_str().unwrap().contains("503")
        });
        assert!(
            warned,
            "{token}: no WARN line with kind={kind}:\n{}",
            logs.text()
        );
    }

    // Refused: nothing listens on the AS port.
    let dead = closed_addr().await;
    let env = Env::start_with(|c| {
        c.introspection.url = format!("http://{dead}{INTROSPECT_PATH}");
    })
    .await;
    let token = "fail-refused-Qz6";
    assert_as_failure(&env.get("/x", token).await, &env);
    assert!(lines_for(&logs, token)
        .iter()
        .any(|l| l["level"] == "WARN" && l["kind"] == "connect"));
}

// ---------------------------------------------------------------------------
// Circuit breaker
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_open_the_breaker_fail_fast_then_probe_and_close() {
    let logs = capture();
    let env = Env::start_with(|c| {
        c.resilience.breaker_failures = 3;
        c.resilience.breaker_open_for = Duration::from_secs(10);
    })
    .await;
    as_down(&env).await;
    let calls = || async { env.introspections().await.len() };

    // Closed: each failure reaches the AS, until the third opens the circuit.
    // A 500 may be the token's doing, so before it opens the circuit the
    // breaker asks the AS about a random token (the canary): one more call,
    // which fails too.
    for i in 0..3 {
        assert_as_failure(&env.get("/x", &format!("brk-closed-{i}")).await, &env);
    }
    assert_eq!(calls().await, 3 + 1);

    // Open: 503 without calling the AS, for any uncached token.
    for i in 0..5 {
        assert_as_failure(&env.get("/x", &format!("brk-open-{i}")).await, &env);
    }
    assert_eq!(calls().await, 4, "an open circuit must not call the AS");
    assert!(
        lines_for(&logs, "brk-open-0")
            .iter()
            .any(|l| l["kind"] == "circuit_open"),
        "the fast 503 is logged as circuit_open"
    );

    // Still open just before the period ends.
    jump_tokio_clock(Duration::from_secs(9)).await;
    assert_as_failure(&env.get("/x", "brk-open-late").await, &env);
    assert_eq!(calls().await, 4);

    // Half-open: one probe goes through; it fails, so the circuit re-opens.
    jump_tokio_clock(Duration::from_secs(1)).await;
    assert_as_failure(&env.get("/x", "brk-probe-1").await, &env);
    assert_eq!(calls().await, 4 + 2, "exactly one probe (and its canary)");
    assert_as_failure(&env.get("/x", "brk-reopened").await, &env);
    assert_eq!(calls().await, 6, "a failed probe re-opens the circuit");

    // Next period: the AS is back, the probe succeeds and closes the circuit.
    jump_tokio_clock(Duration::from_secs(10)).await;
    env.auth.reset().await;
    env.allow("brk-probe-2", 1).await;
    env.answer("brk-after", json!({"active": false}), 1).await;
    assert_eq!(env.get("/x", "brk-probe-2").await.status, 200);
    // Closed: the next uncached token is introspected again (and `active:false`
    // is an answer, not a failure).
    assert_rejection(&env.get("/x", "brk-after").await, 401, "invalid_token");
    assert_eq!(env.introspections().await.len(), 2);
}

/// The breaker seen from operations: `tokengate_breaker_state`, the
/// `circuit_open` outcome, and `/readyz` (the issue: not ready while open).
#[tokio::test]
async fn should_export_the_breaker_state_and_be_unready_only_while_it_is_open() {
    let env = Env::start_with(|c| {
        c.resilience.breaker_failures = 2;
        c.resilience.breaker_open_for = Duration::from_secs(10);
    })
    .await;
    let breaker_state = |m: &Scrape| m.sum("tokengate_breaker_state", &[]);
    let refused = |m: &Scrape| {
        m.sum(
            "tokengate_introspections_total",
            &[("outcome", "circuit_open")],
        )
    };
    let m = env.scrape().await;
    assert_eq!(breaker_state(&m), 0.0, "closed at start");
    assert_eq!(
        refused(&m),
        0.0,
        "the circuit_open series exists from the start"
    );
    assert_eq!(env.admin_get("/readyz").await.status, 200);

    as_down(&env).await;
    for i in 0..2 {
        assert_as_failure(&env.get("/x", &format!("brk-ops-{i}")).await, &env);
    }
    assert_as_failure(&env.get("/x", "brk-ops-fast").await, &env);
    let m = env.scrape().await;
    assert_eq!(breaker_state(&m), 2.0, "open");
    assert_eq!(refused(&m), 1.0, "the fast 503 is counted as circuit_open");
    assert_eq!(
        m.sum("tokengate_introspections_total", &[("outcome", "status")]),
        2.0
    );
    let r = env.admin_get("/readyz").await;
    assert_eq!(r.status, 503, "not ready while the breaker is open");
    assert!(r.text().contains("breaker"), "{}", r.text());
    assert_eq!(env.admin_get("/healthz").await.status, 200, "still alive");

    // The open period is over: half-open, ready again so that a probe can come.
    jump_tokio_clock(Duration::from_secs(10)).await;
    assert_eq!(breaker_state(&env.scrape().await), 1.0, "half-open");
    assert_eq!(env.admin_get("/readyz").await.status, 200);

    // A failed probe re-opens it: unready again.
    assert_as_failure(&env.get("/x", "brk-ops-probe-1").await, &env);
    assert_eq!(breaker_state(&env.scrape().await), 2.0);
    assert_eq!(env.admin_get("/readyz").await.status, 503);

    // The AS is back; the next probe closes the breaker.
    jump_tokio_clock(Duration::from_secs(10)).await;
    env.auth.reset().await;
    env.allow("brk-ops-probe-2", 1).await;
    assert_eq!(env.get("/x", "brk-ops-probe-2").await.status, 200);
    assert_eq!(breaker_state(&env.scrape().await), 0.0, "closed");
    assert_eq!(env.admin_get("/readyz").await.status, 200);
}

// ---------------------------------------------------------------------------
// stale_if_error
// ---------------------------------------------------------------------------

fn stale_config(c: &mut tokengate::config::RawConfig) {
    c.cache.max_ttl = Duration::from_secs(60);
    c.resilience.stale_if_error = Duration::from_secs(30);
    c.resilience.breaker_failures = 0;
}

#[tokio::test]
async fn should_serve_a_cached_token_stale_while_the_as_fails_within_the_window_only() {
    let logs = capture();
    let env = Env::start_with(stale_config).await;
    let token = "stale-window-Kp1";
    let stale_answers = || async { env.scrape().await.sum("tokengate_stale_answers_total", &[]) };
    env.allow(token, 1).await;
    assert_eq!(env.get("/x", token).await.status, 200);
    assert_eq!(stale_answers().await, 0.0);

    as_down(&env).await;
    env.advance(Duration::from_secs(61)); // past the 60 s TTL, inside the 30 s window
    let r = env.get("/x", token).await;
    assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    assert_eq!(stale_answers().await, 1.0);
    assert_eq!(env.get("/x", token).await.status, 200);
    assert_eq!(stale_answers().await, 2.0, "every stale answer counts");
    assert_eq!(
        env.introspections().await.len(),
        2,
        "each request tried to revalidate first"
    );
    assert_eq!(
        access_cache_field(&logs, token).last().map(String::as_str),
        Some("stale")
    );
    assert!(lines_for(&logs, token)
        .iter()
        .any(|l| l["level"] == "WARN" && l["kind"] == "status"));

    env.advance(Duration::from_secs(30)); // 91 s: past TTL + window
    let r = env.get("/x", token).await;
    assert_rejection(&r, 503, "temporarily_unavailable");
    assert_eq!(env.upstream.hits(), 3);
    assert_eq!(stale_answers().await, 2.0, "a 503 is not a stale answer");
}

#[tokio::test]
async fn should_never_serve_stale_past_exp() {
    let env = Env::start_with(stale_config).await;
    let token = "stale-exp-Kp2";
    // exp in 70 s: fresh for 60 s; the window would reach 90 s, exp cuts it at 70.
    let body = json!({"active": true, "sub": "alice", "exp": env.now() + 70});
    env.answer(token, body, 1).await;
    assert_eq!(env.get("/x", token).await.status, 200);

    as_down(&env).await;
    env.advance(Duration::from_secs(65));
    assert_eq!(env.get("/x", token).await.status, 200, "stale, before exp");
    env.advance(Duration::from_secs(6));
    let r = env.get("/x", token).await;
    assert_rejection(&r, 401, "invalid_token");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("expired"));
}

#[tokio::test]
async fn should_never_serve_stale_for_a_token_found_inactive() {
    let env = Env::start_with(stale_config).await;
    let token = "stale-revoked-Kp3";
    env.allow(token, 1).await;
    assert_eq!(env.get("/x", token).await.status, 200);

    // Revoked: the revalidation says inactive, which lands in the negative cache.
    env.auth.reset().await;
    env.answer(token, json!({"active": false}), 1).await;
    env.advance(Duration::from_secs(61));
    assert_rejection(&env.get("/x", token).await, 401, "invalid_token");

    // Now the AS fails too: the negative answer stands, nothing stale is served.
    as_down(&env).await;
    assert_rejection(&env.get("/x", token).await, 401, "invalid_token");
    assert_eq!(env.upstream.hits(), 1);
}

#[tokio::test]
async fn should_serve_stale_without_calling_the_as_while_the_breaker_is_open() {
    let logs = capture();
    let env = Env::start_with(|c| {
        stale_config(c);
        c.resilience.breaker_failures = 1;
    })
    .await;
    let token = "stale-breaker-Kp4";
    env.allow(token, 1).await;
    assert_eq!(env.get("/x", token).await.status, 200);

    as_down(&env).await;
    env.advance(Duration::from_secs(61));
    assert_eq!(
        env.get("/x", token).await.status,
        200,
        "stale; opens the breaker"
    );
    // The revalidation, and the breaker's canary (a random token) that
    // confirms the AS is down before the circuit opens.
    assert_eq!(env.introspections().await.len(), 2);
    assert_eq!(
        env.get("/x", token).await.status,
        200,
        "stale; circuit open"
    );
    assert_eq!(env.introspections().await.len(), 2, "no call while open");
    assert_eq!(
        access_cache_field(&logs, token),
        ["miss", "stale", "stale"],
        "the access log says stale"
    );
    // An uncached token has nothing to fall back on.
    assert_503(&env.get("/x", "stale-breaker-other").await);
    assert_eq!(env.upstream.hits(), 3);
    assert_eq!(env.introspections().await.len(), 2);
}

#[tokio::test]
async fn should_introspect_a_stale_token_once_for_concurrent_requests() {
    let env = Env::start_with(stale_config).await;
    let token = "stale-flight-Kp5";
    env.allow(token, 1).await;
    assert_eq!(env.get("/x", token).await.status, 200);

    env.auth.reset().await;
    introspection_of(token)
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"active": true, "sub": "bob", "exp": env.now() + 3600}))
                .set_delay(Duration::from_millis(300)),
        )
        .expect(1)
        .mount(&env.auth)
        .await;
    env.advance(Duration::from_secs(61));
    let reqs = (0..50).map(|_| env.get("/x", token));
    for r in futures_util::future::join_all(reqs).await {
        assert_eq!(r.echo().header("x-auth-subject"), Some("bob"));
    }
    assert_eq!(env.introspections().await.len(), 1);
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_431_for_oversized_headers_and_forward_normal_ones() {
    let env = Env::start_with(|c| {
        public_everything(c);
        c.limits.max_header_bytes = 16 * 1024;
    })
    .await;
    let big = "a".repeat(20 * 1024);
    let raw = format!("GET /x HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let out = raw_exchange(env.gate.addr, raw.as_bytes()).await;
    let r = &parse_responses(&out, &[false])[0];
    assert_eq!(r.status, 431);
    assert_eq!(env.upstream.hits(), 0);

    let ok = "a".repeat(8 * 1024);
    let req = request(Method::GET, &env.url("/x"))
        .header("x-ok", ok.as_str())
        .body(empty())
        .unwrap();
    assert_eq!(send(&env.http1, req).await.status, 200);

    // HTTP/2: the header list limit.
    let req = request(Method::GET, &env.url("/x"))
        .header("x-big", big.as_str())
        .body(empty())
        .unwrap();
    let r = send(&env.h2c, req).await;
    assert_eq!(r.status, 431);
    assert_eq!(env.upstream.hits(), 1);
}

#[tokio::test]
async fn should_413_on_content_length_over_the_limit_without_introspecting() {
    let env = Env::start_with(|c| c.limits.max_body_bytes = 1000).await;
    env.forbid_introspection().await;
    let raw = "POST /x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer big-cl\r\n\
               Content-Length: 1001\r\nConnection: close\r\n\r\n";
    let out = raw_exchange(env.gate.addr, raw.as_bytes()).await;
    let r = &parse_responses(&out, &[false])[0];
    assert_eq!(r.status, 413);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"], "request_too_large");
    assert_eq!(env.upstream.hits(), 0);
}

#[tokio::test]
async fn should_413_on_a_chunked_body_over_the_limit_and_never_deliver_it() {
    let env = Env::start_with(|c| c.limits.max_body_bytes = 1000).await;
    env.allow("chunky", 1).await;

    // 3 × 400 bytes, and no terminating chunk yet: the limit trips on the third.
    let chunk = format!("190\r\n{}\r\n", "y".repeat(400));
    let raw = format!(
        "POST /x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer chunky\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}{chunk}{chunk}"
    );
    let out = raw_exchange(env.gate.addr, raw.as_bytes()).await;
    let r = &parse_responses(&out, &[false])[0];
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "request_too_large");

    // Exactly at the limit passes, streamed.
    let req = request(Method::POST, &env.url("/x"))
        .header("authorization", "Bearer chunky")
        .body(streamed_body(1000))
        .unwrap();
    assert_eq!(send(&env.http1, req).await.echo().body_len, Some(1000));

    // The upstream may have seen the first request's head and part of its body,
    // but never all of it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.upstream.bodies(), [1000]);
}

#[tokio::test]
async fn should_413_on_an_h2_body_over_the_limit() {
    let env = Env::start_with(|c| c.limits.max_body_bytes = 100_000).await;
    env.allow("h2body", 1).await;
    let req = request(Method::POST, &env.url("/x"))
        .header("authorization", "Bearer h2body")
        .body(streamed_body(300_000))
        .unwrap();
    let r = send(&env.h2c, req).await;
    assert_rejection(&r, 413, "request_too_large");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(env.upstream.bodies().is_empty());
}

async fn get_on(s: &mut TcpStream, path: &str) -> Option<RawResp> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    read_response(s).await
}

#[tokio::test]
async fn should_hold_new_connections_at_max_connections_until_one_closes() {
    let env = Env::start_with(|c| {
        public_everything(c);
        c.limits.max_connections = 2;
    })
    .await;
    let mut a = TcpStream::connect(env.gate.addr).await.unwrap();
    let mut b = TcpStream::connect(env.gate.addr).await.unwrap();
    assert_eq!(get_on(&mut a, "/a").await.unwrap().status, 200);
    assert_eq!(get_on(&mut b, "/b").await.unwrap().status, 200);

    // The third connection completes in the kernel backlog but is not served.
    let mut c = TcpStream::connect(env.gate.addr).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(500), get_on(&mut c, "/c")).await;
    assert!(
        waiting.is_err(),
        "a third connection was served: {waiting:?}"
    );
    assert_eq!(env.upstream.hits(), 2);

    drop(a);
    let served = tokio::time::timeout(Duration::from_secs(10), read_response(&mut c))
        .await
        .expect("the waiting connection is served once a slot frees up");
    assert_eq!(served.unwrap().status, 200);
    // The kept-alive connection still works.
    assert_eq!(get_on(&mut b, "/b2").await.unwrap().status, 200);
}

#[tokio::test]
async fn should_close_idle_keep_alive_connections_after_idle_timeout() {
    let env = Env::start_with(|c| {
        public_everything(c);
        c.limits.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut s = TcpStream::connect(env.gate.addr).await.unwrap();
    assert_eq!(get_on(&mut s, "/a").await.unwrap().status, 200);
    // Kept alive after the response, then closed for idleness: EOF.
    let closed = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
        .await
        .expect("an idle keep-alive connection must be closed");
    assert!(closed.is_none());

    // A connection that never sends anything is closed too.
    let mut silent = TcpStream::connect(env.gate.addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), read_response(&mut silent))
        .await
        .expect("a silent connection must be closed");
    assert!(closed.is_none());
}

// ---------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------

/// A reload applies `limits.max_body_bytes` and `resilience.stale_if_error` (the
/// latter to entries cached from then on) and keeps the connection-level limits
/// and the breaker settings, which need a restart.
#[tokio::test]
async fn should_reload_body_limit_and_stale_window_and_keep_restart_only_keys() {
    let env = Env::start_with(|c| {
        stale_config(c);
        c.resilience.stale_if_error = Duration::ZERO;
    })
    .await;
    let post = |len: usize| {
        format!(
            "POST /x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer reload-body\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n{}",
            "x".repeat(len)
        )
    };
    env.allow("reload-body", 1).await;
    let out = raw_exchange(env.gate.addr, post(2000).as_bytes()).await;
    assert_eq!(
        parse_responses(&out, &[false])[0].status,
        200,
        "no limit yet"
    );

    let mut raw = base_config(&env.auth, &env.upstream.url());
    stale_config(&mut raw);
    raw.limits.max_body_bytes = 1000;
    raw.resilience.stale_if_error = Duration::from_secs(30);
    raw.limits.max_connections = 7;
    raw.limits.idle_timeout = Duration::from_secs(9);
    raw.limits.max_header_bytes = 10_000;
    raw.resilience.breaker_failures = 9;
    raw.resilience.breaker_open_for = Duration::from_secs(9);
    let report = env.gate.reload().reload(raw.validate().unwrap()).unwrap();
    assert_eq!(
        report.restart_required,
        vec![
            "resilience.breaker_failures",
            "resilience.breaker_open_for",
            "limits.max_header_bytes",
            "limits.max_connections",
            "limits.idle_timeout",
        ]
    );
    let now = env.gate.reload().current();
    assert_eq!(
        now.limits.max_connections,
        Some(10_000),
        "running value kept"
    );
    assert_eq!(now.breaker_failures, 0);

    let out = raw_exchange(env.gate.addr, post(2000).as_bytes()).await;
    let r = &parse_responses(&out, &[false])[0];
    assert_eq!(r.status, 413, "the new body limit applies at once");
    assert_eq!(env.upstream.hits(), 1);

    // The new stale window applies to a token cached after the reload.
    let token = "reload-stale-Kp6";
    env.allow(token, 1).await;
    assert_eq!(env.get("/x", token).await.status, 200);
    as_down(&env).await;
    env.advance(Duration::from_secs(61));
    assert_eq!(env.get("/x", token).await.status, 200, "served stale");
}
