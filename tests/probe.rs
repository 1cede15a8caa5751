//! The start-up probe of the introspection endpoint (`introspection.probe`):
//! one call about a throwaway token proves the URL and the client credentials
//! before the first client asks, instead of a 503 at the first request (and an
//! open breaker after five). In-process, through real sockets; the
//! `--check-config --probe` command line is in tests/binary.rs.

mod common;

use common::*;
use http::StatusCode;
use serde_json::json;
use std::time::Duration;
use tokengate::config::{ProbeMode, RawConfig};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockBuilder, MockServer, ResponseTemplate};

/// The probe's call: a POST to the introspection endpoint about a token that
/// is nobody's (`tokengate-canary-…`).
fn probe_call() -> MockBuilder {
    Mock::given(method("POST"))
        .and(path(INTROSPECT_PATH))
        .and(|r: &wiremock::Request| {
            form_value(&r.body, "token").is_some_and(|t| t.starts_with("tokengate-canary-"))
        })
}

async fn as_rejects_our_credentials(auth: &MockServer) {
    probe_call()
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(auth)
        .await;
}

async fn as_answers_inactive(auth: &MockServer, times: u64) {
    probe_call()
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"active": false})))
        .expect(times)
        .mount(auth)
        .await;
}

/// Starts a gate whose AS was prepared by `prepare` before tokengate starts
/// (the probe runs at once).
async fn start(
    mode: ProbeMode,
    prepare: impl AsyncFnOnce(&MockServer),
    configure: impl FnOnce(&mut RawConfig),
) -> Env {
    let auth = MockServer::start().await;
    prepare(&auth).await;
    let upstream = Upstream::start().await;
    let mut raw = base_config(&auth, &upstream.url());
    raw.introspection.probe = mode;
    configure(&mut raw);
    let gate = Gate::start(&raw).await;
    Env {
        auth,
        upstream,
        gate,
        http1: http1_client(),
        h2c: h2c_client(),
    }
}

/// `/readyz` on a new connection: after a clock jump the admin server has
/// closed the pooled ones as idle.
async fn readyz(env: &Env) -> Resp {
    let req = request(http::Method::GET, &env.gate.admin_url("/readyz"))
        .body(empty())
        .unwrap();
    send(&http1_client(), req).await
}

