//! Several authorization servers: `[issuers.<name>]` and `[[routes]] issuer`,
//! each issuer with its own introspection client, credentials, breaker,
//! metrics and cache partition; `require_any_scope`. Two fake ASes
//! (wiremock) on 127.0.0.1:0, a real upstream and a real tokengate
//! (`tokengate::run`), a real redis-server for the shared L2, and the real
//! binary for `--check-config`.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use tokengate::config::RawIssuer;
use tokengate::config::{RawConfig, RawRoute, Secret};
use wiremock::{Mock, MockServer, ResponseTemplate};

const B_ISS: &str = "https://as-b.example";
const B_CLIENT: &str = "gate-at-b";
const B_SECRET: &str = "b-secret";

/// `[issuers.b]` at `b` (client_secret_post, so the form shows whose
/// credentials came), and routes: `/a/` on the default issuer, `/b/` on `b`,
/// `/explicit/` naming "default".
fn two_issuers(raw: &mut RawConfig, b: &MockServer) {
    let mut issuer = RawIssuer {
        issuer: B_ISS.into(),
        ..RawIssuer::default()
    };
    let i = &mut issuer.introspection;
    i.url = format!("{}{INTROSPECT_PATH}", b.uri());
    i.client_id = B_CLIENT.into();
    i.client_secret = Secret::new(B_SECRET);
    i.auth_method = tokengate::config::AuthMethod::ClientSecretPost;
    i.timeout = Duration::from_secs(2);
    i.probe = tokengate::config::ProbeMode::Off;
    raw.issuers.insert("b".into(), issuer);
    raw.routes = vec![
        RawRoute::new("/a/"),
        RawRoute {
            issuer: "b".into(),
            ..RawRoute::new("/b/")
        },
        RawRoute {
            issuer: "default".into(),
            ..RawRoute::new("/explicit/")
        },
    ];
}

async fn mount(server: &MockServer, token: &str, body: serde_json::Value, times: u64) {
    introspection_of(token)
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .expect(times)
        .mount(server)
        .await;
}

fn active(now: i64, iss: Option<&str>) -> serde_json::Value {
    let mut v = json!({
        "active": true, "sub": "alice", "client_id": "app",
        "scope": "read", "exp": now + 3600,
    });
    if let Some(iss) = iss {
        v["iss"] = json!(iss);
    }
    v
}

#[tokio::test]
async fn the_same_token_is_introspected_at_each_issuer_and_never_crosses_in_the_cache() {
    let b = MockServer::start().await;
    let env = Env::start_with(|raw| two_issuers(raw, &b)).await;
    // Active at A (the default), unknown at B: each AS is asked once, and
    // neither answer ever serves the other's routes.
    mount(&env.auth, "shared-tok", active(env.now(), None), 1).await;
    mount(&b, "shared-tok", json!({"active": false}), 1).await;

    assert_eq!(env.get("/a/x", "shared-tok").await.status, 200);
    // A's cached "active" must not let the token through B's route.
    let r = env.get("/b/x", "shared-tok").await;
    assert_rejection(&r, 401, "invalid_token");
    // Both answers are cached now, each in its own partition.
    assert_rejection(&env.get("/b/y", "shared-tok").await, 401, "invalid_token");
    assert_eq!(env.get("/a/y", "shared-tok").await.status, 200);
    assert_eq!(env.get("/explicit/z", "shared-tok").await.status, 200);

    // The other way round: active at B, inactive at A.
    mount(&b, "b-tok", active(env.now(), Some(B_ISS)), 1).await;
    mount(&env.auth, "b-tok", json!({"active": false}), 1).await;
    assert_eq!(env.get("/b/x", "b-tok").await.status, 200);
    assert_rejection(&env.get("/a/x", "b-tok").await, 401, "invalid_token");
    assert_rejection(&env.get("/unrouted", "b-tok").await, 401, "invalid_token");
    assert_eq!(env.get("/b/again", "b-tok").await.status, 200);

    // Each AS got its own client's credentials, and only its own routes' tokens.
    let at_b = b.received_requests().await.unwrap_or_default();
    assert_eq!(at_b.len(), 2);
    for r in &at_b {
        assert_eq!(form_value(&r.body, "client_id").as_deref(), Some(B_CLIENT));
        assert_eq!(
            form_value(&r.body, "client_secret").as_deref(),
            Some(B_SECRET)
        );
    }
    for r in env.introspections().await {
        assert!(
            form_value(&r.body, "client_id").is_none(),
            "the default AS uses client_secret_basic: its own credentials"
        );
        assert!(r.headers.get("authorization").is_some());
    }
}

