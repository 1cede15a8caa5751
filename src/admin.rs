//! The admin listener (`[admin] listen`, default 127.0.0.1:9090), apart from the
//! proxy port so that it is never exposed with it:
//!
//! * `GET /healthz`: 200 while the process serves at all (liveness).
//! * `GET /readyz`: 200 once the configuration is loaded, the introspection
//!   endpoint is known (discovery) and every registered [`Readiness`] check
//!   passes (`App::with_clock` registers them: the introspection circuit
//!   breaker is not open; with `introspection.probe = "require"`, a start-up
//!   probe of the endpoint has succeeded); 503 from the moment shutdown starts.
//! * `GET /metrics`: Prometheus text ([`crate::ops::metrics`]).
//! * `POST /purge`: removes one token from both caches, so a revoked token stops
//!   working before its cache TTL ends. Body `token=...` (form) or
//!   `{"token":"..."}` (JSON); `Authorization: Bearer <purge secret>` when
//!   `admin.purge_secret_file` is set. Always 204, cached or not; the token is
//!   never echoed or logged (its 8-hex fingerprint is).

use crate::app::App;
use crate::token;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Largest `POST /purge` body: a maximal token, percent- or JSON-escaped, with room.
const MAX_PURGE_BODY: usize = 64 * 1024;
/// How long open admin connections get once the proxy has drained.
const ADMIN_DRAIN: Duration = Duration::from_secs(1);

type AdminBody = Full<Bytes>;

/// Serves the admin endpoints until `stop` turns true, then gives open admin
/// connections [`ADMIN_DRAIN`] to finish. [`crate::pipeline::run`] spawns it when
/// the app has an admin listener, and stops it after the proxy has drained, so
/// that `/readyz` keeps answering 503 during the drain.
pub async fn serve(app: Arc<App>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let (stream, peer) = tokio::select! {
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(&app, req).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "admin connection closed with error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(ADMIN_DRAIN, graceful.shutdown()).await;
}

/// Routes one admin request.
pub async fn handle(app: &App, req: Request<Incoming>) -> Response<AdminBody> {
    let path = req.uri().path();
    let get_like = matches!(*req.method(), Method::GET | Method::HEAD);
    match path {
        "/healthz" | "/readyz" | "/metrics" if !get_like => method_not_allowed("GET, HEAD"),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match ready(app) {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        "/metrics" => metrics(app, &req).await,
        "/purge" if req.method() != Method::POST => method_not_allowed("POST"),
        "/purge" => purge(app, req).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn ready(app: &App) -> Result<(), &'static str> {
    app.readiness().check()?;
    // Config loaded is implied by `app` existing; discovery is done once the
    // introspector knows an endpoint.
    if app.introspector().url().is_none() {
        return Err("introspection endpoint not discovered yet");
    }
    Ok(())
}

async fn metrics(app: &App, req: &Request<Incoming>) -> Response<AdminBody> {
    let (positive, negative) = app.cache().entry_counts().await;
    app.metrics().set_cache_entries(positive, negative);
    app.metrics()
        .set_open_connections(app.connections().in_use());
    if let Some(fleet) = app.cache().fleet() {
        app.metrics().set_fleet_stats(fleet.stats());
    }
    // Read at scrape time: the breaker changes state inside request handling
    // and by the clock (open → half-open), and a scrape is what needs the value.
    for issuer in app.issuers().all() {
        issuer.metrics.set_breaker_state(issuer.breaker.state());
        issuer.metrics.set_ready(issuer.ready());
    }
    let openmetrics = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (
            app.metrics().render(true),
            crate::ops::metrics::OPENMETRICS_CONTENT_TYPE,
        )
    } else {
        (
            app.metrics().render(false),
            crate::ops::metrics::PROMETHEUS_CONTENT_TYPE,
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Why a purge was refused. Only static text ever reaches the response.
#[derive(Debug, thiserror::Error)]
enum PurgeError {
    #[error("missing or wrong purge secret")]
    Unauthorized,
    #[error("body larger than {MAX_PURGE_BODY} bytes")]
    TooLarge,
    #[error("Content-Type must be application/x-www-form-urlencoded or application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    BadRequest(&'static str),
}

impl PurgeError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }
}

async fn purge(app: &App, req: Request<Incoming>) -> Response<AdminBody> {
    match purge_inner(app, req).await {
        Ok(fingerprint) => {
            app.metrics().purged();
            info!(token = %fingerprint, "token purged from the caches");
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        Err(e) => {
            warn!(reason = %e, "purge refused");
            let mut resp = text(e.status(), format!("{e}\n"));
            if matches!(e, PurgeError::Unauthorized) {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tokengate-admin\""),
                );
            }
            resp
        }
    }
}

/// Checks the secret (before reading any body), reads the token, purges it,
/// and returns its fingerprint.
async fn purge_inner(app: &App, req: Request<Incoming>) -> Result<String, PurgeError> {
    let settings = app.settings();
    if let Some(secret) = &settings.admin.purge_secret {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or(PurgeError::Unauthorized)?;
        if !secret_matches(presented, secret.expose()) {
            return Err(PurgeError::Unauthorized);
        }
    }
    let json = match media_type(&req).as_deref() {
        Some("application/x-www-form-urlencoded") => false,
        Some("application/json") => true,
        _ => return Err(PurgeError::UnsupportedMediaType),
    };
    let body = Limited::new(req.into_body(), MAX_PURGE_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                PurgeError::TooLarge
            } else {
                PurgeError::BadRequest("cannot read the request body")
            }
        })?
        .to_bytes();
    let token = if json {
        token_from_json(&body)?
    } else {
        token_from_form(&body)?
    };
    if token.is_empty() {
        return Err(PurgeError::BadRequest("token is empty"));
    }
    if token.len() > settings.max_token_bytes {
        return Err(PurgeError::BadRequest(
            "token is longer than limits.max_token_bytes",
        ));
    }
    let key = token::hash(&token);
    // The token may be cached under every issuer's partition.
    for partition_key in app.issuers().purge_keys(&key) {
        app.cache().invalidate(&partition_key).await;
    }
    Ok(token::fingerprint(&key))
}

