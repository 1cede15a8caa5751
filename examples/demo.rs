//! `cargo run --example demo`: tokengate end to end in one process, with nothing
//! else to install or start.
//!
//! Three servers, all on 127.0.0.1:
//! * a tiny demo authorization server (AS): `POST /token` (client credentials,
//!   random opaque tokens, 10-minute `exp`), `POST /introspect` (RFC 7662,
//!   HTTP Basic client authentication, counts its calls) and `GET /stats`;
//! * an echo upstream that answers with the method, the path and the identity
//!   headers it received, as JSON;
//! * tokengate itself, through the same `tokengate::run` that the binary uses.
//!
//! The demo mints one token, prints it and the curl lines to try, and runs
//! until Ctrl-C. The AS and the upstream are deliberately small and are not
//! meant for anything but this demo.
#![forbid(unsafe_code)]
#![expect(
    clippy::disallowed_methods,
    reason = "the demo mints tokens with real iat/exp for a real server"
)]

use anyhow::Context;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// Fixed ports, so that the printed curl lines are the same on every run. If
/// one is taken the demo uses a free port instead and says so.
const TOKENGATE_PORT: u16 = 8080;
const AS_PORT: u16 = 8081;

/// The client that asks the demo AS for access tokens (what your API's callers are).
const APP_CLIENT_ID: &str = "demo-app";
const APP_CLIENT_SECRET: &str = "demo-app-secret";
/// Scopes the demo AS grants to `demo-app`.
const APP_SCOPES: &[&str] = &["read", "write"];
/// The client tokengate authenticates as at the introspection endpoint.
const GATE_CLIENT_ID: &str = "tokengate";
const GATE_CLIENT_SECRET: &str = "tokengate-secret";

/// Lifetime of a minted token.
const TOKEN_LIFETIME: Duration = Duration::from_secs(600);
/// Largest request body the demo servers read.
const MAX_BODY_BYTES: usize = 64 * 1024;

type DemoResponse = Response<Full<Bytes>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tokengate::install_crypto_provider();
    // Held to the end of `main`: dropping it would stop the log writer thread.
    let _logging = tokengate::init_tracing(tokengate::config::LogFormat::Text);

    // 1. The demo authorization server.
    let as_listener = bind_preferred(AS_PORT, "demo AS").await?;
    let as_addr = as_listener.local_addr()?;
    let auth_server = Arc::new(AuthServer::default());
    tokio::spawn(serve(as_listener, {
        let auth_server = auth_server.clone();
        move |req| auth_server.clone().handle(req)
    }));

    // 2. The echo upstream (any free port: clients never call it directly).
    let upstream_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the echo upstream")?;
    let upstream_addr = upstream_listener.local_addr()?;
    tokio::spawn(serve(upstream_listener, echo));

    // 3. tokengate, configured the way an operator would: a RawConfig (the
    //    file/env shape), then validate() into Settings.
    let gate_listener = bind_preferred(TOKENGATE_PORT, "tokengate").await?;
    let gate_addr = gate_listener.local_addr()?;
    let raw = tokengate::config::RawConfig {
        listen: gate_addr.to_string(),
        upstream: format!("http://{upstream_addr}"),
        shutdown_timeout: Duration::from_secs(5),
        introspection: tokengate::config::RawIntrospection {
            url: format!("http://{as_addr}/introspect"),
            client_id: GATE_CLIENT_ID.into(),
            client_secret: tokengate::config::Secret::new(GATE_CLIENT_SECRET),
            // The start-up probe would be one more call in the AS's
            // `introspection_calls`, which the walkthrough below counts.
            probe: tokengate::config::ProbeMode::Off,
            ..Default::default()
        },
        ..Default::default()
    };
    let settings = raw.validate().context("demo configuration")?;

    // The demo's own token, minted in-process exactly as `POST /token` would.
    // It is printed to stdout on purpose: it is a throwaway token of this demo
    // AS, and you need it to try the curl lines. tokengate never logs tokens.
    let token = auth_server.mint(APP_CLIENT_ID, &APP_SCOPES.join(" "));

    print_banner(gate_addr, as_addr, upstream_addr, &token);

    let shutdown = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for Ctrl-C; stop the demo with kill");
            std::future::pending::<()>().await;
        }
        info!("Ctrl-C received; stopping the demo");
    };
    tokengate::run(tokengate::App::new(settings), gate_listener, shutdown).await;
    Ok(())
}

/// Binds 127.0.0.1:`port`, or a free port when that one is taken.
async fn bind_preferred(port: u16, what: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => Ok(l),
        Err(e) => {
            let l = TcpListener::bind("127.0.0.1:0")
                .await
                .with_context(|| format!("cannot bind {what} on any port"))?;
            eprintln!(
                "demo: cannot use 127.0.0.1:{port} for {what} ({e}); using {} instead \
                 (the curl lines below use it)",
                l.local_addr()?
            );
            Ok(l)
        }
    }
}

