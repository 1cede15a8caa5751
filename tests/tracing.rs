//! OpenTelemetry traces (`[tracing]`): a real tokengate (`tokengate::run`)
//! exporting over OTLP/gRPC to an in-process collector (opentelemetry-proto's
//! `TraceService` on 127.0.0.1:0), with the fake AS and a real upstream.
//!
//! The spans are read after the gate has stopped: the batch exporter only
//! sends every few seconds, so spans that are there as soon as `run` returns
//! prove the flush of the graceful drain.

mod common;

use common::*;
use http::Method;
use serde_json::json;
use tokengate::config::RawConfig;

const TOKEN: &str = "tok-3f9a1c55e2b8d7a64410";
const QUERY_SECRET: &str = "qs-7d1e0b93a4";
/// A W3C trace context a client (or a proxy in front) sends.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traced(sink: &OtlpSink) -> impl FnOnce(&mut RawConfig) + '_ {
    move |raw| {
        raw.tracing.otlp_endpoint = Some(sink.endpoint());
    }
}

fn by_name<'a>(spans: &'a [SpanSeen], name: &str) -> Vec<&'a SpanSeen> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [SpanSeen], name: &str) -> &'a SpanSeen {
    let found = by_name(spans, name);
    assert_eq!(found.len(), 1, "one {name:?} span expected in {spans:#?}");
    found[0]
}

