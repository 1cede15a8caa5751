//! WebSocket (HTTP/1.1 Upgrade) through tokengate: a real WebSocket client and
//! server (tokio-tungstenite) on either side of the tunnel. The tunnel is
//! closed when the token's `exp` passes and at the shutdown deadline.
#![expect(clippy::result_large_err)] // tungstenite's handshake callback type

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Heads = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A WebSocket echo server; records each handshake's request headers.
async fn ws_echo_upstream() -> (SocketAddr, Heads) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Heads = Arc::default();
    let h = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let record = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                              resp| {
                    h.lock().unwrap().push(
                        req.headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
                            .collect(),
                    );
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, record).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

async fn ws_connect(
    gate: SocketAddr,
    token: Option<&str>,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{gate}/chat").into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let tcp = TcpStream::connect(gate).await.unwrap();
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(ws, _)| ws)
}

async fn echo(ws: &mut WebSocketStream<TcpStream>, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("no echo within 10s")
        .expect("tunnel closed")
        .unwrap();
    assert_eq!(got, Message::text(text));
}

/// Waits (at most 20 s) for the tunnel to end: a close frame, an error or EOF.
async fn closed(ws: &mut WebSocketStream<TcpStream>) -> bool {
    let until_end = async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), until_end)
        .await
        .is_ok()
}

async fn ws_env(configure: impl FnOnce(&mut tokengate::config::RawConfig)) -> (Env, Heads) {
    let (up, heads) = ws_echo_upstream().await;
    let env = Env::start_with(|raw| {
        raw.upstream = format!("http://{up}");
        configure(raw);
    })
    .await;
    (env, heads)
}

#[tokio::test]
async fn should_tunnel_a_websocket_after_the_token_is_accepted() {
    let (env, heads) = ws_env(|_| {}).await;
    env.allow("tok", 1).await;

    let mut ws = ws_connect(env.gate.addr, Some("tok")).await.unwrap();
    echo(&mut ws, "hello").await;
    echo(&mut ws, "twice").await;

    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    let get = |n: &str| {
        heads[0]
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("x-auth-subject"), Some("alice"));
    assert_eq!(get("upgrade"), Some("websocket"));
    assert_eq!(get("connection"), Some("upgrade"));
    assert!(get("sec-websocket-key").is_some());
}

#[tokio::test]
async fn should_refuse_the_upgrade_without_a_valid_token() {
    let (env, heads) = ws_env(|_| {}).await;
    env.answer("dead", json!({ "active": false }), 1).await;
    for token in [None, Some("dead")] {
        match ws_connect(env.gate.addr, token).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401)
            }
            other => panic!("expected a 401, got {other:?}"),
        }
    }
    assert!(
        heads.lock().unwrap().is_empty(),
        "nothing may reach the upstream"
    );
}

#[tokio::test]
async fn should_close_the_tunnel_when_the_token_expires() {
    let (env, _) = ws_env(|_| {}).await;
    // Expires in 2 s (by tokengate's clock): long enough to talk, short to wait for.
    let body = json!({ "active": true, "sub": "alice", "exp": env.now() + 2 });
    env.answer("short", body, 1).await;

    let mut ws = ws_connect(env.gate.addr, Some("short")).await.unwrap();
    echo(&mut ws, "before exp").await;
    assert!(closed(&mut ws).await, "the tunnel must close at exp");
}

#[tokio::test]
async fn should_close_tunnels_at_the_shutdown_deadline() {
    let (env, _) = ws_env(|raw| raw.shutdown_timeout = Duration::from_millis(300)).await;
    env.allow("tok", 1).await; // exp in an hour: only shutdown can end it
    let mut ws = ws_connect(env.gate.addr, Some("tok")).await.unwrap();
    echo(&mut ws, "hi").await;

    let Env { gate, auth, .. } = env;
    drop(gate); // resolves the shutdown future
    assert!(
        closed(&mut ws).await,
        "shutdown must close an open tunnel at its deadline"
    );
    drop(auth);
}

#[tokio::test]
async fn should_strip_upgrade_headers_from_requests_that_do_not_upgrade() {
    let env = Env::start().await;
    env.allow("tok", 1).await;
    // `Upgrade` without `Connection: upgrade` is not an upgrade request: both
    // hop-by-hop fields go, as for any other request.
    let req = "GET /x HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\r\n\
               Upgrade: websocket\r\nConnection: close\r\n\r\n";
    let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
    let echo = parse_responses(&raw, &[]).remove(0).echo();
    assert!(!echo.has("upgrade"), "{echo:?}");
    assert!(!echo.has("connection"), "{echo:?}");
}

/// Issue 12 item 8: a tunnel nobody talks on is closed after
/// `limits.tunnel_idle_timeout`, even on a public route with no token `exp`
/// (the unit tests in `src/upgrade.rs` pin the timing with paused time; this
/// one checks the setting reaches real tunnels, with a short real timeout
/// because the copy loop runs on real sockets).
#[tokio::test]
async fn should_close_an_idle_tunnel_on_a_public_route() {
    let (env, _) = ws_env(|raw| {
        raw.routes = vec![tokengate::config::RawRoute::public("/")];
        raw.limits.tunnel_idle_timeout = Duration::from_millis(500);
    })
    .await;
    let mut ws = ws_connect(env.gate.addr, None).await.unwrap();
    echo(&mut ws, "then silence").await;
    assert!(
        closed(&mut ws).await,
        "an idle tunnel must close after tunnel_idle_timeout"
    );
}

/// Issue 12 item 8: an open tunnel holds a `limits.max_connections` slot. With
/// one slot and a tunnel open, a new connection waits in the backlog until the
/// tunnel closes (before the fix the tunnel gave its slot back at the 101).
#[tokio::test]
async fn should_count_an_open_tunnel_against_max_connections() {
    let (env, _) = ws_env(|raw| {
        raw.routes = vec![tokengate::config::RawRoute::public("/")];
        raw.limits.max_connections = 1;
    })
    .await;
    let mut ws = ws_connect(env.gate.addr, None).await.unwrap();
    echo(&mut ws, "holding the only slot").await;

    let mut other = TcpStream::connect(env.gate.addr).await.unwrap();
    other
        .write_all(b"GET /x HTTP/1.1\r\nHost: gate\r\n\r\n")
        .await
        .unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(500), read_response(&mut other)).await;
    assert!(
        waiting.is_err(),
        "a connection was served while a tunnel held the only slot: {waiting:?}"
    );
    echo(&mut ws, "still open").await;

    ws.close(None).await.unwrap();
    drop(ws); // the client hangs up: the tunnel ends
    let served = tokio::time::timeout(Duration::from_secs(10), read_response(&mut other))
        .await
        .expect("the waiting connection is served once the tunnel closes");
    // The WebSocket-only upstream refuses a plain GET: any answer shows the
    // connection was served.
    assert!(served.is_some(), "closed without a response");
}