fn print_banner(gate: SocketAddr, auth: SocketAddr, upstream: SocketAddr, token: &str) {
    println!(
        r#"
tokengate demo: everything runs in this process; Ctrl-C stops it.

  tokengate       http://{gate}  -> echo upstream http://{upstream}
  demo AS         http://{auth}  POST /token, POST /introspect, GET /stats
                  clients: {APP_CLIENT_ID}:{APP_CLIENT_SECRET} (gets tokens), {GATE_CLIENT_ID}:{GATE_CLIENT_SECRET} (introspects)

A demo access token (client {APP_CLIENT_ID}, scope "{scopes}", valid 10 minutes):

  {token}

1) No token: 401 with a Bearer challenge
  curl -i http://{gate}/hello

2) With the token: 200, and the identity the upstream saw
  curl -i -H 'Authorization: Bearer {token}' http://{gate}/hello

3) The same call again: answered from tokengate's cache (introspection_calls stays 1)
  curl -i -H 'Authorization: Bearer {token}' http://{gate}/hello
  curl -s http://{auth}/stats

Mint another token:
  curl -s -u {APP_CLIENT_ID}:{APP_CLIENT_SECRET} -d grant_type=client_credentials -d scope=read http://{auth}/token
"#,
        scopes = APP_SCOPES.join(" "),
    );
}

/// A minimal HTTP/1.1 server: one task per connection, `handler` per request.
async fn serve<H, F>(listener: TcpListener, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = DemoResponse> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "demo server: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = handler(req);
                async move { Ok::<_, Infallible>(response.await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "demo server: connection error");
            }
        });
    }
}

// ---------------------------------------------------------------------------
// The echo upstream
// ---------------------------------------------------------------------------

/// Answers with what it was sent: method, path, and the identity headers.
async fn echo(req: Request<Incoming>) -> DemoResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    json_response(
        StatusCode::OK,
        json!({
            "upstream": "echo",
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "identity_headers": {
                "X-Auth-Subject": header("x-auth-subject"),
                "X-Auth-Client-Id": header("x-auth-client-id"),
                "X-Auth-Scope": header("x-auth-scope"),
            },
        }),
    )
}

// ---------------------------------------------------------------------------
// The demo authorization server
// ---------------------------------------------------------------------------

/// What the AS remembers about a token it minted.
struct Issued {
    client_id: String,
    scope: String,
    iat: u64,
    exp: u64,
}

#[derive(Default)]
struct AuthServer {
    /// Minted tokens by value. Expired ones are dropped on the next mint.
    tokens: Mutex<HashMap<String, Issued>>,
    /// Mixed into every token, so two tokens minted in the same nanosecond differ.
    minted: AtomicU64,
    /// Every `POST /introspect` that got an answer: what the cache saves.
    introspection_calls: AtomicU64,
}