/// `00-<trace>-<span>-<flags>` → (trace, span, flags).
fn parse_traceparent(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {v:?}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

async fn stop(env: &mut Env) {
    env.gate.begin_shutdown();
    env.gate.stopped().await;
}

/// GET /api with the test token and `headers` (the caller's trace context),
/// which must pass; what the upstream saw.
async fn get_api(env: &Env, headers: &[(&str, &str)]) -> Vec<Echo> {
    let mut req =
        request(Method::GET, &env.url("/api")).header("authorization", format!("Bearer {TOKEN}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    assert_eq!(
        send(&env.http1, req.body(empty()).unwrap()).await.status,
        200
    );
    env.upstream.seen()
}

fn assert_no_secret(spans: &[SpanSeen]) {
    for s in spans {
        let text = s.all_text();
        assert!(!text.contains(TOKEN), "the token leaked into {s:#?}");
        assert!(
            !text.contains(&TOKEN[4..]),
            "part of the token leaked into {s:#?}"
        );
        assert!(
            !text.contains(QUERY_SECRET),
            "the query string leaked into {s:#?}"
        );
    }
}

#[tokio::test]
async fn request_introspection_and_upstream_spans_form_one_trace_without_the_token() {
    let sink = OtlpSink::start().await;
    let mut env = Env::start_with(traced(&sink)).await;
    env.allow(TOKEN, 1).await;
    env.answer("tok-unknown-0000000000", json!({"active": false}), 1)
        .await;

    let miss = env
        .get(&format!("/api/items?q={QUERY_SECRET}"), TOKEN)
        .await;
    assert_eq!(miss.status, 200);
    let hit = env.get("/api/items", TOKEN).await;
    assert_eq!(hit.status, 200);
    let denied = env.get("/api/items", "tok-unknown-0000000000").await;
    assert_eq!(denied.status, 401);
    // The upstream and the AS saw our trace context.
    let upstream_seen = env.upstream.seen();
    let ases_seen = env.introspections().await;
    stop(&mut env).await;

    // No waiting: the drain flushed them before `run` returned.
    let spans = sink.spans();
    let requests = by_name(&spans, "tokengate proxy");
    assert_eq!(requests.len(), 3, "{spans:#?}");
    let (first, second, third) = (requests[0], requests[1], requests[2]);
    for r in &requests {
        assert_eq!(r.kind, 2, "server span");
        assert_eq!(r.parent_span_id, "", "no traceparent came in: a root span");
        assert_eq!(r.attr("http.request.method"), Some("GET"));
        assert_eq!(r.attr("url.path"), Some("/api/items"));
        assert_eq!(r.attr("tokengate.route"), Some("default"));
        assert_eq!(r.attr("tokengate.issuer"), Some("default"));
        assert_eq!(r.resource_attr("service.name"), Some("tokengate"));
    }
    assert_eq!(first.attr("tokengate.decision"), Some("allow"));
    assert_eq!(first.attr("tokengate.cache"), Some("miss"));
    assert_eq!(first.attr("http.response.status_code"), Some("200"));
    assert_eq!(first.attr("tokengate.binding"), Some("none"));
    assert_eq!(second.attr("tokengate.cache"), Some("hit"));
    assert_eq!(third.attr("tokengate.decision"), Some("deny"));
    assert_eq!(third.attr("http.response.status_code"), Some("401"));
    assert_ne!(first.trace_id, second.trace_id, "one trace per request");

    // The first request: introspection and upstream are its children.
    let in_first = |name: &str| -> Vec<&SpanSeen> {
        by_name(&spans, name)
            .into_iter()
            .filter(|s| s.trace_id == first.trace_id)
            .collect()
    };
    let introspection = in_first("introspection");
    let upstream = in_first("upstream");
    assert_eq!(introspection.len(), 1, "{spans:#?}");
    assert_eq!(upstream.len(), 1, "{spans:#?}");
    for child in [introspection[0], upstream[0]] {
        assert_eq!(child.parent_span_id, first.span_id);
        assert_eq!(child.kind, 3, "client span");
    }
    assert_eq!(upstream[0].attr("http.response.status_code"), Some("200"));
    // The cache hit asked nobody.
    assert!(by_name(&spans, "introspection")
        .iter()
        .all(|s| s.trace_id != second.trace_id));

    // The upstream got the upstream span's context, the AS the introspection span's.
    let tp = upstream_seen[0]
        .header("traceparent")
        .expect("traceparent reaches the upstream");
    let (trace, parent, flags) = parse_traceparent(tp);
    assert_eq!(trace, first.trace_id);
    assert_eq!(parent, upstream[0].span_id);
    assert_eq!(flags, "01");
    let tp = ases_seen[0]
        .headers
        .get("traceparent")
        .expect("traceparent reaches the AS")
        .to_str()
        .unwrap();
    let (trace, parent, _) = parse_traceparent(tp);
    assert_eq!(trace, first.trace_id);
    assert_eq!(parent, introspection[0].span_id);

    assert_no_secret(&spans);
}

#[tokio::test]
async fn an_incoming_traceparent_becomes_the_parent() {
    let sink = OtlpSink::start().await;
    let mut env = Env::start_with(traced(&sink)).await;
    env.allow(TOKEN, 1).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let seen = get_api(
        &env,
        &[("traceparent", &traceparent), ("tracestate", "vendor=abc")],
    )
    .await;
    stop(&mut env).await;

    let spans = sink.spans();
    let request = one(&spans, "tokengate proxy");
    assert_eq!(request.trace_id, CLIENT_TRACE);
    assert_eq!(request.parent_span_id, CLIENT_SPAN);
    let upstream = one(&spans, "upstream");
    assert_eq!(upstream.trace_id, CLIENT_TRACE);
    assert_eq!(upstream.parent_span_id, request.span_id);
    // The upstream's parent is our span now, in the client's trace; the
    // client's tracestate is carried on.
    let (trace, parent, flags) = parse_traceparent(seen[0].header("traceparent").unwrap());
    assert_eq!(
        (trace.as_str(), parent.as_str(), flags.as_str()),
        (CLIENT_TRACE, upstream.span_id.as_str(), "01")
    );
    assert_eq!(seen[0].header("tracestate"), Some("vendor=abc"));
}

#[tokio::test]
async fn an_oversized_tracestate_is_dropped_not_exported_on_every_span() {
    // 400 members, ~6 KiB: W3C caps tracestate at 32 members (512 characters
    // are what must be propagated). Copied as it came, it sat in every span
    // of the request (each queued span its own copy, the batch queue holding
    // thousands) and made an export batch too big for a collector's 4 MiB
    // gRPC limit, losing every other request's spans in it.
    let huge: String = (0..400)
        .map(|i| format!("k{i}=v{i:012}"))
        .collect::<Vec<_>>()
        .join(",");
    let sink = OtlpSink::start().await;
    let mut env = Env::start_with(traced(&sink)).await;
    env.allow(TOKEN, 1).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let seen = get_api(
        &env,
        &[("traceparent", &traceparent), ("tracestate", &huge)],
    )
    .await;
    stop(&mut env).await;

    let spans = sink.spans();
    let request = one(&spans, "tokengate proxy");
    // The traceparent is still followed; only the tracestate is dropped.
    assert_eq!(request.trace_id, CLIENT_TRACE);
    assert_eq!(request.parent_span_id, CLIENT_SPAN);
    for s in &spans {
        assert!(
            s.trace_state.is_empty(),
            "{}: {}",
            s.name,
            s.trace_state.len()
        );
    }
    let (trace, parent, _) = parse_traceparent(seen[0].header("traceparent").unwrap());
    assert_eq!(trace, CLIENT_TRACE);
    assert_eq!(parent, one(&spans, "upstream").span_id);
    assert_eq!(seen[0].header("tracestate"), None);
}

#[tokio::test]
async fn a_caller_that_does_not_sample_is_followed() {
    let sink = OtlpSink::start().await;
    let mut env = Env::start_with(traced(&sink)).await;
    env.allow(TOKEN, 1).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    let seen = get_api(&env, &[("traceparent", &traceparent)]).await;
    stop(&mut env).await;

    assert!(sink.spans().is_empty(), "{:#?}", sink.spans());
    // The trace still goes on, unsampled, with our span id in it.
    let (trace, parent, flags) = parse_traceparent(seen[0].header("traceparent").unwrap());
    assert_eq!(trace, CLIENT_TRACE);
    assert_ne!(parent, CLIENT_SPAN);
    assert_eq!(flags, "00");
}

#[tokio::test]
async fn with_tracing_off_nothing_is_exported_and_traceparent_passes_unchanged() {
    let sink = OtlpSink::start().await;
    // The default config: no endpoint (and the sink's address named nowhere).
    let mut env = Env::start().await;
    env.allow(TOKEN, 1).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let seen = get_api(
        &env,
        &[("traceparent", &traceparent), ("tracestate", "vendor=abc")],
    )
    .await;
    let as_seen = env.introspections().await;
    stop(&mut env).await;

    assert_eq!(seen[0].header("traceparent"), Some(traceparent.as_str()));
    assert_eq!(seen[0].header("tracestate"), Some("vendor=abc"));
    assert!(
        as_seen[0].headers.get("traceparent").is_none(),
        "untraced, the AS call carries no trace context"
    );
    assert!(sink.spans().is_empty());
}

#[tokio::test]
async fn forward_auth_mode_traces_the_original_request_without_its_query() {
    let sink = OtlpSink::start().await;
    let mut env = Env::start_with(|raw| {
        traced(&sink)(raw);
        raw.mode = tokengate::config::Mode::ForwardAuth;
    })
    .await;
    env.allow(TOKEN, 1).await;
    let req = request(Method::GET, &env.url("/auth"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("x-forwarded-method", "POST")
        .header(
            "x-forwarded-uri",
            format!("/orders?access_token={QUERY_SECRET}"),
        )
        .header("x-forwarded-host", "api.example")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .unwrap();
    assert_eq!(send(&env.http1, req).await.status, 200);
    stop(&mut env).await;

    let spans = sink.spans();
    let request = one(&spans, "tokengate forward_auth");
    assert_eq!(request.attr("http.request.method"), Some("POST"));
    assert_eq!(request.attr("url.path"), Some("/orders"));
    assert_eq!(request.attr("tokengate.decision"), Some("allow"));
    assert_eq!(one(&spans, "introspection").parent_span_id, request.span_id);
    assert!(by_name(&spans, "upstream").is_empty());
    assert_no_secret(&spans);
}

#[tokio::test]
async fn redis_calls_of_the_fleet_cache_are_child_spans() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let key = std::env::temp_dir().join(format!("tokengate-otel-key-{}", std::process::id()));
    // Generated (`openssl rand -hex 16`): tokengate refuses a key that looks typed.
    std::fs::write(&key, "9b2e64d0c7a1f35812e4d9a06b7c3f15\n").unwrap();
    let sink = OtlpSink::start().await;
    let mut env = Env::start_with(|raw| {
        traced(&sink)(raw);
        raw.cache.shared.url = tokengate::config::RedisUrl(redis.url());
        raw.cache.shared.key_secret_file = key.display().to_string();
        raw.cache.shared.timeout = std::time::Duration::from_secs(2);
    })
    .await;
    env.allow(TOKEN, 1).await;
    assert_eq!(env.get("/api", TOKEN).await.status, 200);
    stop(&mut env).await;
    let _ = std::fs::remove_file(&key);

    let spans = sink.spans();
    let request = one(&spans, "tokengate proxy");
    let redis_spans: Vec<&SpanSeen> = spans
        .iter()
        .filter(|s| s.attr("db.system.name") == Some("redis"))
        .collect();
    assert!(!redis_spans.is_empty(), "{spans:#?}");
    for s in &redis_spans {
        assert_eq!(s.trace_id, request.trace_id);
        assert_eq!(s.parent_span_id, request.span_id);
        assert!(s.name.starts_with("redis "), "{s:#?}");
    }
    assert_no_secret(&spans);
}

#[tokio::test]
async fn an_ext_authz_check_is_traced_under_the_original_requests_traceparent() {
    ext_authz_check_traced(false).await;
}

/// Envoy's `encode_raw_headers: true` sends the headers in `header_map`
/// only (the map `headers` is empty): the `traceparent` is there too.
#[tokio::test]
async fn an_ext_authz_check_with_raw_headers_is_traced_under_their_traceparent() {
    ext_authz_check_traced(true).await;
}

async fn ext_authz_check_traced(raw_headers: bool) {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap as EnvoyHeaderMap, HeaderValue};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    use tokio::net::TcpListener;

    let sink = OtlpSink::start().await;
    let auth = wiremock::MockServer::start().await;
    introspection_of(TOKEN)
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({
            "active": true, "sub": "alice", "client_id": "app", "exp": 4102444800_i64,
        })))
        .expect(1)
        .mount(&auth)
        .await;
    let mut raw = base_config(&auth, "http://127.0.0.1:9");
    raw.tracing.otlp_endpoint = Some(sink.endpoint());
    tokengate::install_crypto_provider();
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = grpc_listener.local_addr().unwrap();
    let app = tokengate::App::new(raw.validate().unwrap()).with_ext_authz_listener(grpc_listener);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tokengate::run(app, listener, async move {
        let _ = stopped.await;
    }));

    let headers = [
        ("authorization", format!("Bearer {TOKEN}")),
        ("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v));
    let (headers, header_map) = if raw_headers {
        let entries = headers
            .map(|(key, v)| HeaderValue {
                key,
                raw_value: v.into_bytes(),
                ..Default::default()
            })
            .collect();
        (
            Default::default(),
            Some(EnvoyHeaderMap { headers: entries }),
        )
    } else {
        (headers.collect(), None)
    };
    let check = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: format!("/api/items?q={QUERY_SECRET}"),
                    host: "api.example".into(),
                    scheme: "https".into(),
                    headers,
                    header_map,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = AuthorizationClient::new(channel)
        .check(check)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status.map(|s| s.code), Some(0), "allowed");
    let _ = stop.send(());
    task.await.unwrap();

    let spans = sink.spans();
    let request = one(&spans, "tokengate ext_authz");
    assert_eq!(request.trace_id, CLIENT_TRACE);
    assert_eq!(request.parent_span_id, CLIENT_SPAN);
    assert_eq!(request.attr("url.path"), Some("/api/items"));
    assert_eq!(request.attr("tokengate.decision"), Some("allow"));
    assert_eq!(request.attr("http.response.status_code"), Some("200"));
    assert_eq!(one(&spans, "introspection").parent_span_id, request.span_id);
    assert_no_secret(&spans);
}

