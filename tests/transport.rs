//! Transport: unix-socket upstream, HTTP/2 upstream with gRPC (trailers end to
//! end), gRPC-shaped rejections.

mod common;

use common::*;
use http::Method;
use serde_json::json;

// ---------------------------------------------------------------------------
// Unix domain socket upstream
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_proxy_to_a_unix_socket_upstream() {
    let sock = temp_socket_path("up");
    let unix = Upstream::start_unix(&sock).await;
    let path = sock.display().to_string();
    let env = Env::start_with(|raw| raw.upstream = format!("unix:{path}")).await;
    env.allow("tok", 1).await;

    let r = env.get("/svc/a?b=1", "tok").await;
    let echo = r.echo();
    assert_eq!(echo.target, "/svc/a?b=1");
    assert_eq!(echo.header("x-auth-subject"), Some("alice"));
    assert_eq!(echo.header("host"), Some("localhost"));
    assert_eq!(unix.hits(), 1);
    assert_eq!(env.upstream.hits(), 0, "the TCP upstream must not be used");

    // Over h2c from the client too, and a large streamed body.
    let req = request(Method::POST, &env.url("/up"))
        .header("authorization", "Bearer tok")
        .body(streamed_body(3 * 1024 * 1024))
        .unwrap();
    let echo = send(&env.h2c, req).await.echo();
    assert_eq!(echo.body_len, Some(3 * 1024 * 1024));
    let _ = std::fs::remove_file(&sock);
}

#[tokio::test]
async fn should_502_when_the_unix_socket_is_missing() {
    let sock = temp_socket_path("missing");
    let path = sock.display().to_string();
    let env = Env::start_with(|raw| raw.upstream = format!("unix:{path}")).await;
    env.allow("tok", 1).await;
    let r = env.get("/x", "tok").await;
    assert_rejection(&r, 502, "bad_gateway");
}

#[test]
fn should_refuse_a_relative_unix_socket_path() {
    let mut raw = tokengate::config::RawConfig::default();
    raw.introspection.url = "http://as/i".into();
    raw.introspection.client_id = "c".into();
    raw.introspection.client_secret = tokengate::config::Secret::new("s");
    raw.upstream = "unix:run/app.sock".into();
    let err = raw.validate().unwrap_err().to_string();
    assert!(
        err.contains("upstream") && err.contains("absolute"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// gRPC through an HTTP/2 upstream
// ---------------------------------------------------------------------------

async fn grpc_env() -> (Env, GrpcUpstream) {
    let grpc = GrpcUpstream::start().await;
    let url = grpc.url();
    let env = Env::start_with(|raw| {
        raw.upstream = url;
        raw.upstream_http2 = true;
    })
    .await;
    (env, grpc)
}

fn grpc_request(env: &Env, token: Option<&str>, msg: &[u8]) -> http::Request<ClientBody> {
    let mut b = request(Method::POST, &env.url("/test.Echo/Unary"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(full(grpc_frame(msg))).unwrap()
}

#[tokio::test]
async fn should_carry_a_grpc_call_end_to_end_with_trailers() {
    let (env, grpc) = grpc_env().await;
    env.allow("tok", 1).await;

    let r = send_keep_trailers(&env.h2c, grpc_request(&env, Some("tok"), b"ping")).await;

    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.body, grpc_frame(b"ping"), "the message must come back");
    let trailers = r.trailers.expect("grpc-status must arrive as a trailer");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");

    let seen = grpc.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].version, "HTTP/2.0",
        "the upstream must be spoken to in h2"
    );
    assert_eq!(
        seen[0].header("te"),
        Some("trailers"),
        "te: trailers must reach an h2 upstream"
    );
    assert_eq!(seen[0].header("x-auth-subject"), Some("alice"));
    assert_eq!(seen[0].header("content-type"), Some("application/grpc"));
}

#[tokio::test]
async fn should_keep_only_te_trailers_for_an_h2_upstream() {
    let (env, grpc) = grpc_env().await;
    env.allow("tok", 1).await;
    // HTTP/1.1 in, h2 out: `TE: gzip, trailers` becomes exactly `te: trailers`.
    let req = request(Method::POST, &env.url("/x"))
        .header("authorization", "Bearer tok")
        .header("te", "gzip, trailers")
        .header("content-type", "application/grpc")
        .body(full(grpc_frame(b"a")))
        .unwrap();
    let r = send(&env.http1, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(grpc.seen()[0].header_all("te"), vec!["trailers"]);
}

/// (what goes wrong, expected grpc-status)
#[tokio::test]
async fn should_answer_grpc_clients_with_grpc_statuses() {
    let (env, grpc) = grpc_env().await;
    env.answer("inactive", json!({ "active": false }), 1).await;
    let scoped = Env::start_with(|raw| {
        raw.upstream = grpc.url();
        raw.upstream_http2 = true;
        raw.policy.require_scopes = vec!["admin".into()];
    })
    .await;
    scoped.allow("tok", 1).await;

    let cases: Vec<(&Env, Option<&str>, &str, &str)> = vec![
        (&env, None, "16", "a bearer token is required"),
        (&env, Some("inactive"), "16", "token is not active"),
        (&scoped, Some("tok"), "7", "token lacks a required scope"),
    ];
    for (e, token, status, message) in cases {
        let r = send_keep_trailers(&e.h2c, grpc_request(e, token, b"x")).await;
        assert_eq!(r.status, 200, "gRPC errors travel in an HTTP 200");
        assert_eq!(r.headers["content-type"], "application/grpc");
        assert_eq!(r.headers["grpc-status"], status, "{token:?}");
        assert_eq!(r.headers["grpc-message"], message);
        assert!(r.headers.contains_key("www-authenticate"));
        assert!(r.body.is_empty());
    }
    assert!(
        grpc.seen().is_empty(),
        "a rejected call must not reach the upstream"
    );
}

#[tokio::test]
async fn should_answer_grpc_unavailable_when_the_as_is_down() {
    let grpc = GrpcUpstream::start().await;
    let dead = closed_addr().await;
    let url = grpc.url();
    let env = Env::start_with(|raw| {
        raw.upstream = url;
        raw.upstream_http2 = true;
        raw.introspection.url = format!("http://{dead}/introspect");
    })
    .await;
    let r = send_keep_trailers(&env.h2c, grpc_request(&env, Some("tok"), b"x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["grpc-status"], "14");
    assert!(grpc.seen().is_empty());

    // The same failure for a plain HTTP client is still the JSON 503.
    let r = env.get("/x", "tok").await;
    assert_rejection(&r, 503, "temporarily_unavailable");
}
