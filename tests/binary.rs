//! The real `tokengate` binary with real signals (`kill -TERM`, `kill -HUP`):
//! graceful drain with exit status 0, and config reload (good and bad file).

mod common;

use common::*;
use http::{Method, StatusCode};
use std::path::Path;
use std::time::Duration;
use wiremock::MockServer;

const TOKEN: &str = "bin-token-5d1e0b";

fn write_config(path: &Path, auth: &MockServer, upstream: &Upstream, extra: &str) {
    let config = format!(
        r#"
listen = "127.0.0.1:0"
upstream = "{upstream}"
shutdown_timeout = "15s"

[introspection]
url = "{auth}{INTROSPECT_PATH}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
# These tests mount only their own tokens (the probe has its own tests).
probe = "off"

[admin]
listen = "127.0.0.1:0"

{extra}
"#,
        upstream = upstream.url(),
        auth = auth.uri(),
    );
    std::fs::write(path, config).unwrap();
}

async fn get(client: &TestClient, url: &str, token: Option<&str>) -> Resp {
    let mut b = request(Method::GET, url);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send(client, b.body(empty()).unwrap()).await
}

/// An AS that answers `TOKEN` as alice's exactly once (the cache serves the
/// rest), an upstream, and a config with JSON logs in a fresh directory.
async fn alice_once(name: &str) -> (MockServer, Upstream, std::path::PathBuf, std::path::PathBuf) {
    let auth = MockServer::start().await;
    let upstream = Upstream::start().await;
    let dir = temp_dir(name);
    let config = dir.join("tokengate.toml");
    write_config(&config, &auth, &upstream, "[log]\nformat = \"json\"\n");
    let body = serde_json::json!({"active": true, "sub": "alice", "exp": 4_102_444_800i64});
    introspection_of(TOKEN)
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(body))
        .expect(1)
        .mount(&auth)
        .await;
    (auth, upstream, dir, config)
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let (_auth, upstream, dir, config) = alice_once("bin-term").await;

    let mut bin = Binary::start(&config).await;
    let client = http1_client();
    let r = get(&client, &bin.admin_url("/readyz"), None).await;
    assert_eq!(r.status, StatusCode::OK);

    // Purge over the admin port: the token must never show up in the logs.
    let req = request(Method::POST, &bin.admin_url("/purge"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full(format!("token={TOKEN}")))
        .unwrap();
    assert_eq!(send(&client, req).await.status, StatusCode::NO_CONTENT);

    let slow_client = client.clone();
    let url = bin.url("/sleep/3000");
    let slow = tokio::spawn(async move { get(&slow_client, &url, Some(TOKEN)).await });
    for _ in 0..1000 {
        if upstream.hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        upstream.hits(),
        1,
        "the slow request never reached the upstream"
    );

    bin.signal("TERM");
    // Readiness flips while the request is still in flight.
    let mut flipped = false;
    for _ in 0..500 {
        let r = get(&client, &bin.admin_url("/readyz"), None).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(r.text(), "not ready: shutting down\n");
            flipped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A 503 at all proves the flip came during the drain: afterwards the
    // process is gone and nothing answers.
    assert!(flipped, "/readyz never turned 503 after SIGTERM");

    let r = slow.await.unwrap();
    assert_eq!(
        r.echo().target,
        "/sleep/3000",
        "in-flight request completed"
    );
    bin.wait_exit_0().await;
    let out = bin.output();
    assert!(out.contains("shutdown signal received"), "{out}");
    assert!(out.contains("token purged"), "{out}");
    // The last line main logs, just before it returns: it reaches stdout only
    // if main still holds the log writer's guard, whose drop flushes the queue.
    assert!(out.contains("tokengate stopped"), "{out}");
    assert!(!out.contains(TOKEN), "raw token in the logs:\n{out}");
    let _ = std::fs::remove_dir_all(dir);
}

/// With one CPU (a 1-CPU container, `taskset`) the binary runs tokio's
/// current-thread runtime; the request path, the admin port and the SIGTERM
/// drain must work the same.
#[tokio::test]
async fn one_cpu_serves_on_the_current_thread_runtime() {
    let (_auth, _upstream, dir, config) = alice_once("bin-one-cpu").await;

    let mut bin = Binary::start_with(&config, true).await;
    let out = bin.output();
    assert!(out.contains(r#""runtime":"current-thread""#), "{out}");
    let client = http1_client();
    assert_eq!(
        get(&client, &bin.url("/a"), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    for _ in 0..3 {
        let r = get(&client, &bin.url("/a"), Some(TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    }
    let r = get(&client, &bin.admin_url("/readyz"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    bin.signal("TERM");
    bin.wait_exit_0().await;
    assert!(bin.output().contains("tokengate stopped"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sighup_reloads_a_good_config_and_rejects_a_bad_one() {
    let auth = MockServer::start().await;
    let upstream = Upstream::start().await;
    let dir = temp_dir("bin-hup");
    let config = dir.join("tokengate.toml");
    write_config(&config, &auth, &upstream, "[log]\nformat = \"json\"\n");
    let mut bin = Binary::start(&config).await;
    let client = http1_client();

    let r = get(&client, &bin.url("/open/x"), None).await;
    assert_rejection(&r, 401, "unauthorized");

    // Good: a new public route, the log format switched to text, and a
    // listener change that needs a restart.
    let extra = "[log]\nformat = \"text\"\n\n[[routes]]\npath_prefix = \"/open/\"\npublic = true\n";
    write_config(&config, &auth, &upstream, extra);
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap().replace(
            "listen = \"127.0.0.1:0\"\nupstream",
            "listen = \"127.0.0.1:1\"\nupstream",
        ),
    )
    .unwrap();
    let from = bin.line_count();
    bin.signal("HUP");
    let line = bin
        .wait_for_line(from, |l| l.contains("configuration reloaded"))
        .await;
    assert!(
        !line.starts_with('{'),
        "the log format switched to text: {line}"
    );
    let out = bin.output();
    assert!(
        out.contains("needs a restart") && out.contains(r#""key":"listen""#),
        "restart warning missing:\n{out}"
    );
    let r = get(&client, &bin.url("/open/x"), None).await;
    assert_eq!(r.echo().target, "/open/x", "the new route is live");

    // Bad: an unknown key. Rejected, logged, and the running config stays.
    std::fs::write(&config, "[cache]\nmax_tll = \"5m\"\n").unwrap();
    let from = bin.line_count();
    bin.signal("HUP");
    let line = bin
        .wait_for_line(from, |l| l.contains("configuration reload rejected"))
        .await;
    assert!(line.contains("ERROR") && line.contains("max_tll"), "{line}");
    let r = get(&client, &bin.url("/open/y"), None).await;
    assert_eq!(
        r.echo().target,
        "/open/y",
        "the previous config keeps serving"
    );

    bin.signal("TERM");
    bin.wait_exit_0().await;
    let _ = std::fs::remove_dir_all(dir);
}
