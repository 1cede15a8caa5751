//! Operations: the admin listener (`/healthz`, `/readyz`, `/metrics`,
//! `POST /purge`), graceful shutdown, and config reload — in-process, through
//! real sockets. `tests/binary.rs` repeats shutdown and reload through the real
//! binary and real signals.

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;
use tokengate::config::RawRoute;
use wiremock::ResponseTemplate;

const TOKEN: &str = "ops-token-7f3a9c";

/// Polls `/readyz` until it answers `want` (the flip happens in another task).
async fn wait_ready_status(env: &Env, want: StatusCode) -> Resp {
    for _ in 0..500 {
        let r = env.admin_get("/readyz").await;
        if r.status == want {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("/readyz never answered {want}");
}

fn public_route(prefix: &str) -> RawRoute {
    RawRoute::public(prefix)
}

#[tokio::test]
async fn healthz_readyz_and_unknown_paths() {
    let env = Env::start().await;
    let r = env.admin_get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "ok\n");
    let r = env.admin_get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(env.admin_get("/nope").await.status, StatusCode::NOT_FOUND);
    let r = env.admin_get("/purge").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("POST"));
    // The proxy port does not serve the admin endpoints: /metrics there is an
    // ordinary protected path.
    let r = env.get_with_auth("/metrics", &[]).await;
    assert_rejection(&r, 401, "unauthorized");
}

#[tokio::test]
async fn readyz_follows_pluggable_checks() {
    let env = Env::start().await;
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = flag.clone();
    env.gate
        .readiness
        .as_ref()
        .unwrap()
        .add_check("breaker open", move || {
            !f.load(std::sync::atomic::Ordering::SeqCst)
        });
    let r = env.admin_get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text(), "not ready: breaker open\n");
    flag.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(env.admin_get("/readyz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn readyz_waits_for_discovery() {
    // Discovery configured but never run: no introspection endpoint yet.
    let env = Env::start_with(|raw| {
        raw.introspection.url.clear();
        raw.discovery.issuer = "http://127.0.0.1:9".into();
    })
    .await;
    let r = env.admin_get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().contains("discovered"), "{}", r.text());
    assert_eq!(env.admin_get("/healthz").await.status, StatusCode::OK);
}

