//! The one outbound HTTP client type, used for the AS and for the upstream:
//! hyper-util's pooled legacy client over rustls, http and https.

use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Builds a pooled client. Keep-alive connections are reused, so an https AS
/// costs one TLS handshake per pooled connection, not one per call.
pub fn build<B>(connect_timeout: Duration) -> Client<Connector, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = HttpConnector::new();
    // The connector must accept https:// URIs too; the TLS layer wraps it.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https)
}
