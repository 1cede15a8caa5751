//! The upstream's connection pool through the whole gate (`http::pool`;
//! its rules one by one are unit-tested there): requests one after another
//! share one upstream connection, whatever kind of response body they get;
//! introspections share one AS connection.

mod common;

use common::*;
use http::Method;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The test upstream's routes behind a listener that counts the connections
/// it accepts.
async fn counting_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    let state = Arc::new(UpState::default());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            serve_upstream_conn(state.clone(), stream);
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn should_send_sequential_requests_over_one_upstream_connection() {
    let (addr, conns) = counting_upstream().await;
    let env = Env::start_with(|raw| raw.upstream = format!("http://{addr}")).await;
    env.allow("tok", 1).await;

    // An echo (a body with a length), an empty 204 and 304, a HEAD (a length
    // but no body), a chunked download: each gives its connection back, the
    // empty ones although nobody reads a body that is over before it starts.
    for _ in 0..2 {
        assert_eq!(env.get("/a", "tok").await.status, 200);
        assert_eq!(env.get("/status/204", "tok").await.status, 204);
        assert_eq!(env.get("/status/304", "tok").await.status, 304);
        let head = request(Method::HEAD, &env.url("/h"))
            .header("authorization", "Bearer tok")
            .body(empty())
            .unwrap();
        assert_eq!(send(&env.http1, head).await.status, 200);
        let r = env.get("/download/200000", "tok").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 200_000);
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

/// What the counting AS saw: connections accepted, and each request's
/// target and `Host`.
#[derive(Default)]
struct AsSeen {
    conns: AtomicUsize,
    requests: std::sync::Mutex<Vec<(String, String)>>,
}

/// An introspection endpoint that answers every token as active and counts
/// the connections it accepts.
async fn counting_as() -> (std::net::SocketAddr, Arc<AsSeen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AsSeen::default());
    let st = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            st.conns.fetch_add(1, Ordering::SeqCst);
            let st = st.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    let host = req
                        .headers()
                        .get(http::header::HOST)
                        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                        .unwrap_or_default();
                    st.requests
                        .lock()
                        .unwrap()
                        .push((req.uri().to_string(), host));
                    async move {
                        // Far in the future whatever the gate's clock says.
                        let body = r#"{"active":true,"scope":"read","exp":4102444800}"#;
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn should_introspect_over_one_as_connection_in_origin_form_with_host() {
    let (addr, seen) = counting_as().await;
    let env = Env::start_with(|raw| {
        raw.introspection.url = format!("http://{addr}/oauth/introspect");
    })
    .await;

    // Five new tokens, five introspections, one after another: one AS
    // connection, each request in origin-form with the endpoint's `Host`.
    for i in 0..5 {
        assert_eq!(env.get("/a", &format!("tok-{i}")).await.status, 200);
    }
    assert_eq!(seen.conns.load(Ordering::SeqCst), 1);
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 5);
    for (target, host) in requests {
        assert_eq!(target, "/oauth/introspect");
        assert_eq!(host, addr.to_string());
    }
}