/// Shutdown: /readyz turns 503 at once, new connections are refused, the
/// in-flight request still completes, and `run` returns.
#[tokio::test]
async fn shutdown_flips_readiness_and_drains_in_flight_requests() {
    let mut env = Env::start_with(|raw| raw.shutdown_timeout = Duration::from_secs(15)).await;
    env.allow(TOKEN, 1).await;
    assert_eq!(env.admin_get("/readyz").await.status, StatusCode::OK);

    let client = env.http1.clone();
    let req = request(Method::GET, &env.url("/sleep/1500"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(empty())
        .unwrap();
    let slow = tokio::spawn(async move { send(&client, req).await });
    for _ in 0..1000 {
        if env.upstream.hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        env.upstream.hits(),
        1,
        "the slow request never reached the upstream"
    );

    env.gate.begin_shutdown();
    let r = wait_ready_status(&env, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(r.text(), "not ready: shutting down\n");
    assert_eq!(
        env.admin_get("/healthz").await.status,
        StatusCode::OK,
        "still live while draining"
    );
    // The listener is closed: a new connection is refused.
    let refused = tokio::net::TcpStream::connect(env.gate.addr).await;
    assert!(
        refused.is_err(),
        "accepted a connection after shutdown began"
    );

    let r = slow.await.unwrap();
    assert_eq!(
        r.echo().target,
        "/sleep/1500",
        "in-flight request completed"
    );
    env.gate.stopped().await;
    // After the drain the admin listener is gone as well.
    assert!(tokio::net::TcpStream::connect(env.gate.admin.unwrap())
        .await
        .is_err());
}

/// A drain that outlasts `shutdown_timeout` is cut: `run` returns anyway.
#[tokio::test]
async fn shutdown_deadline_closes_remaining_connections() {
    let mut env = Env::start_with(|raw| raw.shutdown_timeout = Duration::from_millis(200)).await;
    env.allow(TOKEN, 1).await;
    let client = env.http1.clone();
    let req = request(Method::GET, &env.url("/sleep/10000"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(empty())
        .unwrap();
    let slow = tokio::spawn(async move { client.request(req).await });
    for _ in 0..1000 {
        if env.upstream.hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    env.gate.begin_shutdown();
    env.gate.stopped().await;
    let outcome = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .expect("the cut request did not end")
        .unwrap();
    assert!(
        outcome.is_err(),
        "a request past the deadline cannot complete"
    );
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let env = Env::start().await;
    let before = env.scrape().await;
    assert_eq!(before.sum("tokengate_requests_total", &[]), 0.0);
    // Families with fixed label values exist from the start (requests by
    // route appear with the first request).
    for name in [
        "tokengate_introspections_total",
        "tokengate_introspection_duration_seconds",
        "tokengate_cache_hits_total",
        "tokengate_cache_misses_total",
        "tokengate_cache_coalesced_total",
        "tokengate_cache_entries",
        "tokengate_stale_answers_total",
        "tokengate_breaker_state",
        "tokengate_open_connections",
        "tokengate_upstream_errors_total",
        "tokengate_purges_total",
        "tokengate_config_reloads_total",
    ] {
        assert!(before.types.contains_key(name), "{name} is not exported");
    }
    assert_eq!(
        before
            .matching("tokengate_introspections_total", &[])
            .count(),
        12,
        "every outcome from the start (circuit_open, token_rejected, refused and keys_unavailable included)"
    );
    assert_eq!(
        before
            .matching(
                "tokengate_introspections_total",
                &[("outcome", "circuit_open")]
            )
            .count(),
        1
    );

    env.allow(TOKEN, 1).await;
    env.answer("dead-token", json!({"active": false}), 1).await;
    assert_eq!(env.get("/a", TOKEN).await.status, StatusCode::OK);
    assert_eq!(env.get("/b", TOKEN).await.status, StatusCode::OK);
    assert_rejection(&env.get("/c", "dead-token").await, 401, "invalid_token");
    assert_rejection(&env.get("/d", "dead-token").await, 401, "invalid_token");
    assert_rejection(&env.get_with_auth("/e", &[]).await, 401, "unauthorized");

    let m = env.scrape().await;
    for name in [
        "tokengate_requests_total",
        "tokengate_request_duration_seconds",
    ] {
        assert!(m.types.contains_key(name), "{name} is not exported");
    }
    // The test client keeps its pooled keep-alive connection to the proxy open.
    assert!(
        m.sum("tokengate_open_connections", &[]) >= 1.0,
        "the client's keep-alive connection is counted"
    );
    let ok = [("route", "default"), ("status", "2xx")];
    assert_eq!(m.sum("tokengate_requests_total", &ok), 2.0);
    assert_eq!(m.sum("tokengate_requests_total", &[("status", "4xx")]), 3.0);
    assert_eq!(m.sum("tokengate_request_duration_seconds_count", &ok), 2.0);
    assert_eq!(
        m.sum("tokengate_introspections_total", &[("outcome", "active")]),
        1.0
    );
    assert_eq!(
        m.sum("tokengate_introspections_total", &[("outcome", "inactive")]),
        1.0
    );
    assert_eq!(
        m.sum("tokengate_introspection_duration_seconds_count", &[]),
        2.0
    );
    let pos = [("cache", "positive")];
    let neg = [("cache", "negative")];
    assert_eq!(m.sum("tokengate_cache_misses_total", &pos), 2.0);
    assert_eq!(m.sum("tokengate_cache_hits_total", &pos), 1.0);
    assert_eq!(m.sum("tokengate_cache_hits_total", &neg), 1.0);
    // The negative cache is asked only when the positive one had no usable
    // answer: not for the positive hit.
    assert_eq!(m.sum("tokengate_cache_misses_total", &neg), 2.0);
    assert_eq!(m.sum("tokengate_cache_entries", &pos), 1.0);
    assert_eq!(m.sum("tokengate_cache_entries", &neg), 1.0);

    // OpenMetrics on request.
    let req = request(Method::GET, &env.gate.admin_url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .body(empty())
        .unwrap();
    let r = send(&env.http1, req).await;
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(r.text().ends_with("# EOF\n"));
}

#[tokio::test]
async fn metrics_count_coalesced_waiters_and_upstream_errors() {
    let env = Env::start_with(|raw| raw.upstream = "http://127.0.0.1:1".into()).await;
    let body = json!({"active": true, "sub": "alice", "exp": env.now() + 3600});
    introspection_of(TOKEN)
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(body)
                .set_delay(Duration::from_millis(800)),
        )
        .expect(1)
        .mount(&env.auth)
        .await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = env.http1.clone();
        let req = request(Method::GET, &env.url("/x"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(empty())
            .unwrap();
        tasks.push(tokio::spawn(async move { send(&client, req).await }));
    }
    for t in tasks {
        // The upstream port is closed: 502 after a shared introspection.
        assert_rejection(&t.await.unwrap(), 502, "bad_gateway");
    }
    let m = env.scrape().await;
    let pos = [("cache", "positive")];
    assert_eq!(
        m.sum("tokengate_cache_misses_total", &pos),
        1.0,
        "one AS call"
    );
    let coalesced = m.sum("tokengate_cache_coalesced_total", &[]);
    assert_eq!(
        coalesced + m.sum("tokengate_cache_hits_total", &pos),
        3.0,
        "the other three were answered without an AS call"
    );
    assert!(coalesced >= 1.0, "nobody waited for the in-flight call");
    assert_eq!(
        m.sum("tokengate_upstream_errors_total", &[("kind", "connect")]),
        4.0
    );
    assert_eq!(m.sum("tokengate_requests_total", &[("status", "5xx")]), 4.0);
}

/// Mounts "active" for exactly one AS call, then "inactive": the AS has revoked
/// the token after our first look.
async fn revoke_after_first_call(env: &Env) {
    let active = json!({"active": true, "sub": "alice", "exp": env.now() + 3600});
    introspection_of(TOKEN)
        .respond_with(ResponseTemplate::new(200).set_body_json(active))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&env.auth)
        .await;
    introspection_of(TOKEN)
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"active": false})))
        .with_priority(2)
        .mount(&env.auth)
        .await;
}

#[tokio::test]
async fn purge_makes_a_revoked_token_fail_at_once() {
    let env = Env::start().await;
    revoke_after_first_call(&env).await;
    assert_eq!(env.get("/a", TOKEN).await.status, StatusCode::OK);
    assert_eq!(env.get("/a", TOKEN).await.status, StatusCode::OK, "cached");
    assert_eq!(env.introspections().await.len(), 1);

    let r = env
        .purge(
            "application/x-www-form-urlencoded",
            &format!("token={TOKEN}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());

    assert_rejection(&env.get("/a", TOKEN).await, 401, "invalid_token");
    assert_eq!(
        env.introspections().await.len(),
        2,
        "the purge forced a second introspection"
    );
    // Now in the negative cache; a JSON purge removes it from there too.
    assert_rejection(&env.get("/a", TOKEN).await, 401, "invalid_token");
    assert_eq!(env.introspections().await.len(), 2, "negative hit");
    let r = env
        .purge(
            "application/json",
            &json!({"token": TOKEN}).to_string(),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_rejection(&env.get("/a", TOKEN).await, 401, "invalid_token");
    assert_eq!(env.introspections().await.len(), 3);

    // An uncached token: still 204, nothing to tell an attacker.
    let r = env
        .purge("application/json", r#"{"token":"never-seen"}"#, None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let m = env.scrape().await;
    assert_eq!(m.sum("tokengate_purges_total", &[]), 3.0);
}

#[tokio::test]
async fn purge_requires_the_secret_when_configured() {
    let dir = temp_dir("purge");
    let secret_file = dir.join("purge-secret");
    std::fs::write(&secret_file, "purge-s3cret\n").unwrap();
    let env = Env::start_with(|raw| {
        raw.admin.purge_secret_file = secret_file.display().to_string();
    })
    .await;
    env.allow(TOKEN, 1).await;
    assert_eq!(env.get("/a", TOKEN).await.status, StatusCode::OK);
    let body = format!("token={TOKEN}");
    let form = "application/x-www-form-urlencoded";
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer purge-s3cre"),
        Some("Basic cHVyZ2UtczNjcmV0"),
        Some("Bearer"),
    ] {
        let r = env.purge(form, &body, auth).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"tokengate-admin\"")
        );
        assert!(!r.text().contains(TOKEN), "token echoed: {}", r.text());
    }
    // Not purged: still a cache hit, no second AS call.
    assert_eq!(env.get("/a", TOKEN).await.status, StatusCode::OK);
    let r = env.purge(form, &body, Some("Bearer purge-s3cret")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn purge_rejects_bad_bodies_without_echoing_them() {
    let env = Env::start().await;
    let cases: [(&str, String, StatusCode); 6] = [
        (
            "text/plain",
            format!("token={TOKEN}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "application/json",
            format!("{{\"token\": {TOKEN}}}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "application/json",
            format!("{{\"tok\": \"{TOKEN}\"}}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "application/x-www-form-urlencoded",
            format!("token={TOKEN}&token=b"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "application/x-www-form-urlencoded",
            "token=".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "application/x-www-form-urlencoded",
            format!("token={}", "a".repeat(100 * 1024)),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (ct, body, want) in cases {
        let r = env.purge(ct, &body, None).await;
        assert_eq!(r.status, want, "{ct} {}", &body[..body.len().min(40)]);
        assert!(!r.text().contains(TOKEN), "token echoed: {}", r.text());
    }
}

#[tokio::test]
async fn reload_swaps_routes_and_keeps_restart_only_settings() {
    let env = Env::start().await;
    env.forbid_introspection().await;
    assert_rejection(
        &env.get_with_auth("/open/x", &[]).await,
        401,
        "unauthorized",
    );

    let mut raw = base_config(&env.auth, &env.upstream.url());
    raw.routes = vec![public_route("/open/")];
    raw.listen = "127.0.0.1:1".into(); // needs a restart
    raw.resilience.retry_after_secs = 9;
    let report = env.gate.reload().reload(raw.validate().unwrap()).unwrap();
    assert_eq!(report.restart_required, vec!["listen"]);
    let now = env.gate.reload().current();
    assert_eq!(now.listen.port(), 0, "the running listen address is kept");
    assert_eq!(now.retry_after_secs, 9);

    let r = env.get_with_auth("/open/x", &[]).await;
    assert_eq!(r.echo().target, "/open/x", "the new public route is live");
    assert_rejection(
        &env.get_with_auth("/closed", &[]).await,
        401,
        "unauthorized",
    );

    let m = env.scrape().await;
    assert_eq!(
        m.sum("tokengate_config_reloads_total", &[("result", "ok")]),
        1.0
    );
}

#[tokio::test]
async fn reload_rejects_a_bad_file_and_keeps_serving() {
    let env = Env::start_with(|raw| raw.routes = vec![public_route("/open/")]).await;
    let dir = temp_dir("reload");
    let file = dir.join("tokengate.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\n[cache]\nmax_tll = \"5m\"\n",
    )
    .unwrap();
    let err = env.gate.reload().reload_from(Some(&file)).unwrap_err();
    assert!(err.to_string().contains("max_tll"), "{err}");
    let r = env.get_with_auth("/open/y", &[]).await;
    assert_eq!(r.echo().target, "/open/y", "old config still serves");
    let m = env.scrape().await;
    assert_eq!(
        m.sum("tokengate_config_reloads_total", &[("result", "error")]),
        1.0
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The admin listener cannot move without a restart, so a reload must not drop
/// the purge secret while it listens off loopback.
#[tokio::test]
async fn reload_cannot_drop_the_purge_secret_of_a_public_admin_listener() {
    let dir = temp_dir("reload-secret");
    let secret_file = dir.join("purge-secret");
    std::fs::write(&secret_file, "purge-s3cret").unwrap();
    let env = Env::start_with(|raw| {
        raw.admin.listen = "0.0.0.0:0".into();
        raw.admin.purge_secret_file = secret_file.display().to_string();
    })
    .await;
    let mut raw = base_config(&env.auth, &env.upstream.url());
    raw.admin.listen = "127.0.0.1:0".into(); // valid on its own: loopback, no secret
    let err = env
        .gate
        .reload()
        .reload(raw.validate().unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("admin.purge_secret_file"), "{err}");
    let r = env
        .purge("application/x-www-form-urlencoded", "token=x", None)
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the secret still applies"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// New cache TTLs apply to entries cached after the reload; entries already
/// cached keep theirs.
#[tokio::test]
async fn reload_applies_cache_ttls_to_new_entries() {
    let env = Env::start().await;
    env.allow("old-token", 1).await;
    env.allow("new-token", 2).await;
    env.answer("dead-token", json!({"active": false}), 2).await;
    assert_eq!(env.get("/a", "old-token").await.status, StatusCode::OK);

    let mut raw = base_config(&env.auth, &env.upstream.url());
    raw.cache.max_ttl = Duration::ZERO;
    raw.cache.negative_ttl = Duration::ZERO;
    let report = env.gate.reload().reload(raw.validate().unwrap()).unwrap();
    assert!(report.restart_required.is_empty(), "{report:?}");

    assert_eq!(
        env.get("/a", "old-token").await.status,
        StatusCode::OK,
        "still cached"
    );
    for _ in 0..2 {
        assert_eq!(env.get("/a", "new-token").await.status, StatusCode::OK);
        assert_rejection(&env.get("/a", "dead-token").await, 401, "invalid_token");
    }
    // The `expect` counts (1, 2, 2) are verified when the mock server drops.
}