/// Compares SHA-256 digests in constant time, so neither the content nor the
/// length of the configured secret leaks through timing.
fn secret_matches(presented: &str, secret: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(secret.as_bytes());
    a.ct_eq(&b).into()
}

fn media_type<B>(req: &Request<B>) -> Option<String> {
    let v = req.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    )
}

fn token_from_form(body: &[u8]) -> Result<String, PurgeError> {
    let mut found = None;
    for (k, v) in url::form_urlencoded::parse(body) {
        if k == "token" {
            if found.is_some() {
                return Err(PurgeError::BadRequest("one token per request"));
            }
            found = Some(v.into_owned());
        }
    }
    found.ok_or(PurgeError::BadRequest("the body has no token parameter"))
}

fn token_from_json(body: &[u8]) -> Result<String, PurgeError> {
    #[derive(serde::Deserialize)]
    struct PurgeBody {
        token: String,
    }
    // serde's message can quote the input; report only that the shape is wrong.
    serde_json::from_slice::<PurgeBody>(body)
        .map(|b| b.token)
        .map_err(|_| PurgeError::BadRequest("body must be a JSON object {\"token\": \"...\"}"))
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn method_not_allowed(allow: &'static str) -> Response<AdminBody> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_key_is_the_request_path_key() {
        let t = token::parse_bearer("Bearer abc.DEF-123", 4096)
            .unwrap()
            .unwrap();
        let key: token::TokenHash = Sha256::digest(b"abc.DEF-123").into();
        assert_eq!(t.hash(), key);
        assert_eq!(token::hash("abc.DEF-123"), key);
    }

    #[test]
    fn secret_comparison() {
        assert!(secret_matches("s3cret", "s3cret"));
        assert!(!secret_matches("s3cret ", "s3cret"));
        assert!(!secret_matches("", "s3cret"));
    }

    #[test]
    fn bodies() {
        assert_eq!(token_from_form(b"token=a%2Bb%3D").unwrap(), "a+b=");
        assert!(token_from_form(b"token=a&token=b").is_err());
        assert!(token_from_form(b"tok=a").is_err());
        assert_eq!(token_from_json(br#"{"token":"xyz"}"#).unwrap(), "xyz");
        assert!(token_from_json(br#"{"token":5}"#).is_err());
    }
}
