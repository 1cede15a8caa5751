//! The upstream's connection pool through the whole gate (`http::pool`;
//! its rules one by one are unit-tested there): requests one after another
//! share one upstream connection, whatever kind of response body they get.

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
