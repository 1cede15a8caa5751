//! The outbound HTTP clients: hyper-util's pooled legacy client over rustls
//! (http and https) for discovery and JWKS (a few calls an hour); its
//! connector (h2 or h2c when asked for), and a unix-domain-socket connector
//! for sidecar upstreams, for the pools of the two origins every request may
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

/// A pooled HTTP/1.1 client with our TLS settings (web PKI roots plus extra
/// roots, client certificate), for discovery and JWKS fetches: keep-alive
/// connections are kept 90 s, so a refresh soon after another costs no new
/// TLS handshake. (The introspection endpoint and the upstream, which every
/// request may reach, have pools of their own: `http::pool`.)
pub fn build_with<B>(connect_timeout: Duration, tls: &ClientTls) -> Client<Connector, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector(connect_timeout, tls, false))
}

/// The connector [`build_with`] pools, and every `http::pool` connects with:
/// TCP with the connect timeout and `TCP_NODELAY`, then TLS for https://
/// (ALPN `h2` only when `http2`, else `http/1.1`).
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
