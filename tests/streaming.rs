//! Bodies stream through tokengate in both directions with bounded memory.
//!
//! A separate test binary (its own process), so that RSS is not disturbed by the
//! other suites; the tests here take a lock so they never overlap each other.
//! Client, tokengate and upstream all live in this process, so any of them
//! buffering a 64 MiB body shows up in the peak RSS.

mod common;

use common::*;
use http::Method;
use http_body_util::BodyExt;

const BODY: usize = 64 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;
/// Far below the body size: a single full buffer anywhere would exceed it.
const MAX_GROWTH: u64 = 32 * MIB;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts tokengate and warms up every connection pool, so the baseline already
/// includes the fixed per-connection buffers.
async fn warm_env() -> Env {
    let env = Env::start().await;
    env.allow("tok", 1).await;
    assert_eq!(env.get("/warm", "tok").await.status, 200);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_stream_64mib_upload_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let env = warm_env().await;

    let baseline = rss_bytes();
    let peak = RssPeak::start();
    let req = request(Method::PUT, &env.url("/upload"))
        .header("authorization", "Bearer tok")
        .body(streamed_body(BODY))
        .unwrap();
    let r = send(&env.http1, req).await;
    let peak = peak.finish();

    assert_eq!(
        r.echo().body_len,
        Some(BODY as u64),
        "every byte reached the upstream"
    );
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < MAX_GROWTH,
        "RSS grew by {} MiB while uploading 64 MiB: the body was buffered",
        growth / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_stream_64mib_download_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let env = warm_env().await;

    let baseline = rss_bytes();
    let peak = RssPeak::start();
    let req = request(Method::GET, &env.url(&format!("/download/{BODY}")))
        .header("authorization", "Bearer tok")
        .body(empty())
        .unwrap();
    let resp = env.http1.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            received += d.len();
        }
    }
    let peak = peak.finish();

    assert_eq!(received, BODY, "every byte reached the client");
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < MAX_GROWTH,
        "RSS grew by {} MiB while downloading 64 MiB: the body was buffered",
        growth / MIB
    );
}

/// Guards the two tests above against passing vacuously: the same measurement
/// must see a download that *is* collected into one buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_measurement_should_detect_a_buffered_64mib_body() {
    let _serial = SERIAL.lock().await;
    let env = warm_env().await;

    let baseline = rss_bytes();
    let peak = RssPeak::start();
    let req = request(Method::GET, &env.url(&format!("/download/{BODY}")))
        .header("authorization", "Bearer tok")
        .body(empty())
        .unwrap();
    let resp = env.http1.request(req).await.unwrap();
    let all = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(all.len(), BODY);
    drop(all);
    let peak = peak.finish();

    let growth = peak.saturating_sub(baseline);
    assert!(
        growth >= MAX_GROWTH,
        "a buffered 64 MiB body grew RSS by only {} MiB: the measurement is blind",
        growth / MIB
    );
}
