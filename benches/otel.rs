//! What OpenTelemetry tracing costs per request: one cache-hit request end
//! to end (a real tokengate through `tokengate::run`, a hyper upstream and a
//! hyper AS, over loopback keep-alive), with tracing off (the default), on
//! and exported to an in-process OTLP collector, and on for a caller whose
//! `traceparent` says "not sampled". `cargo bench --bench otel`; results in
//! BENCHMARKS.md ("OpenTelemetry cost").
//!
//! Tracing is turned on through `OTEL_EXPORTER_OTLP_ENDPOINT` and a config
//! file read by `tokengate::config::load`, not through `[tracing]`: the same
//! file then builds on a commit from before tracing existed, whose "off" row
//! is the before/after comparison.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

const TOKEN: &str = "Bearer 4f3c2a1b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2";

/// Serves `answer` to every request on a fresh loopback port.
async fn serve(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .expect("response"),
                        )
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A collector that counts the spans it receives (and keeps nothing).
#[derive(Clone, Default)]
struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let n: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(Default::default()))
    }
}

async fn sink() -> (SocketAddr, Sink) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sink = Sink::default();
    let service =
        opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(
            sink.clone(),
        );
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    (addr, sink)
}

/// Starts a tokengate in front of `upstream`, asking `auth`; tracing on when
/// `otlp` is given. Returns its address.
async fn gate(upstream: SocketAddr, auth: SocketAddr, otlp: Option<SocketAddr>) -> SocketAddr {
    let dir = std::env::temp_dir().join(format!("tokengate-bench-otel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!("{}.toml", otlp.is_some()));
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\n\
             [introspection]\nurl = \"http://{auth}/introspect\"\nclient_id = \"bench\"\n\
             client_secret = \"bench-secret\"\nprobe = \"off\"\n\
             [log]\naccess = false\n"
        ),
    )
    .expect("config file");
    // The environment is read by `load`, once, here (no other thread reads it).
    match otlp {
        Some(addr) => std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        None => std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT"),
    }
    let raw = tokengate::config::load(Some(&file)).expect("bench config loads");
    std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
    let settings = raw.validate().expect("bench config is valid");
    let app = tokengate::App::new(settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(tokengate::run(app, listener, std::future::pending()));
    addr
}

fn end_to_end(c: &mut Criterion) {
    tokengate::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (off, on, otlp) = rt.block_on(async {
        let upstream = serve("{\"ok\":true}").await;
        let auth = serve(
            r#"{"active":true,"client_id":"bench-client","sub":"user-1234","scope":"read write","token_type":"Bearer","exp":4102444800}"#,
        )
        .await;
        let (otlp_addr, otlp) = sink().await;
        let off = gate(upstream, auth, None).await;
        let on = gate(upstream, auth, Some(otlp_addr)).await;
        (off, on, otlp)
    });
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let get = |addr: SocketAddr, traceparent: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut req = http::Request::get(format!("http://{addr}/api/items"))
                .header("authorization", TOKEN);
            if let Some(tp) = traceparent {
                req = req.header("traceparent", tp);
            }
            let resp = client
                .request(req.body(Empty::new()).expect("request"))
                .await
                .expect("the gate answers");
            assert_eq!(resp.status(), 200);
            let _ = resp.into_body().collect().await;
        }
    };
    // Warm: the first request of each gate introspects; the rest are hits.
    rt.block_on(get(off, None));
    rt.block_on(get(on, None));

    let mut group = c.benchmark_group("e2e cache hit");
    group.bench_function("tracing off", |b| b.iter(|| rt.block_on(get(off, None))));
    group.bench_function("tracing on, sampled and exported", |b| {
        b.iter(|| rt.block_on(get(on, None)))
    });
    group.bench_function("tracing on, caller not sampling", |b| {
        b.iter(|| {
            rt.block_on(get(
                on,
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            ))
        })
    });
    group.finish();
    // The exporter sends in batches every few seconds; a count of 0 after a
    // long run would mean the "on" rows measured nothing.
    let exported = otlp.0.load(Ordering::Relaxed);
    eprintln!("spans received by the in-process collector: {exported}");
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
