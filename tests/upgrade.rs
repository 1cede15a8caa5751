//! HTTP/1.1 Upgrade is an allow-list (`upgrade_protocols`, default
//! `["websocket"]`; `h2c` never): the h2c smuggling attack of issue 12 item 1,
//! reproduced against a real h2c-capable upstream (hypercorn, started by the
//! test), and a `101` the upstream sends for anything that was not asked for is
//! never relayed (a raw in-process upstream that answers 101 to everything).

mod common;

use common::*;
use http::Method;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokengate::config::RawRoute;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// hypercorn: a real h2c-capable upstream
// ---------------------------------------------------------------------------

/// `python3 -m hypercorn tests/hypercorn_app.py` on 127.0.0.1 (a free port that
/// hypercorn picks itself and logs), killed on drop. Every request it serves
/// is in [`Hypercorn::seen`].
struct Hypercorn {
    _child: tokio::process::Child,
    addr: SocketAddr,
    log: PathBuf,
    dir: PathBuf,
}

impl Hypercorn {
    /// `None` when hypercorn is not installed (after the loud skip; under CI the
    /// test fails instead).
    async fn start(test: &str) -> Option<Self> {
        if python_with(&["hypercorn"]).is_none() {
            skip_for_missing(
                test,
                "python3 with the hypercorn package (pip install hypercorn==0.18.0)",
            );
            return None;
        }
        let dir = temp_dir("hypercorn");
        let log = dir.join("requests.jsonl");
        std::fs::write(&log, "").unwrap();
        let mut child = tokio::process::Command::new("python3")
            .args([
                "-m",
                "hypercorn",
                "hypercorn_app:app",
                "--bind",
                "127.0.0.1:0",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests"))
            .env("HYPERCORN_APP_LOG", &log)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start python3 -m hypercorn");
        // "Running on http://127.0.0.1:PORT (CTRL + C to quit)": the port it bound.
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("Running on http://").nth(1) {
                    return rest.split_whitespace().next().unwrap().parse().unwrap();
                }
            }
            panic!("hypercorn exited before listening");
        })
        .await
        .expect("hypercorn did not start within 20s");
        // Keep draining its log so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Some(Self {
            _child: child,
            addr,
            log,
            dir,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request the ASGI app saw: `{path, http_version, headers}`.
    fn seen(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Hypercorn {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// The attack
// ---------------------------------------------------------------------------

/// One HTTP/2 frame header (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal header field without indexing, new name", no Huffman
/// (RFC 7541 §6.2.2): enough to say anything without a table.
fn hpack_literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0);
    for s in [name, value] {
        block.push(u8::try_from(s.len()).unwrap());
        block.extend_from_slice(s.as_bytes());
    }
}

/// What the smuggling client got.
#[derive(Debug)]
struct Outcome {
    /// The status of the answer to the upgrade request.
    status: u16,
    /// Whether the HTTP/2 request sent inside the tunnel was answered.
    smuggled_answered: bool,
}

/// The attack of issue 12 item 1, on any byte stream to tokengate: an h2c
/// upgrade of a request to a public route; if a 101 comes back, the HTTP/2
/// preface and, on stream 3 (stream 1 is the upgraded request), a request for
/// `/admin/secret` with forged identity headers and no token.
async fn smuggle<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, upgrade_head: &str) -> Outcome {
    s.write_all(upgrade_head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("no answer to the upgrade request within 20s")
            .unwrap();
        assert!(n > 0, "closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    if status != 101 {
        return Outcome {
            status,
            smuggled_answered: false,
        };
    }
    // Inside the tunnel: HTTP/2 straight to the upstream.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    let mut block = Vec::new();
    for (k, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/admin/secret"),
        (":authority", "gate"),
        ("x-auth-subject", "root"),
        ("x-auth-scope", "admin"),
    ] {
        hpack_literal(&mut block, k, v);
    }
    out.extend(frame(0x1, 0x1 | 0x4, 3, &block)); // HEADERS, END_STREAM | END_HEADERS
    s.write_all(&out).await.unwrap();
    let mut rest = buf[head_end..].to_vec();
    let needle = b"reached /admin/secret";
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if rest.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .unwrap_or(false);
    Outcome {
        status,
        smuggled_answered: answered,
    }
}

/// The upgrade requests the attack tries: with and without `HTTP2-Settings`
/// (named in `Connection` or not), in any case, with a version, and through a
/// protected route with a valid token (`low`, which the tests allow).
const H2C_HEADS: [&str; 5] = [
    "GET /public/x HTTP/1.1\r\nHost: gate\r\nConnection: Upgrade, HTTP2-Settings\r\n\
     Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    "GET /public/x HTTP/1.1\r\nHost: gate\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    "GET /public/x HTTP/1.1\r\nHost: gate\r\nConnection: upgrade\r\nUpgrade: H2C\r\n\
     HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    "GET /public/x HTTP/1.1\r\nHost: gate\r\nConnection: keep-alive, Upgrade\r\n\
     Upgrade: h2c/2\r\nHTTP2-Settings: \r\n\r\n",
    // A protected route with a valid (low-privilege) token works as a door too.
    "GET /api/x HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer low\r\n\
     Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
     HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
];

/// `/public/` needs no token; everything else (the `[policy]` default) does.
fn public_and_protected(hypercorn: &Hypercorn) -> impl FnOnce(&mut tokengate::config::RawConfig) {
    let url = hypercorn.url();
    move |raw| {
        raw.upstream = url;
        raw.routes = vec![RawRoute::public("/public/")];
    }
}

/// What hypercorn saw must hold no trace of the attack: no Upgrade or
/// HTTP2-Settings field, no HTTP/2, no `/admin/secret`.
fn assert_nothing_smuggled(seen: &[Value], outcomes: &[Outcome]) {
    let paths: Vec<&str> = seen.iter().map(|s| s["path"].as_str().unwrap()).collect();
    assert!(
        !paths.contains(&"/admin/secret"),
        "a request smuggled through an h2c tunnel reached the upstream: {seen:#?}"
    );
    for (o, head) in outcomes.iter().zip(H2C_HEADS) {
        assert!(!o.smuggled_answered, "{head:?}: {o:?}");
        // Upgrade is ignored (RFC 9110 §7.8): the request is served as a plain one.
        assert_eq!(o.status, 200, "{head:?}: {o:?}");
    }
    for s in seen {
        assert_eq!(s["http_version"], "1.1", "{s}");
        for h in s["headers"].as_array().unwrap() {
            let name = h[0].as_str().unwrap();
            let value = h[1].as_str().unwrap().to_ascii_lowercase();
            let upgrade_field = matches!(name, "upgrade" | "http2-settings")
                || (name == "connection" && value.contains("upgrade"));
            assert!(!upgrade_field, "the upstream saw {h} in {s}");
        }
    }
    // Each upgrade request itself was served, once, over HTTP/1.1.
    let requested: Vec<&str> = H2C_HEADS
        .iter()
        .map(|h| h.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(paths, requested, "{seen:#?}");
}

#[tokio::test]
async fn should_not_let_h2c_upgrade_smuggle_requests_to_a_real_hypercorn() {
    let Some(hc) =
        Hypercorn::start("should_not_let_h2c_upgrade_smuggle_requests_to_a_real_hypercorn").await
    else {
        return;
    };
    let env = Env::start_with(public_and_protected(&hc)).await;
    env.allow("low", 1).await;
    // The token gate itself holds: without the tunnel, /admin/secret needs a token.
    let r = send(
        &env.http1,
        request(Method::GET, &env.url("/admin/secret"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);

    let mut outcomes = Vec::new();
    for head in H2C_HEADS {
        let tcp = TcpStream::connect(env.gate.addr).await.unwrap();
        outcomes.push(smuggle(tcp, head).await);
    }
    assert_nothing_smuggled(&hc.seen(), &outcomes);
}

/// The same attack over TLS (ALPN http/1.1): the upgrade is decided on the
/// request, whatever the transport.
#[tokio::test]
async fn should_not_let_h2c_upgrade_smuggle_requests_over_tls() {
    let Some(hc) = Hypercorn::start("should_not_let_h2c_upgrade_smuggle_requests_over_tls").await
    else {
        return;
    };
    let ca = TestCa::new("test CA");
    let dir = temp_dir("tls-h2c");
    let leaf = ca.issue(&["localhost"]);
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let public = public_and_protected(&hc);
    let env = Env::start_with(|raw| {
        public(raw);
        raw.tls.cert_file = cert.display().to_string();
        raw.tls.key_file = key.display().to_string();
    })
    .await;
    env.allow("low", 1).await;
    let mut config = tls_client_config(&[ca.der()]);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut outcomes = Vec::new();
    for head in H2C_HEADS {
        let tcp = TcpStream::connect(env.gate.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        outcomes.push(smuggle(tls, head).await);
    }
    assert_nothing_smuggled(&hc.seen(), &outcomes);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------
// An upstream that answers 101 to everything
// ---------------------------------------------------------------------------

/// A raw TCP upstream that answers every request head with
/// `101 Switching Protocols` + `Upgrade: <protocol>`, whatever was asked (raw
/// bytes, because a hyper server will not send a 101 to a request that did not
/// ask to upgrade). Records each request head and counts the connections that
/// were closed on it after the 101.
struct SwitchingUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    closed_after_101: Arc<AtomicUsize>,
    closed: Arc<tokio::sync::Notify>,
}

impl SwitchingUpstream {
    async fn start(protocol: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let closed_after_101 = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(tokio::sync::Notify::new());
        let (h, c, n) = (heads.clone(), closed_after_101.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let (h, c, n) = (h.clone(), c.clone(), n.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    h.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let answer = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                         Upgrade: {protocol}\r\n\r\n"
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    // Now "the other protocol": wait for tokengate to hang up.
                    while let Ok(n) = s.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    n.notify_one();
                });
            }
        });
        Self {
            addr,
            heads,
            closed_after_101,
            closed,
        }
    }

    /// Waits (at most 10 s) until `n` connections were closed after their 101.
    async fn wait_closed(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.closed_after_101.load(Ordering::SeqCst) < n {
                self.closed.notified().await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "tokengate kept {} upstream connection(s) open after refusing their 101",
                n - self.closed_after_101.load(Ordering::SeqCst)
            )
        });
    }
}