#[tokio::test]
async fn a_jwks_fetch_made_for_a_request_is_its_child_span() {
    use base64::Engine as _;
    let sink = OtlpSink::start().await;
    let jwks_server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::path("/jwks"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({"keys": []})))
        .mount(&jwks_server)
        .await;
    let issuer = "https://issuer.example";
    let mut env = Env::start_with(|raw| {
        traced(&sink)(raw);
        raw.jwt.enabled = true;
        raw.jwt.issuer = issuer.into();
        raw.jwt.jwks_url = format!("{}/jwks", jwks_server.uri());
    })
    .await;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let jwt_for = |sub: &str| {
        format!(
            "{}.{}.{}",
            b64(json!({"alg": "ES256", "typ": "at+jwt", "kid": "unknown-kid"})),
            b64(json!({"iss": issuer, "sub": sub, "exp": 4102444800_i64, "aud": "api"})),
            "c2lnbmF0dXJl"
        )
    };
    // Two tokens: a refused one is negative-cached.
    let (first, jwt) = (jwt_for("alice"), jwt_for("bob"));
    // The start-up fetch (background, untraced) has begun once the server
    // saw it; it holds the fetch lock until done. A first request for the
    // unknown kid then waits for it (no refetch: the set was just fetched),
    // so once it is answered, the start-up fetch is over.
    for _ in 0..20_000 {
        if !jwks_server
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(env.get("/api", &first).await.status, 401);
    // Past the refetch interval, the unknown kid refetches on the request's behalf.
    env.advance(std::time::Duration::from_secs(3600));
    let r = env.get("/api", &jwt).await;
    assert_eq!(r.status, 401, "no key for that kid: {}", r.text());
    stop(&mut env).await;

    let spans = sink.spans();
    let fetch = one(&spans, "jwks fetch");
    let request = spans
        .iter()
        .find(|s| s.name == "tokengate proxy" && s.trace_id == fetch.trace_id)
        .expect("the fetch is in a request's trace");
    assert_eq!(fetch.trace_id, request.trace_id);
    assert_eq!(fetch.parent_span_id, request.span_id);
    assert_eq!(fetch.attr("http.response.status_code"), Some("200"));
    let fetches = jwks_server.received_requests().await.unwrap();
    assert_eq!(fetches.len(), 2, "start-up fetch, then the request's");
    assert!(fetches[0].headers.get("traceparent").is_none());
    let (trace, parent, _) = parse_traceparent(
        fetches[1]
            .headers
            .get("traceparent")
            .expect("the request's JWKS fetch carries its traceparent")
            .to_str()
            .unwrap(),
    );
    assert_eq!(
        (trace, parent),
        (request.trace_id.clone(), fetch.span_id.clone())
    );
    for s in &spans {
        assert!(
            !s.all_text().contains(&jwt[..40]),
            "the JWT leaked into {s:#?}"
        );
    }
}

#[tokio::test]
async fn a_collector_that_never_answers_does_not_hold_shutdown_past_its_deadline() {
    // Accepts connections and never says a word: each export hangs until
    // the export timeout (10 s), and the SDK's own flush waits 5 s.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", black_hole.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = black_hole.accept().await {
            conns.push(c);
        }
    });
    let mut env = Env::start_with(move |raw| {
        raw.tracing.otlp_endpoint = Some(endpoint);
        raw.shutdown_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    env.allow(TOKEN, 1).await;
    let req = request(Method::GET, &env.url("/api"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(empty())
        .unwrap();
    assert_eq!(send(&env.http1, req).await.status, 200);
    env.gate.begin_shutdown();
    // A deadline, not a sleep: `run` must return within shutdown_timeout
    // (plus slack for a loaded machine), whatever the collector does.
    tokio::time::timeout(std::time::Duration::from_secs(3), env.gate.stopped())
        .await
        .expect("the span flush held shutdown past shutdown_timeout");
    held.abort();
}
