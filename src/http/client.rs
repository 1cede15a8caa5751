//! The outbound HTTP clients: hyper-util's pooled legacy client over rustls
//! (http and https), h2 or h2c when asked for, for discovery and JWKS (a few
//! calls an hour); its connector, and a unix-domain-socket connector for
//! sidecar upstreams, for the pools of the two origins every request may
//! reach, the upstream and the introspection endpoint (`http::pool`).

use crate::http::tls::ClientTls;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

fn http_connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    // The connector must accept https:// URIs too; the TLS layer wraps it.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http
}

/// The pool settings both clients share: idle keep-alive connections are kept
/// 90 s (0 new AS connections per introspection under steady load), HTTP/2
/// only when `http2`.
fn pool(http2: bool) -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_only(http2);
    builder
}

/// Builds a pooled client with our TLS settings (web PKI roots plus extra
/// roots, client certificate). Keep-alive connections are reused, so an https
/// AS costs one TLS handshake per pooled connection, not one per call. When
/// `http2`, HTTP/2 only: ALPN `h2` over https, prior knowledge (h2c) over
/// http. gRPC services need that.
pub fn build_with<B>(
    connect_timeout: Duration,
    tls: &ClientTls,
    http2: bool,
) -> Client<Connector, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pool(http2).build(connector(connect_timeout, tls, http2))
}

/// The connector [`build_with`] pools, on its own: TCP with the connect
/// timeout and `TCP_NODELAY`, then TLS for https:// (ALPN `h2` only when
/// `http2`, else `http/1.1`). The upstream's own pool (`http::pool`)
/// connects with it.
pub fn connector(connect_timeout: Duration, tls: &ClientTls, http2: bool) -> Connector {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls.0).clone())
        .https_or_http();
    if http2 {
        builder
            .enable_http2()
            .wrap_connector(http_connector(connect_timeout))
    } else {
        builder
            .enable_http1()
            .wrap_connector(http_connector(connect_timeout))
    }
}

/// Connects every request to one unix domain socket, whatever the URI says
/// (the URI still gives the `Host`). hyper-util's legacy client has no unix
/// connector, and this is all one needs: a `tower::Service<Uri>`.
#[derive(Clone, Debug)]
pub struct UnixConnector {
    path: Arc<Path>,
}

impl UnixConnector {
    pub fn new(path: &Path) -> Self {
        Self { path: path.into() }
    }
}

impl tower_service::Service<http::Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let path = self.path.clone();
        Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(&*path).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Renders an error with its sources, since hyper's top-level messages
/// ("client error (Connect)") hide the useful part.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
