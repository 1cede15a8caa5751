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

    let from = bin.line_count();
    let r = get(&client, &bin.url("/open/x"), None).await;
    assert_rejection(&r, 401, "unauthorized");
    // JSON: the access line is the `tracing` event's.
    let line = bin
        .wait_for_line(from, |l| l.contains("tokengate::access"))
        .await;
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["status"], 401, "{line}");
    assert_eq!(json["path"], "/open/x", "{line}");

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
    let from = bin.line_count();
    let r = get(&client, &bin.url("/open/x"), None).await;
    assert_eq!(r.echo().target, "/open/x", "the new route is live");
    // Text after the reload: the line written by hand, in the text format.
    let line = bin
        .wait_for_line(from, |l| l.contains("tokengate::access"))
        .await;
    let (stamp, rest) = line.split_at(27);
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "{line}"
    );
    let (head, latency) = rest.split_once(" latency_ms=").unwrap();
    assert!(
        head.starts_with(
            "  INFO tokengate::access: method=GET path=/open/x status=200 route=\"routes["
        ),
        "{line}"
    );
    let (ms, tail) = latency.split_once(' ').unwrap();
    assert!(ms.parse::<f64>().is_ok(), "{line}");
    assert_eq!(
        tail, r#"cache="-" subject="-" token="-" binding="-""#,
        "{line}"
    );

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

/// A minimal config: `url` is the introspection endpoint; `extra` is appended.
fn small_config(dir: &Path, url: &str, extra: &str) -> String {
    let path = dir.join("tokengate.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\n{extra}\n[introspection]\nurl = \"{url}\"\n\
             client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// `--check-config --probe`: one call with a throwaway token; exit 0 when the
/// AS gives a well-formed answer, 1 with the reason (naming the keys) otherwise.
#[tokio::test]
async fn check_config_probe_exit_codes_and_reasons() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, ResponseTemplate};
    let auth = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/ok"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"active": false})),
        )
        .expect(1)
        .mount(&auth)
        .await;
    Mock::given(method("POST"))
        .and(path("/bad-secret"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"error": "invalid_client"})),
        )
        .mount(&auth)
        .await;
    let dir = temp_dir("bin-probe");
    let closed = closed_addr().await;
    let cases = [
        ("/ok".to_owned(), 0, vec!["answered", "credentials work"]),
        (
            "/bad-secret".to_owned(),
            1,
            vec![
                "introspection probe failed",
                "introspection.client_id",
                "introspection.client_secret",
            ],
        ),
        ("/nothing-here".to_owned(), 1, vec!["404"]),
        (
            format!("http://{closed}/introspect"),
            1,
            vec!["cannot connect to introspection.url"],
        ),
    ];
    for (url, want, needles) in cases {
        let url = if url.starts_with('/') {
            format!("{}{url}", auth.uri())
        } else {
            url
        };
        let config = small_config(&dir, &url, "");
        let (code, stdout, stderr) =
            run_bin(&[], &["--check-config", "--probe", "-c", &config]).await;
        assert_eq!(code, want, "{url}\n{stdout}\n{stderr}");
        let all = format!("{stdout}{stderr}");
        for n in needles {
            assert!(all.contains(n), "{url}: missing {n:?} in\n{all}");
        }
        assert!(!all.contains(CLIENT_SECRET), "secret printed:\n{all}");
    }
    // Without --probe, --check-config makes no call (the `/ok` mock expects one).
    let config = small_config(&dir, &format!("{}/ok", auth.uri()), "");
    let (code, _, stderr) = run_bin(&[], &["--check-config", "-c", &config]).await;
    assert_eq!(code, 0, "{stderr}");
    // --probe is a --check-config option.
    let (code, _, stderr) = run_bin(&[], &["--probe", "-c", &config]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--check-config"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn help_names_the_environment_and_c_is_short_for_config() {
    let (code, stdout, _) = run_bin(&[], &["--help"]).await;
    assert_eq!(code, 0);
    for needle in [
        "-c, --config <FILE>",
        "TOKENGATE_CONFIG",
        "TOKENGATE_*",
        "TOKENGATE_INTROSPECTION__CLIENT_SECRET",
        "RUST_LOG",
        "--probe",
    ] {
        assert!(
            stdout.contains(needle),
            "--help lacks {needle:?}:\n{stdout}"
        );
    }
    let dir = temp_dir("bin-short-c");
    let config = small_config(&dir, "http://127.0.0.1:9/introspect", "");
    let (code, stdout, stderr) = run_bin(&[], &["-c", &config, "--check-config"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("configuration is valid"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

/// "Address already in use" names the key to change, for both listeners.
#[tokio::test]
async fn a_taken_port_names_the_listen_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = temp_dir("bin-taken");
    for (key, extra) in [
        ("`listen`", "[admin]\nlisten = \"\"\n".to_owned()),
        ("`admin.listen`", format!("[admin]\nlisten = \"{addr}\"\n")),
    ] {
        let mut config = small_config(&dir, "http://127.0.0.1:9/introspect", &extra);
        if key == "`listen`" {
            let text = std::fs::read_to_string(&config)
                .unwrap()
                .replace("127.0.0.1:0", &addr.to_string());
            config = dir.join("taken.toml").display().to_string();
            std::fs::write(&config, text).unwrap();
        }
        let (code, stdout, stderr) = run_bin(&[], &["-c", &config]).await;
        assert_eq!(code, 1, "{stdout}\n{stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on {addr} (set by {key})")),
            "{stderr}"
        );
    }
    drop(taken);
    let _ = std::fs::remove_dir_all(dir);
}