#[tokio::test]
async fn routes_without_issuer_use_the_default_and_no_token_is_sent_to_another_as() {
    let b = MockServer::start().await;
    let env = Env::start_with(|raw| two_issuers(raw, &b)).await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .named("issuer b is never asked about a default-issuer route")
        .mount(&b)
        .await;
    // An inactive answer at the default AS is final: B is not "tried next".
    mount(&env.auth, "dead", json!({"active": false}), 1).await;
    mount(&env.auth, "live", active(env.now(), None), 1).await;
    assert_rejection(&env.get("/a/x", "dead").await, 401, "invalid_token");
    assert_rejection(&env.get("/nowhere", "dead").await, 401, "invalid_token");
    assert_eq!(env.get("/nowhere", "live").await.status, 200);
    assert_eq!(env.get("/explicit/x", "live").await.status, 200);
}

#[tokio::test]
async fn an_answer_naming_another_issuer_is_refused_with_401_and_negative_cached() {
    let b = MockServer::start().await;
    let env = Env::start_with(|raw| two_issuers(raw, &b)).await;
    // B vouches for a token of another issuer: refused, and asked only once.
    mount(
        &b,
        "mixed-up",
        active(env.now(), Some("https://as-a.example")),
        1,
    )
    .await;
    assert_rejection(&env.get("/b/x", "mixed-up").await, 401, "invalid_token");
    assert_rejection(&env.get("/b/x", "mixed-up").await, 401, "invalid_token");
    // No `iss` at all is fine (RFC 7662 makes it optional).
    mount(&b, "no-iss", active(env.now(), None), 1).await;
    assert_eq!(env.get("/b/x", "no-iss").await.status, 200);
}

