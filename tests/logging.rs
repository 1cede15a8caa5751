//! Access tokens never reach the logs; their 8-hex fingerprint does.
//!
//! A separate test binary, because it installs a *global* subscriber: tokengate
//! logs from connection tasks on every worker thread, which a thread-local
//! (`set_default`) subscriber would miss. It captures every level of every
//! crate except the fake AS's own (wiremock prints the requests it receives).

mod common;

use common::*;
use http::Method;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;
use wiremock::ResponseTemplate;

/// Everything written by the subscriber, from all threads.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Installs (once) a global subscriber writing text *and* JSON lines (the two
/// `log.format`s) into one buffer.
fn capture() -> LogBuf {
    static BUF: OnceLock<LogBuf> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = LogBuf::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("trace,wiremock=off"))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(buf.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(buf.clone()),
            );
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        buf
    })
    .clone()
}

fn fingerprint(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..4])
}

#[tokio::test]
async fn should_log_the_fingerprint_and_never_the_raw_token() {
    let logs = capture();
    let env = Env::start_with(|c| c.limits.max_token_bytes = 64).await;

    let good = "SECRETgood-Zq7Kx2Lw9Vb4Nm8Rt";
    let inactive = "SECRETinactive-Hy3Jd6Fs1Pa5";
    let as_down = "SECRETasdown-Wc8Eu2Io4Gk7";
    let echoed = "SECRETechoed-Tn5Bv9Qm3Xs6";
    let malformed = "SECRETmalformed-Ld2Ok7Cj4";
    let too_long = format!("SECRETtoolong-{}", "Ab9".repeat(30));

    env.allow(good, 1).await;
    env.answer(inactive, json!({"active": false}), 1).await;
    introspection_of(as_down)
        .respond_with(ResponseTemplate::new(500).set_body_string(format!("token {as_down} failed")))
        .mount(&env.auth)
        .await;
    // A broken AS (or a gateway in front of it) that echoes the token back in a
    // mistyped member: the parse error must not carry it into the logs.
    env.answer(echoed, json!({"active": echoed, "sub": echoed}), 1)
        .await;

    assert_eq!(env.get("/ok?x=1", good).await.status, 200);
    assert_eq!(env.get("/ok", good).await.status, 200, "cache hit");
    let req = request(Method::GET, &env.url("/ok-h2"))
        .header("authorization", format!("Bearer {good}"))
        .body(empty())
        .unwrap();
    assert_eq!(send(&env.h2c, req).await.status, 200);
    assert_eq!(env.get("/x", inactive).await.status, 401);
    assert_eq!(
        env.get("/x", inactive).await.status,
        401,
        "negative cache hit"
    );
    assert_eq!(env.get("/x", as_down).await.status, 503);
    assert_eq!(env.get("/x", echoed).await.status, 503);
    let r = env
        .get_with_auth("/x", &[&format!("Bearer {malformed},{malformed}")])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(env.get("/x", &too_long).await.status, 400);

    // No wait needed: the access line is written before the response is handed
    // back to hyper, so it is in the buffer by the time the client has its answer.
    let text = logs.text();

    for (name, token) in [
        ("good", good),
        ("inactive", inactive),
        ("as_down", as_down),
        ("echoed", echoed),
        ("malformed", malformed),
        ("too_long", too_long.as_str()),
    ] {
        assert!(
            !text.contains(token),
            "the raw {name} token is in the logs:\n{text}"
        );
    }
    assert!(
        !text.contains("SECRET"),
        "part of a raw token is in the logs:\n{text}"
    );

    for (token, status) in [
        (good, "200"),
        (inactive, "401"),
        (as_down, "503"),
        (echoed, "503"),
    ] {
        let fp = fingerprint(token);
        let access = |needle: &str, status: &str| {
            text.lines().any(|l| {
                l.contains("tokengate::access") && l.contains(needle) && l.contains(status)
            })
        };
        assert!(
            access(&format!("token=\"{fp}\""), &format!("status={status}")),
            "no text access line with fingerprint {fp} and status {status}:\n{text}"
        );
        assert!(
            access(
                &format!("\"token\":\"{fp}\""),
                &format!("\"status\":{status}")
            ),
            "no JSON access line with fingerprint {fp} and status {status}:\n{text}"
        );
    }
}