/// Waits (polling, with a deadline) until `/readyz` answers `want`.
async fn wait_ready_status(env: &Env, want: StatusCode) -> Resp {
    for _ in 0..500 {
        let r = readyz(env).await;
        if r.status == want {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("/readyz never answered {want}");
}

/// Waits for a log line about this AS (its URL is in the probe's lines) that
/// contains `what`, and returns it.
async fn wait_for_line(logs: &LogBuf, auth: &MockServer, what: &str) -> String {
    for _ in 0..500 {
        if let Some(line) = logs
            .text()
            .lines()
            .find(|l| !l.starts_with('{') && l.contains(&auth.uri()) && l.contains(what))
        {
            return line.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no log line with {what:?} for {}:\n{}",
        auth.uri(),
        logs.text()
    );
}

/// Moves tokio's clock (the probe's backoff) forward at once, then lets it run
/// on in real time, so real sockets keep working around the jump.
async fn jump_tokio_clock(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Neither the client-introspection metric nor the breaker saw the probe.
async fn assert_probe_invisible_to_clients_metrics(env: &Env) {
    let m = env.scrape().await;
    assert_eq!(
        m.sum("tokengate_introspections_total", &[]),
        0.0,
        "the probe is not a client's introspection"
    );
    assert_eq!(
        m.sum("tokengate_breaker_state", &[]),
        0.0,
        "the probe must not feed the breaker"
    );
}

#[tokio::test]
async fn probe_ok_one_authenticated_call_then_ready() {
    let env = start(
        ProbeMode::Require,
        async |auth| as_answers_inactive(auth, 1).await,
        |_| {},
    )
    .await;
    let r = wait_ready_status(&env, StatusCode::OK).await;
    assert_eq!(r.text(), "ready\n");
    let calls = env.introspections().await;
    assert_eq!(calls.len(), 1, "exactly one probe call");
    let basic = calls[0]
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        basic.starts_with("Basic "),
        "the probe authenticates like a real call: {basic:?}"
    );
    assert_probe_invisible_to_clients_metrics(&env).await;
}

#[tokio::test]
async fn bad_secret_warns_naming_the_keys_and_require_stays_not_ready() {
    let logs = capture();
    // One failure would open the breaker if the probe fed it.
    let env = start(ProbeMode::Require, as_rejects_our_credentials, |c| {
        c.resilience.breaker_failures = 1;
    })
    .await;
    let line = wait_for_line(&logs, &env.auth, "introspection probe failed").await;
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("introspection.client_id") && line.contains("introspection.client_secret"),
        "the warning names the keys to fix: {line}"
    );
    assert!(
        !line.contains(CLIENT_SECRET),
        "the secret is never logged: {line}"
    );
    let r = env.admin_get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.text().contains("introspection endpoint not confirmed"),
        "{}",
        r.text()
    );
    assert_probe_invisible_to_clients_metrics(&env).await;
}

#[tokio::test]
async fn warn_mode_warns_but_stays_ready() {
    let logs = capture();
    let env = start(ProbeMode::Warn, as_rejects_our_credentials, |_| {}).await;
    let line = wait_for_line(&logs, &env.auth, "introspection probe failed").await;
    assert!(
        line.contains("WARN") && line.contains("client_secret"),
        "{line}"
    );
    assert_eq!(env.admin_get("/readyz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn off_makes_no_call() {
    let env = start(
        ProbeMode::Off,
        async |auth| {
            Mock::given(wiremock::matchers::any())
                .respond_with(ResponseTemplate::new(500))
                .expect(0)
                .named("no probe call with probe = \"off\"")
                .mount(auth)
                .await;
        },
        |c| c.routes = vec![tokengate::config::RawRoute::public("/")],
    )
    .await;
    assert_eq!(env.admin_get("/readyz").await.status, StatusCode::OK);
    // A request served by `run` means its start-up (where the probe would be
    // spawned) is over; a probe task gets the next turns of the runtime.
    assert_eq!(env.get("/x", "unused").await.status, StatusCode::OK);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(env.introspections().await.is_empty());
}

#[tokio::test]
async fn require_turns_ready_once_the_as_accepts_us() {
    let logs = capture();
    // A timeout longer than the clock jumps below: a probe call still in
    // flight when the clock jumps must not time out and be retried (that
    // would be a second call for reasons of the test, not of the probe).
    let env = start(ProbeMode::Require, as_rejects_our_credentials, |c| {
        c.introspection.timeout = Duration::from_secs(7200);
    })
    .await;
    wait_for_line(&logs, &env.auth, "introspection probe failed").await;
    assert_eq!(
        env.admin_get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The operator fixes the client at the AS: the next probe passes.
    env.auth.reset().await;
    as_answers_inactive(&env.auth, 1).await;
    // Past the longest backoff: the retry is due now, whatever the count.
    jump_tokio_clock(Duration::from_secs(61)).await;
    wait_ready_status(&env, StatusCode::OK).await;
    let line = wait_for_line(&logs, &env.auth, "introspection probe succeeded").await;
    assert!(line.contains("INFO"), "{line}");
    // Stopped after the first success: no more calls, however long we wait.
    jump_tokio_clock(Duration::from_secs(3600)).await;
    assert_eq!(readyz(&env).await.status, StatusCode::OK);
}

#[tokio::test]
async fn probe_runs_after_discovery_against_the_discovered_endpoint() {
    let auth = MockServer::start().await;
    let upstream = Upstream::start().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": auth.uri(),
            "introspection_endpoint": format!("{}{INTROSPECT_PATH}", auth.uri()),
        })))
        .mount(&auth)
        .await;
    as_answers_inactive(&auth, 1).await;
    let mut raw = base_config(&auth, &upstream.url());
    raw.introspection.url.clear();
    raw.discovery.issuer = auth.uri();
    raw.introspection.probe = ProbeMode::Require;
    let mut settings = raw.validate().unwrap();
    // As `main` does: discovery first, then `run` (which probes).
    tokengate::install_crypto_provider();
    settings
        .introspection
        .resolve_endpoint(settings.discovery.as_ref())
        .await
        .unwrap();
    let env = Env {
        gate: Gate::start_settings(settings).await,
        auth,
        upstream,
        http1: http1_client(),
        h2c: h2c_client(),
    };
    wait_ready_status(&env, StatusCode::OK).await;
}

/// `introspection.probe` is restart-only (like all of `[introspection]`): the
/// probe and its readiness gate are set up at start. A reload names the key
/// and keeps the running mode.
#[tokio::test]
async fn a_reload_keeps_the_running_probe_mode() {
    let env = start(
        ProbeMode::Require,
        async |auth| as_answers_inactive(auth, 1).await,
        |_| {},
    )
    .await;
    wait_ready_status(&env, StatusCode::OK).await;
    let mut raw = base_config(&env.auth, &env.upstream.url());
    raw.introspection.probe = ProbeMode::Warn;
    let report = env.gate.reload().reload(raw.validate().unwrap()).unwrap();
    assert_eq!(report.restart_required, vec!["introspection.probe"]);
    assert_eq!(
        env.gate.reload().current().introspection.probe,
        ProbeMode::Require
    );
}
