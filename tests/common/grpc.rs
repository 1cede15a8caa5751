//! A gRPC-style upstream: HTTP/2 (h2c), answers with trailers.

use super::*;

/// One gRPC message frame: compressed flag 0, 4-byte big-endian length, bytes.
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(5 + msg.len());
    b.push(0);
    b.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    b.extend_from_slice(msg);
    Bytes::from(b)
}

/// A hyper HTTP/2-only server (prior knowledge) that behaves like a unary gRPC
/// service: it echoes the request's message frames, then sends `grpc-status: 0`
/// and `grpc-message: ok` as trailers. It records each request head.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Echo>>>,
}

impl GrpcUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let st = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        async move {
                            st.lock().unwrap().push(Echo::of(&req));
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let mut trailers = HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            trailers.insert("grpc-message", "ok".parse().unwrap());
                            let frames = stream::iter(vec![
                                Ok::<_, Infallible>(Frame::data(body)),
                                Ok(Frame::trailers(trailers)),
                            ]);
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(StreamBody::new(frames))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Echo> {
        self.seen.lock().unwrap().clone()
    }
}

/// A response with its body and trailers collected.
#[derive(Debug)]
pub struct RespWithTrailers {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

pub async fn send_keep_trailers<C>(
    client: &Client<C, ClientBody>,
    req: Request<ClientBody>,
) -> RespWithTrailers
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("tokengate did not answer within 20s")
        .expect("request to tokengate failed");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("response body");
    let trailers = collected.trailers().cloned();
    RespWithTrailers {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// A unique path for a unix socket in the temp directory.
pub fn temp_socket_path(tag: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "tokengate-{tag}-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}