#[tokio::test]
async fn one_issuer_down_is_503_on_its_routes_only_and_the_gate_stays_ready() {
    let dead = closed_addr().await;
    let b = MockServer::start().await;
    let env = Env::start_with(|raw| {
        two_issuers(raw, &b);
        raw.resilience.breaker_failures = 2;
        raw.resilience.breaker_open_for = Duration::from_secs(600);
        if let Some(i) = raw.issuers.get_mut("b") {
            i.introspection.url = format!("http://{dead}{INTROSPECT_PATH}");
        }
    })
    .await;
    mount(&env.auth, "tok", active(env.now(), None), 1).await;
    for n in 0..3 {
        let r = env.get(&format!("/b/{n}"), "tok").await;
        assert_rejection(&r, 503, "temporarily_unavailable");
        assert_eq!(env.get(&format!("/a/{n}"), "tok").await.status, 200);
    }
    let m = env.scrape().await;
    assert_eq!(m.sum("tokengate_breaker_state", &[("issuer", "b")]), 2.0);
    assert_eq!(
        m.sum("tokengate_breaker_state", &[("issuer", "default")]),
        0.0
    );
    assert_eq!(m.sum("tokengate_issuer_ready", &[("issuer", "b")]), 0.0);
    assert_eq!(
        m.sum("tokengate_issuer_ready", &[("issuer", "default")]),
        1.0
    );
    assert_eq!(
        m.sum(
            "tokengate_introspections_total",
            &[("issuer", "b"), ("outcome", "connect")]
        ),
        2.0
    );
    assert_eq!(
        m.sum(
            "tokengate_introspections_total",
            &[("issuer", "b"), ("outcome", "circuit_open")]
        ),
        1.0
    );
    // One AS down does not take the other's routes out of the load balancer.
    let r = env.admin_get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn metrics_are_split_by_issuer() {
    let b = MockServer::start().await;
    let env = Env::start_with(|raw| two_issuers(raw, &b)).await;
    let before = env.scrape().await;
    // Every outcome of every issuer exists from the start.
    for issuer in ["default", "b"] {
        assert_eq!(
            before
                .matching("tokengate_introspections_total", &[("issuer", issuer)])
                .count(),
            12,
            "{issuer}"
        );
    }
    mount(&env.auth, "t", active(env.now(), None), 1).await;
    mount(&b, "t", active(env.now(), Some(B_ISS)), 1).await;
    mount(&b, "u", json!({"active": false}), 1).await;
    for path in ["/a/1", "/a/2", "/b/1", "/b/2", "/b/3"] {
        assert_eq!(env.get(path, "t").await.status, 200);
    }
    assert_rejection(&env.get("/b/4", "u").await, 401, "invalid_token");
    let m = env.scrape().await;
    let sum = |name: &str, labels: &[(&str, &str)]| m.sum(name, labels);
    let pos = ("cache", "positive");
    assert_eq!(
        sum(
            "tokengate_introspections_total",
            &[("issuer", "default"), ("outcome", "active")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            "tokengate_introspections_total",
            &[("issuer", "b"), ("outcome", "active")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            "tokengate_introspections_total",
            &[("issuer", "b"), ("outcome", "inactive")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            "tokengate_introspection_duration_seconds_count",
            &[("issuer", "b")]
        ),
        2.0
    );
    assert_eq!(
        sum("tokengate_cache_hits_total", &[pos, ("issuer", "default")]),
        1.0
    );
    assert_eq!(
        sum("tokengate_cache_hits_total", &[pos, ("issuer", "b")]),
        2.0
    );
    assert_eq!(
        sum("tokengate_cache_misses_total", &[pos, ("issuer", "b")]),
        2.0
    );
}

#[tokio::test]
async fn a_purge_drops_the_token_from_every_issuer_partition() {
    let b = MockServer::start().await;
    let env = Env::start_with(|raw| two_issuers(raw, &b)).await;
    mount(&env.auth, "p", active(env.now(), None), 2).await;
    mount(&b, "p", active(env.now(), Some(B_ISS)), 2).await;
    for _ in 0..2 {
        assert_eq!(env.get("/a/x", "p").await.status, 200);
        assert_eq!(env.get("/b/x", "p").await.status, 200);
    }
    let r = env
        .purge("application/x-www-form-urlencoded", "token=p", None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    // Both ASes are asked again (their mocks expect exactly two calls each).
    assert_eq!(env.get("/a/x", "p").await.status, 200);
    assert_eq!(env.get("/b/x", "p").await.status, 200);
}

#[tokio::test]
async fn require_any_scope_allows_one_of_and_names_the_alternatives_in_the_challenge() {
    let env = Env::start_with(|raw| {
        raw.routes = vec![
            RawRoute {
                require_any_scope: Some(vec!["reports:read".into(), "admin".into()]),
                ..RawRoute::new("/reports/")
            },
            RawRoute {
                require_scopes: Some(vec!["write".into()]),
                require_any_scope: Some(vec!["billing".into(), "admin".into()]),
                ..RawRoute::new("/billing/")
            },
        ];
    })
    .await;
    let token = |scope: &str| json!({"active": true, "sub": "s", "client_id": "c", "scope": scope, "exp": env.now() + 3600});
    env.answer("admin", token("admin"), 1).await;
    env.answer("reader", token("reports:read"), 1).await;
    env.answer("other", token("read write"), 1).await;

    assert_eq!(env.get("/reports/1", "admin").await.status, 200);
    assert_eq!(env.get("/reports/1", "reader").await.status, 200);
    let r = env.get("/reports/1", "other").await;
    assert_rejection(&r, 403, "insufficient_scope");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains(r#"scope="reports:read admin""#),
        "{challenge}"
    );
    // All of require_scopes and one of require_any_scope.
    let r = env.get("/billing/1", "other").await;
    assert_rejection(&r, 403, "insufficient_scope");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains(r#"scope="write billing admin""#),
        "{challenge}"
    );
    let r = env.get("/billing/1", "admin").await;
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains(r#"scope="write""#), "{challenge}");
}

/// Every config mistake of the issuers at once, each naming its key.
#[test]
fn issuer_config_errors_are_all_reported() {
    let auth = "http://127.0.0.1:9/introspect";
    let mut raw = RawConfig::default();
    raw.introspection.url = auth.into();
    raw.introspection.client_id = "c".into();
    raw.introspection.client_secret = Secret::new("s");
    raw.discovery = Default::default();
    let issuer = |iss: &str| {
        let mut i = RawIssuer {
            issuer: iss.into(),
            ..RawIssuer::default()
        };
        i.introspection.url = auth.into();
        i.introspection.client_id = "c".into();
        i.introspection.client_secret = Secret::new("s");
        i
    };
    raw.issuers
        .insert("one".into(), issuer("https://same.example"));
    raw.issuers
        .insert("two".into(), issuer("https://same.example"));
    raw.issuers
        .insert("default".into(), issuer("https://d.example"));
    raw.issuers
        .insert("Bad-Name".into(), issuer("https://x.example"));
    let mut incomplete = RawIssuer::default();
    incomplete.introspection.client_secret = Secret::new("s");
    incomplete.introspection.client_secret_file = "/nonexistent".into();
    raw.issuers.insert("incomplete".into(), incomplete);
    raw.routes = vec![
        RawRoute {
            issuer: "nope".into(),
            ..RawRoute::new("/x/")
        },
        RawRoute {
            issuer: "one".into(),
            ..RawRoute::public("/pub/")
        },
        RawRoute {
            issuer: "one".into(),
            ..RawRoute::new("/fine/")
        },
    ];
    let err = raw.validate().unwrap_err().to_string();
    for want in [
        "`issuers.two.issuer`: \"https://same.example\" is also the issuer of issuers.one",
        "`issuers.default`: the name \"default\"",
        "`issuers.Bad-Name`: \"Bad-Name\" is not a valid issuer name",
        "`issuers.incomplete.issuer`: is required",
        "`issuers.incomplete.introspection.url`: is required",
        "`issuers.incomplete.introspection.client_id`: is required",
        "`issuers.incomplete.introspection.client_secret_file`: set either",
        "`routes.issuer`: routes[0]: no issuer named \"nope\" (known: default, Bad-Name, incomplete, one, two)",
        "`routes.issuer`: routes[1] is public but names an issuer",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!err.contains("routes[2]"), "{err}");
}

#[test]
fn a_valid_two_issuer_config_lists_its_issuers_in_the_route_table() {
    let mut raw = RawConfig::default();
    raw.introspection.url = "http://127.0.0.1:9/introspect".into();
    raw.introspection.client_id = "c".into();
    raw.introspection.client_secret = Secret::new("s");
    let mut b = RawIssuer {
        issuer: B_ISS.into(),
        ..RawIssuer::default()
    };
    b.discovery.issuer = "https://as-b.example".into();
    b.introspection.client_id = "c".into();
    b.introspection.client_secret = Secret::new("s");
    raw.issuers.insert("b".into(), b);
    raw.routes = vec![RawRoute {
        issuer: "b".into(),
        require_any_scope: Some(vec!["x".into(), "y".into()]),
        ..RawRoute::new("/b/")
    }];
    let s = raw.validate().expect("valid");
    assert_eq!(s.issuers.len(), 1);
    assert_eq!(s.issuers[0].iss, B_ISS);
    assert!(s.issuers[0].introspection.url.is_none(), "from discovery");
    let table = s.routes.to_string();
    assert!(table.contains("any_scope=[x y] as=b"), "{table}");
    // Secrets never appear in the printed settings.
    assert!(!raw.to_redacted_toml().contains("client_secret = \"s\""));
}

#[tokio::test]
async fn issuers_are_restart_only_and_a_reload_naming_a_new_one_is_refused() {
    let b = MockServer::start().await;
    let env = Env::start_with(|raw| two_issuers(raw, &b)).await;
    let mut raw = base_config(&env.auth, &env.upstream.url());
    two_issuers(&mut raw, &b);
    // Changing an issuer's key: reported, the running one stays.
    if let Some(i) = raw.issuers.get_mut("b") {
        i.introspection.timeout = Duration::from_secs(3);
    }
    let report = env
        .gate
        .reload()
        .reload(raw.validate().unwrap())
        .expect("reload");
    assert!(report.restart_required.contains(&"issuers"), "{report:?}");
    // A route naming an issuer that is not running: the whole reload is refused.
    let mut c = raw.clone();
    c.issuers.insert("c".into(), c.issuers["b"].clone());
    if let Some(i) = c.issuers.get_mut("c") {
        i.issuer = "https://as-c.example".into();
    }
    c.routes.push(RawRoute {
        issuer: "c".into(),
        ..RawRoute::new("/c/")
    });
    let err = env
        .gate
        .reload()
        .reload(c.validate().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"c\""), "{err}");
    // The gate still serves with the running configuration.
    mount(&b, "t", active(env.now(), Some(B_ISS)), 1).await;
    mount(&env.auth, "t", json!({"active": false}), 1).await;
    assert_eq!(env.get("/b/x", "t").await.status, 200);
    // No /c/ route runs: the default issuer answers for it.
    assert_rejection(&env.get("/c/x", "t").await, 401, "invalid_token");
}

#[tokio::test]
async fn a_named_issuer_finds_its_endpoint_by_discovery_in_the_background() {
    let b = MockServer::start().await;
    Mock::given(wiremock::matchers::path(
        "/.well-known/oauth-authorization-server",
    ))
    .respond_with(ResponseTemplate::new(200).set_body_json(json!({
        "issuer": b.uri(),
        "introspection_endpoint": format!("{}{INTROSPECT_PATH}", b.uri()),
    })))
    .mount(&b)
    .await;
    let env = Env::start_with(|raw| {
        two_issuers(raw, &b);
        if let Some(i) = raw.issuers.get_mut("b") {
            i.introspection.url.clear();
            i.discovery.issuer = b.uri();
        }
    })
    .await;
    mount(&b, "t", active(env.now(), Some(B_ISS)), 1).await;
    // Discovery runs beside the listener: wait for it, not for a time.
    let start = tokio::time::Instant::now();
    loop {
        let m = env.scrape().await;
        if m.sum("tokengate_issuer_ready", &[("issuer", "b")]) == 1.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never discovered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.get("/b/x", "t").await.status, 200);
}

/// With `[cache.shared]`, a replica must not take another issuer's answer
/// from Redis either: the L2 key carries the partition.
#[tokio::test]
async fn the_shared_l2_keeps_issuers_apart() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key_file = temp_dir("issuers-l2").join("key");
    std::fs::write(&key_file, "5c0e9a71d4b28f63e17a0b9c2d48f5a6\n").unwrap();
    let b = MockServer::start().await;
    let shared = |raw: &mut RawConfig| {
        raw.cache.shared.url = tokengate::config::RedisUrl(redis.url());
        raw.cache.shared.key_secret_file = key_file.display().to_string();
        raw.cache.shared.timeout = Duration::from_secs(2);
    };
    let env = Env::start_with(|raw| {
        two_issuers(raw, &b);
        shared(raw);
    })
    .await;
    let mut raw = base_config(&env.auth, &env.upstream.url());
    two_issuers(&mut raw, &b);
    shared(&mut raw);
    let replica = Gate::start(&raw).await;
    let via = |gate: &Gate, path: &str| {
        let req = request(http::Method::GET, &format!("http://{}{path}", gate.addr))
            .header("authorization", "Bearer l2-tok")
            .body(empty())
            .unwrap();
        send(&env.http1, req)
    };
    // A: active, asked once for the whole fleet. B: inactive, asked once.
    mount(&env.auth, "l2-tok", active(env.now(), None), 1).await;
    mount(&b, "l2-tok", json!({"active": false}), 1).await;
    assert_eq!(via(&env.gate, "/a/x").await.status, 200);
    // The replica's L1 is empty; Redis holds A's answer, which must not
    // answer B's route.
    assert_rejection(&via(&replica, "/b/x").await, 401, "invalid_token");
    // A's answer reaches the replica through L2 (no second call at A).
    assert_eq!(via(&replica, "/a/x").await.status, 200);
    // And B's negative answer reaches the first gate through L2.
    assert_rejection(&via(&env.gate, "/b/x").await, 401, "invalid_token");
}

/// `--check-config` prints every issuer (name, iss, endpoint, auth method),
/// never a secret; an issuer's secret can come from its environment variable
/// (digits kept as a string).
#[tokio::test]
async fn check_config_lists_each_issuer_without_secrets() {
    let dir = temp_dir("issuers-check");
    let config = dir.join("tokengate.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
[introspection]
url = "http://127.0.0.1:9/introspect"
client_id = "gate"
client_secret = "default-secret-value"

[issuers.partners]
issuer = "{B_ISS}"
[issuers.partners.introspection]
url = "http://127.0.0.1:9/partners/introspect"
client_id = "gate-p"
auth_method = "client_secret_post"

[[routes]]
path_prefix = "/partners/"
issuer = "partners"
require_any_scope = ["a", "b"]
"#
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run_bin(
        &[(
            "TOKENGATE_ISSUERS__PARTNERS__INTROSPECTION__CLIENT_SECRET",
            "000123",
        )],
        &["--check-config", "-c", &config.display().to_string()],
    )
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for want in [
        "# issuers",
        "default      iss=(not checked) endpoint=http://127.0.0.1:9/introspect auth=client_secret_basic client_id=gate",
        "partners     iss=https://as-b.example endpoint=http://127.0.0.1:9/partners/introspect auth=client_secret_post client_id=gate-p",
        "any_scope=[a b] as=partners",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("000123"), "{stdout}");
    assert!(!stdout.contains("default-secret-value"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `--check-config --probe` proves every issuer's endpoint and credentials;
/// an issuer's secret from its environment variable keeps its leading zeros.
#[tokio::test]
async fn check_config_probe_asks_each_issuer_with_its_own_secret_from_the_environment() {
    let a = MockServer::start().await;
    let b = MockServer::start().await;
    let inactive = || ResponseTemplate::new(200).set_body_json(json!({"active": false}));
    Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path(INTROSPECT_PATH))
        .respond_with(inactive())
        .mount(&a)
        .await;
    Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path(INTROSPECT_PATH))
        .and(|r: &wiremock::Request| {
            form_value(&r.body, "client_id").as_deref() == Some("gate-p")
                && form_value(&r.body, "client_secret").as_deref() == Some("000123")
        })
        .respond_with(inactive())
        .expect(1)
        .mount(&b)
        .await;
    let dir = temp_dir("issuers-probe");
    let config = dir.join("tokengate.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
[introspection]
url = "{a}{INTROSPECT_PATH}"
client_id = "gate"
client_secret = "s"

[issuers.partners]
issuer = "{B_ISS}"
[issuers.partners.introspection]
url = "{b}{INTROSPECT_PATH}"
client_id = "gate-p"
client_secret_file = "/nonexistent/replaced-by-the-environment"
auth_method = "client_secret_post"
"#,
            a = a.uri(),
            b = b.uri()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let run = |secret: &'static str| {
        let config = config.clone();
        async move {
            run_bin(
                &[(
                    "TOKENGATE_ISSUERS__PARTNERS__INTROSPECTION__CLIENT_SECRET",
                    secret,
                )],
                &["--check-config", "--probe", "-c", &config],
            )
            .await
        }
    };
    let (code, stdout, stderr) = run("000123").await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("# probe: issuer partners: "), "{stdout}");
    // The wrong secret: the partners' AS refuses it (no mock matches), and
    // the failure names the issuer.
    let (code, _, stderr) = run("123").await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("introspection probe of issuer partners failed"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------
// One real authorization server (oidc-provider 9, tests/oidc/provider.mjs)
// beside a wiremock one. The helper is the one of tests/as_errors.rs, cut down.

#[tokio::test]
async fn a_real_oidc_provider_and_a_wiremock_as_never_vouch_for_each_others_tokens() {
    let test = "a_real_oidc_provider_and_a_wiremock_as_never_vouch_for_each_others_tokens";
    let Some(provider) = OidcProvider::start(test).await else {
        return;
    };
    let env = Env::start_with(|raw| {
        let mut oidc = RawIssuer {
            issuer: provider.issuer(),
            ..RawIssuer::default()
        };
        // Found by discovery, then proven by the start-up probe: both at
        // the real AS, in the background.
        oidc.discovery.issuer = provider.issuer();
        oidc.introspection.client_id = "tokengate".into();
        oidc.introspection.client_secret = Secret::new(OIDC_SECRET);
        oidc.introspection.timeout = Duration::from_secs(5);
        oidc.introspection.probe = tokengate::config::ProbeMode::Require;
        raw.issuers.insert("oidc".into(), oidc);
        raw.routes = vec![
            RawRoute {
                issuer: "oidc".into(),
                ..RawRoute::new("/oidc/")
            },
            RawRoute::new("/a/"),
        ];
    })
    .await;
    let start = tokio::time::Instant::now();
    while env
        .scrape()
        .await
        .sum("tokengate_issuer_ready", &[("issuer", "oidc")])
        != 1.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "discovery + probe at the real AS never succeeded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let real = provider.bearer_token(&env.http1).await;
    let r = env.get("/oidc/x", &real).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header("x-auth-client-id"), Some("tokengate"));
    // The wiremock AS (the default) does not know the real token: its route
    // refuses it, though the token is cached as active for the other issuer.
    mount(&env.auth, &real, json!({"active": false}), 1).await;
    assert_rejection(&env.get("/a/x", &real).await, 401, "invalid_token");
    assert_eq!(env.get("/oidc/y", &real).await.status, 200);

    // And a token the wiremock AS vouches for is nothing at the real AS (in
    // the shape of its own opaque tokens: 43 base64url characters; it
    // refuses other shapes with a 4xx, which is a 503).
    let wm_only = "V2lyZW1vY2tPbmx5VG9rZW4tMDEyMzQ1Njc4OWFiY2Rl";
    mount(&env.auth, wm_only, active(env.now(), None), 1).await;
    assert_eq!(env.get("/a/x", wm_only).await.status, 200);
    assert_rejection(&env.get("/oidc/x", wm_only).await, 401, "invalid_token");

    let m = env.scrape().await;
    let outcome = |issuer, outcome| {
        m.sum(
            "tokengate_introspections_total",
            &[("issuer", issuer), ("outcome", outcome)],
        )
    };
    assert_eq!(outcome("oidc", "active"), 1.0);
    assert_eq!(outcome("oidc", "inactive"), 1.0);
    assert_eq!(outcome("default", "active"), 1.0);
    assert_eq!(outcome("default", "inactive"), 1.0);
}
