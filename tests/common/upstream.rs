//! The upstream: a real hyper 1 server.

use super::*;

/// What the upstream saw of one request (and, from the echo route, its body length).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo {
    pub method: String,
    /// Path and query exactly as received (origin-form).
    pub target: String,
    pub version: String,
    /// Every header line, in order, duplicates kept.
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body_len: Option<u64>,
}

impl Echo {
    pub(crate) fn of<B>(req: &Request<B>) -> Self {
        Self {
            method: req.method().to_string(),
            target: req
                .uri()
                .path_and_query()
                .map(|pq| pq.as_str().to_owned())
                .unwrap_or_default(),
            version: format!("{:?}", req.version()),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body_len: None,
        }
    }

    /// First value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

#[derive(Default)]
pub(crate) struct UpState {
    hits: AtomicUsize,
    seen: Mutex<Vec<Echo>>,
    /// Lengths of the request bodies that arrived *complete* (echo route).
    bodies: Mutex<Vec<u64>>,
}

/// A hyper 1 HTTP/1.1 server. Routes:
/// * `HEAD *`: 200, `Content-Length: 1234`, no body;
/// * `/download/<n>`: streams `n` bytes (chunked, 64 KiB frames, nothing buffered);
/// * `/sleep/<ms>`: waits, then echoes;
/// * `/hop`: answers with hop-by-hop headers (`Connection: X-Up-Hop`, `X-Up-Hop`,
///   `Keep-Alive`, `Proxy-Connection`) next to an end-to-end `X-Up-Keep`;
/// * `/status/<code>`: an empty answer with that status (204, 304, ...);
/// * anything else: echoes the request as JSON ([`Echo`]), counting the body
///   frame by frame without keeping it.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<UpState>,
}

pub(crate) type UpBody = BoxBody<Bytes, Infallible>;

/// Serves one upstream connection (TCP or unix) with [`upstream_handle`].
pub(crate) fn serve_upstream_conn<S>(st: Arc<UpState>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(upstream_handle(&st, req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
}

impl Upstream {
    /// The same routes over a unix domain socket at `path` (HTTP/1.1).
    pub async fn start_unix(path: &std::path::Path) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let state = Arc::new(UpState::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                serve_upstream_conn(st.clone(), stream);
            }
        });
        Self {
            addr: "0.0.0.0:0".parse().unwrap(),
            state,
        }
    }

    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpState::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                serve_upstream_conn(st.clone(), stream);
            }
        });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests that reached the upstream (counted when the head arrives).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Body lengths of the requests whose body arrived complete (echo route).
    pub fn bodies(&self) -> Vec<u64> {
        self.state.bodies.lock().unwrap().clone()
    }

    /// Heads of every request that reached the upstream, in arrival order.
    pub fn seen(&self) -> Vec<Echo> {
        self.state.seen.lock().unwrap().clone()
    }
}

pub(crate) fn up_full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).boxed()
}

pub(crate) async fn upstream_handle(st: &UpState, req: Request<Incoming>) -> Response<UpBody> {
    let mut echo = Echo::of(&req);
    st.hits.fetch_add(1, Ordering::SeqCst);
    st.seen.lock().unwrap().push(echo.clone());
    let path = req.uri().path().to_owned();

    if req.method() == Method::HEAD {
        return Response::builder()
            .header("content-length", "1234")
            .header("x-head", "1")
            .body(Empty::new().boxed())
            .unwrap();
    }
    if let Some(n) = path.strip_prefix("/download/") {
        let total: usize = n.parse().unwrap();
        let frames = stream::unfold(total, |left| async move {
            (left > 0).then(|| {
                let n = left.min(CHUNK.len());
                (
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(&CHUNK[..n]))),
                    left - n,
                )
            })
        });
        return Response::new(StreamBody::new(frames).boxed());
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if path == "/hop" {
        return Response::builder()
            .header("connection", "X-Up-Hop")
            .header("x-up-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("x-up-keep", "1")
            .body(up_full("hop"))
            .unwrap();
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        return Response::builder()
            .status(status)
            .header("etag", "\"v1\"")
            .header("x-status-route", "1")
            .body(Empty::new().boxed())
            .unwrap();
    }

    let mut body = req.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                }
            }
            Err(_) => {
                return Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(up_full("broken request body"))
                    .unwrap()
            }
        }
    }
    echo.body_len = Some(n);
    st.bodies.lock().unwrap().push(n);
    Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", "1")
        .body(up_full(serde_json::to_vec(&echo).unwrap()))
        .unwrap()
}