impl AuthServer {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> DemoResponse {
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/token") => self.token_endpoint(req).await,
            (&Method::POST, "/introspect") => self.introspection_endpoint(req).await,
            (&Method::GET, "/stats") => json_response(
                StatusCode::OK,
                json!({
                    "introspection_calls": self.introspection_calls.load(Ordering::SeqCst),
                    "tokens_issued": self.minted.load(Ordering::SeqCst),
                }),
            ),
            (_, "/token" | "/introspect" | "/stats") => oauth_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "method not allowed",
            ),
            _ => oauth_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
    }

    /// RFC 6749 §4.4 client credentials grant. The client authenticates with
    /// HTTP Basic (`curl -u id:secret`) or with `client_id`/`client_secret` in the form.
    async fn token_endpoint(&self, req: Request<Incoming>) -> DemoResponse {
        let basic = basic_credentials(&req);
        let Some(form) = read_form(req).await else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "unreadable form body",
            );
        };
        let credentials = basic.or_else(|| {
            Some((
                form.get("client_id")?.clone(),
                form.get("client_secret")?.clone(),
            ))
        });
        let authenticated = credentials
            .as_ref()
            .is_some_and(|(id, secret)| same(id, APP_CLIENT_ID) && same(secret, APP_CLIENT_SECRET));
        if !authenticated {
            return invalid_client();
        }
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only grant_type=client_credentials is supported",
            );
        }
        let scope = match form
            .get("scope")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            None => APP_SCOPES.join(" "),
            Some(s) if s.split(' ').all(|one| APP_SCOPES.contains(&one)) => s.to_owned(),
            Some(_) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "demo-app may ask for: read write",
                )
            }
        };
        let token = self.mint(APP_CLIENT_ID, &scope);
        let mut resp = json_response(
            StatusCode::OK,
            json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME.as_secs(),
                "scope": scope,
            }),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    /// RFC 7662 introspection. Only `tokengate` may introspect (HTTP Basic).
    async fn introspection_endpoint(&self, req: Request<Incoming>) -> DemoResponse {
        let authenticated = basic_credentials(&req).is_some_and(|(id, secret)| {
            same(&id, GATE_CLIENT_ID) && same(&secret, GATE_CLIENT_SECRET)
        });
        if !authenticated {
            return invalid_client();
        }
        let Some(form) = read_form(req).await else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "unreadable form body",
            );
        };
        let Some(token) = form.get("token") else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "missing token");
        };
        let calls = self.introspection_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let now = unix_now();
        let answer = match self.tokens.lock().unwrap().get(token) {
            Some(t) if t.exp > now => json!({
                "active": true,
                "client_id": t.client_id,
                "scope": t.scope,
                "exp": t.exp,
                "iat": t.iat,
                "token_type": "Bearer",
            }),
            _ => json!({ "active": false }),
        };
        // The same fingerprint tokengate puts in its access log; never the token.
        let fingerprint = tokengate::token::fingerprint(&Sha256::digest(token.as_bytes()).into());
        info!(
            target: "demo::as",
            introspection_calls = calls,
            active = answer["active"].as_bool().unwrap_or(false),
            token = %fingerprint,
            "introspection"
        );
        json_response(StatusCode::OK, answer)
    }

    /// Mints a random opaque token for `client_id` with a 10-minute lifetime.
    fn mint(&self, client_id: &str, scope: &str) -> String {
        let n = self.minted.fetch_add(1, Ordering::SeqCst);
        let token = random_token(n);
        let iat = unix_now();
        let mut tokens = self.tokens.lock().unwrap();
        tokens.retain(|_, t| t.exp > iat);
        tokens.insert(
            token.clone(),
            Issued {
                client_id: client_id.to_owned(),
                scope: scope.to_owned(),
                iat,
                exp: iat + TOKEN_LIFETIME.as_secs(),
            },
        );
        token
    }
}

/// 64 hex digits. `rand` is not a dependency, so: two `RandomState`s (whose
/// SipHash keys the standard library seeds from the OS) hash a counter and the
/// time, and SHA-256 mixes the result. Good enough for a demo, not a CSPRNG.
fn random_token(counter: u64) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut digest = Sha256::new();
    for salt in [0u8, 1] {
        let mut h = RandomState::new().build_hasher();
        h.write_u8(salt);
        h.write_u64(counter);
        h.write_u128(nanos);
        digest.update(h.finish().to_le_bytes());
    }
    digest.update(counter.to_le_bytes());
    digest.update(nanos.to_le_bytes());
    hex::encode(digest.finalize())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Compares secrets through their SHA-256, so the time taken does not depend
/// on how many leading bytes match.
fn same(given: &str, expected: &str) -> bool {
    Sha256::digest(given.as_bytes()) == Sha256::digest(expected.as_bytes())
}

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749
/// §2.3.1: the `oauth2` crate form-encodes both parts before base64).
fn basic_credentials<B>(req: &Request<B>) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

/// Reads an `application/x-www-form-urlencoded` body (at most `MAX_BODY_BYTES`).
async fn read_form(req: Request<Incoming>) -> Option<HashMap<String, String>> {
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .ok()?
        .to_bytes();
    let body = std::str::from_utf8(&body).ok()?;
    Some(
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect(),
    )
}

/// Decodes one `application/x-www-form-urlencoded` component (`+`, `%XX`).
fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(s.as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_default()
}

/// Standard base64 (RFC 4648 §4), padding optional. `None` on any other byte.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn json_response(status: StatusCode, body: serde_json::Value) -> DemoResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> DemoResponse {
    json_response(
        status,
        json!({ "error": error, "error_description": description }),
    )
}

/// RFC 6749 §5.2: 401 with a Basic challenge for a failed client authentication.
fn invalid_client() -> DemoResponse {
    let mut resp = oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "client authentication failed",
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"tokengate-demo\""),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_and_basic_decoding() {
        for (input, want) in [
            ("a+b%20c%3D", "a b c="),
            ("tokengate", "tokengate"),
            ("bad%zzescape", "bad%zzescape"),
            ("cut%4", "cut%4"),
            ("%", "%"),
        ] {
            assert_eq!(form_decode(input), want, "{input}");
        }
        assert_eq!(base64_decode("dGVzdDpwYXNz").unwrap(), b"test:pass");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("not base64!").is_none());
    }

    #[test]
    fn tokens_are_64_hex_digits_and_distinct() {
        let (a, b) = (random_token(0), random_token(0));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
