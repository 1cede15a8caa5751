//! Clients.

use super::*;

pub fn http1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client for the admin listener that keeps no idle connection: tests move
/// tokio's clock past the admin listener's header-read timeout, which closes
/// an idle pooled connection just as the next request may be sent on it
/// (`IncompleteMessage`). A new connection per admin request cannot race that.
pub fn admin_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// HTTP/2 over cleartext with prior knowledge.
pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn request(method: Method, url: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}

pub fn empty() -> ClientBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> ClientBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A body of `total` bytes produced lazily, 64 KiB at a time: never one buffer.
pub fn streamed_body(total: usize) -> ClientBody {
    let frames = stream::unfold(total, |left| async move {
        (left > 0).then(|| {
            let n = left.min(CHUNK.len());
            (
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(&CHUNK[..n]))),
                left - n,
            )
        })
    });
    StreamBody::new(frames).boxed()
}

/// A response with its body collected (small bodies only).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    /// The upstream's echo of the request.
    pub fn echo(&self) -> Echo {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "expected the upstream's echo, got {}: {}",
            self.status,
            self.text()
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {}", self.text()))
    }
}

pub async fn send<C>(client: &Client<C, ClientBody>, req: Request<ClientBody>) -> Resp
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("tokengate did not answer within 20s")
        .expect("request to tokengate failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// Checks the shape every rejection must have: status, `Cache-Control: no-store`,
/// a JSON body with `error` and a non-empty `error_description`.
pub fn assert_rejection(r: &Resp, status: u16, error: &str) {
    assert_eq!(
        r.status.as_u16(),
        status,
        "unexpected status; body: {}",
        r.text()
    );
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "rejections must not be cached"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["error"], error, "body: {v}");
    assert!(
        v["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "error_description missing: {v}"
    );
}
