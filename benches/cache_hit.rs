//! tokengate's own work per cache hit, one component at a time, each with a
//! budget: `cargo bench --bench cache_hit`, then `bench/budget.sh` compares
//! criterion's medians with [`BUDGETS`] and their sum with the 3 µs target.
//! What the bare hyper stack does anyway (parsing, the upstream call, the
//! pool) is not here: only what a cache hit adds to it. The access line is
//! not here either (it goes through the global `tracing` subscriber): it is
//! measured in the real process, `bench/profile.sh ir` with `log.access` on
//! and off (see BENCHMARKS.md). `cargo test --all-targets` runs each once.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use std::sync::Arc;
use std::time::Duration;
use tokengate::cache::TokenCache;
use tokengate::clock::SystemClock;
use tokengate::config::{RawConfig, Secret, Settings};
use tokengate::introspection::answer::Answer;
use tokengate::introspection::Introspection;
use tokengate::policy::{self, Access};
use tokengate::token::{self, TokenSources};
use tokengate::upstream::forward::{self, Hop, Peer};

/// Budget per component, in nanoseconds, read by `bench/budget.sh` (one
/// `"name" => ns` a line; keep the format). The sum is the 3 µs target for
/// tokengate's own work per cache hit.
#[rustfmt::skip]
pub const BUDGETS: &[(&str, u32)] = &[
    ("hit/routing_host", 60),
    ("hit/route select", 120),
    ("hit/token extract", 120),
    ("hit/sha256 + fingerprint", 200),
    ("hit/cache get_or_load", 900),
    ("hit/policy evaluate", 150),
    ("hit/request headers", 800),
    ("hit/response headers", 150),
    ("hit/metrics", 250),
];

const AUTH: &str = "Bearer 4f3c2a1b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2";

fn settings() -> Settings {
    let mut c = RawConfig::default();
    c.introspection.url = "http://as.example/introspect".into();
    c.introspection.client_id = "tokengate".into();
    c.introspection.client_secret = Secret::new("s");
    c.validate().expect("bench config is valid")
}

fn answer() -> Introspection {
    serde_json::from_str(
        r#"{"active":true,"client_id":"bench-client","sub":"user-1234","scope":"read write","token_type":"Bearer","iss":"https://auth.example.com","aud":"bench-api","iat":1700000000,"exp":4102444800}"#,
    )
    .expect("sample parses")
}

/// The request wrk sends in bench/run.sh, as hyper hands it over.
fn request() -> Request<()> {
    Request::builder()
        .uri("/")
        .header("host", "127.0.0.1:8080")
        .header("authorization", AUTH)
        .body(())
        .expect("valid request")
}

/// The response nginx's `return 200` sends (bench/run.sh's upstream).
fn response_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("server", HeaderValue::from_static("nginx/1.22.1"));
    h.insert(
        "date",
        HeaderValue::from_static("Mon, 07 Dec 2026 04:00:00 GMT"),
    );
    h.insert("content-type", HeaderValue::from_static("text/plain"));
    h.insert("content-length", HeaderValue::from_static("3"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    h
}

fn components(c: &mut Criterion) {
    let s = settings();
    let req = request();
    c.bench_function("hit/routing_host", |b| {
        b.iter(|| forward::routing_host(black_box(&req)))
    });
    c.bench_function("hit/route select", |b| {
        b.iter(|| {
            s.routes
                .select(&Method::GET, Some("127.0.0.1:8080"), black_box("/"))
                .map(|r| r.name.len())
        })
    });
    let sources = TokenSources::default();
    c.bench_function("hit/token extract", |b| {
        b.iter(|| token::extract(black_box(req.headers()), None, &sources, 4096))
    });
    let tok = token::parse_bearer(AUTH, 4096)
        .expect("valid")
        .expect("a token");
    c.bench_function("hit/sha256 + fingerprint", |b| {
        b.iter(|| {
            let h = black_box(&tok).hash();
            token::fingerprint(&h)
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cache = TokenCache::new(&s.cache, Arc::new(SystemClock));
    let keys: Vec<_> = (0..10_000u32)
        .map(|n| {
            token::parse_bearer(&format!("Bearer tok{n}"), 4096)
                .expect("valid")
                .expect("a token")
                .hash()
        })
        .collect();
    rt.block_on(async {
        for k in &keys {
            let i = answer();
            let _ = cache.get_or_load(*k, || async { Ok(i) }).await;
        }
    });
    // What `block_on` itself costs (entering the runtime, polling, leaving):
    // part of "hit/cache get_or_load" that a request, already inside the
    // runtime, does not pay. Not a component: no budget.
    c.bench_function("ref/block_on of a ready future", |b| {
        b.iter(|| rt.block_on(async { black_box(1) }))
    });
    let mut n = 0;
    c.bench_function("hit/cache get_or_load", |b| {
        b.iter(|| {
            n = (n + 7919) % keys.len();
            rt.block_on(
                cache.get_or_load(keys[n], || async { unreachable!("every key is cached") }),
            )
        })
    });

    let Access::Token(requirements) = &s.routes.default.access else {
        panic!("the default route needs a token")
    };
    let cached = Answer::from(answer());
    c.bench_function("hit/policy evaluate", |b| {
        b.iter(|| {
            policy::evaluate(
                black_box(&cached),
                requirements,
                1_800_000_000,
                &s.identity.claims,
            )
        })
    });

    let principal = policy::evaluate(&cached, requirements, 1_800_000_000, &s.identity.claims)
        .expect("allowed");
    let peer = Peer::new("127.0.0.1:40000".parse().expect("addr"), "http");
    let hop = Hop {
        peer: &peer,
        identity: &s.identity,
        trusted: false,
        method_override: s.forwarding.method_override,
    };
    let host = req.headers().get("host").cloned();
    c.bench_function("hit/request headers", |b| {
        b.iter_batched(
            || req.headers().clone(),
            |mut h| {
                forward::rewrite_request_headers(
                    &mut h,
                    Version::HTTP_11,
                    host.clone(),
                    Some(&principal),
                    &hop,
                );
                h
            },
            BatchSize::SmallInput,
        )
    });
    let resp = response_headers();
    c.bench_function("hit/response headers", |b| {
        b.iter_batched(
            || resp.clone(),
            |mut h| {
                forward::strip_hop_by_hop(&mut h);
                h
            },
            BatchSize::SmallInput,
        )
    });

    let metrics = tokengate::Metrics::new();
    c.bench_function("hit/metrics", |b| {
        b.iter(|| {
            metrics.observe_request(
                Some("default".to_owned()),
                StatusCode::OK,
                Duration::from_micros(black_box(180)),
            )
        })
    });
}

criterion_group!(benches, components);
criterion_main!(benches);