async fn switching_env(protocol: &'static str) -> (Env, SwitchingUpstream) {
    let up = SwitchingUpstream::start(protocol).await;
    let url = format!("http://{}", up.addr);
    let env = Env::start_with(|raw| {
        raw.upstream = url;
        raw.routes = vec![RawRoute::public("/")];
    })
    .await;
    (env, up)
}

/// Sends `head` on a fresh connection and returns the one response.
async fn exchange(gate: SocketAddr, head: &str) -> RawResp {
    let mut s = TcpStream::connect(gate).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), read_response(&mut s))
        .await
        .expect("no response within 20s")
        .expect("closed without a response")
}

#[tokio::test]
async fn should_answer_502_to_a_101_for_a_request_that_did_not_upgrade() {
    let (env, up) = switching_env("h2c").await;
    let heads = [
        // No upgrade at all.
        "GET /plain HTTP/1.1\r\nHost: gate\r\n\r\n",
        // An h2c upgrade: stripped, so the 101 answers a request that no longer asks.
        "GET /h2c HTTP/1.1\r\nHost: gate\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        // An allowed protocol on HTTP/1.0, which has no Upgrade.
        "GET /old HTTP/1.0\r\nHost: gate\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    ];
    for head in heads {
        let r = exchange(env.gate.addr, head).await;
        assert_eq!(r.status, 502, "{head:?}: {r:?}");
        assert_eq!(r.json()["error"], "bad_gateway");
    }
    up.wait_closed(heads.len()).await;
    for h in up.heads.lock().unwrap().iter() {
        let h = h.to_ascii_lowercase();
        assert!(!h.contains("upgrade"), "{h}");
    }
}

#[tokio::test]
async fn should_answer_502_to_a_101_for_another_protocol_than_the_one_requested() {
    let (env, up) = switching_env("h2c").await;
    let head = "GET /chat HTTP/1.1\r\nHost: gate\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let r = exchange(env.gate.addr, head).await;
    assert_eq!(r.status, 502, "{r:?}");
    up.wait_closed(1).await;
    // The allowed upgrade itself was forwarded.
    let seen = up.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(seen.contains("upgrade: websocket"), "{seen}");
}

/// Review finding: `websocket` is allowed, and an upstream endpoint answers
/// `101` + `Upgrade: websocket` without running the handshake (no
/// `Sec-WebSocket-Accept`: say an endpoint that lets the caller pick its
/// status, the websocket-smuggling trick). tokengate relayed it and joined
/// the connections; the upstream server, which never switched, then read
/// the client's next bytes as HTTP/1.1 requests that no token check saw. A
/// WebSocket 101 must now answer the request's key, else 502 and the
/// upstream connection is closed.
#[tokio::test]
async fn should_answer_502_to_a_websocket_101_that_does_not_answer_the_key() {
    let (env, up) = switching_env("websocket").await;
    let head = "GET /chat HTTP/1.1\r\nHost: gate\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let r = exchange(env.gate.addr, head).await;
    assert_eq!(r.status, 502, "{r:?}");
    up.wait_closed(1).await;
}

#[tokio::test]
async fn should_never_relay_a_101_to_an_http2_client() {
    let (env, up) = switching_env("h2c").await;
    let r = send(
        &env.h2c,
        request(Method::GET, &env.url("/over/h2"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 502);
    up.wait_closed(1).await;
}

#[tokio::test]
async fn should_still_tunnel_an_allowed_upgrade_the_upstream_confirms() {
    // A configured protocol other than websocket, matched case-insensitively,
    // and a 101 that names it in another case: a tunnel.
    let up = SwitchingUpstream::start("Example/1").await;
    let url = format!("http://{}", up.addr);
    let env = Env::start_with(|raw| {
        raw.upstream = url;
        raw.routes = vec![RawRoute::public("/")];
        raw.upgrade_protocols = vec!["websocket".into(), "example".into()];
    })
    .await;
    let head = "GET /x HTTP/1.1\r\nHost: gate\r\nConnection: Upgrade\r\n\
                Upgrade: h2c, EXAMPLE/1, other\r\n\r\n";
    let r = exchange(env.gate.addr, head).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("upgrade"), Some("Example/1"));
    let seen = up.heads.lock().unwrap()[0].to_ascii_lowercase();
    // Only the allowed protocol is offered to the upstream.
    assert!(seen.contains("\r\nupgrade: example/1\r\n"), "{seen}");
    assert!(!seen.contains("h2c") && !seen.contains("other"), "{seen}");
}

/// `upgrade_protocols` and `limits.tunnel_idle_timeout` reload without a
/// restart: taking a protocol off the list stops the next upgrade to it.
#[tokio::test]
async fn should_reload_the_upgrade_allow_list_at_once() {
    let up = SwitchingUpstream::start("example").await;
    let url = format!("http://{}", up.addr);
    let configure = |raw: &mut tokengate::config::RawConfig, protocols: &[&str]| {
        raw.upstream = url.clone();
        raw.routes = vec![RawRoute::public("/")];
        raw.upgrade_protocols = protocols.iter().map(|p| p.to_string()).collect();
    };
    let env = Env::start_with(|raw| configure(raw, &["websocket", "example"])).await;
    let head = "GET /x HTTP/1.1\r\nHost: gate\r\nConnection: Upgrade\r\nUpgrade: example\r\n\r\n";
    assert_eq!(exchange(env.gate.addr, head).await.status, 101);

    let mut raw = base_config(&env.auth, &url);
    configure(&mut raw, &["websocket"]);
    raw.limits.tunnel_idle_timeout = Duration::from_secs(60);
    let report = env.gate.reload().reload(raw.validate().unwrap()).unwrap();
    assert!(
        report.restart_required.is_empty(),
        "{:?}",
        report.restart_required
    );
    let now = env.gate.reload().current();
    assert_eq!(now.limits.tunnel_idle_timeout, Duration::from_secs(60));
    // No longer offered: the upstream's 101 answers a plain request → 502.
    assert_eq!(exchange(env.gate.addr, head).await.status, 502);
    let heads = up.heads.lock().unwrap().clone();
    assert!(
        !heads[1].to_ascii_lowercase().contains("upgrade"),
        "{heads:?}"
    );
}
