//! `[ext_authz] listen`: the gRPC server Envoy (and Istio, Envoy Gateway,
//! Contour) calls for every request: `envoy.service.auth.v3.Authorization/Check`
//! (answered by `crate::pipeline::ext_authz`, the same decision as forward-auth
//! mode) and `grpc.health.v1.Health` ([`health`], from `/readyz`'s checks).
//!
//! HTTP/2 only (gRPC), cleartext or TLS with the `[tls]` certificate
//! (`ext_authz.tls`; the same reloadable acceptor as `listen`). It shares the
//! [`App`] (cache, breaker, metrics, settings snapshots) with the proxy port,
//! and drains with it: on shutdown the health service turns NOT_SERVING, the
//! port closes, and calls in flight get `shutdown_timeout` to finish.

use crate::app::App;
use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer};
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info, warn};

/// The `Authorization` service: one `Check` is one request through the pipeline.
struct ExtAuthz {
    app: Arc<App>,
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let answer = crate::pipeline::ext_authz::check(&self.app, request.into_inner()).await;
        Ok(tonic::Response::new(answer))
    }
}

/// Serves ext_authz on `listener` until `stop` turns true, then drains for up
/// to `shutdown_timeout`. Spawned by [`crate::run`] beside the proxy port.
pub(crate) async fn serve(app: Arc<App>, listener: TcpListener, stop: watch::Receiver<bool>) {
    let settings = app.settings();
    let tls = match (&settings.tls, settings.ext_authz.tls) {
        (Some(t), true) => Some(t.acceptor.clone()),
        _ => None,
    };
    let deadline = settings.shutdown_timeout;
    let max_header_bytes = settings.limits.max_header_bytes;
    info!(
        listen = %listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string()),
        tls = tls.is_some(),
        "serving Envoy ext_authz (gRPC)"
    );

    // Connections (after their TLS handshake, done in a task of their own so
    // that one slow client cannot hold up the accept loop) reach tonic
    // through this channel.
    let (tx, mut rx) = mpsc::channel::<io::Result<Io>>(64);
    let accept = tokio::spawn(accept_loop(listener, tls, tx, stop.clone()));
    let incoming = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));

    let server = tonic::transport::Server::builder()
        .http2_max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .add_service(AuthorizationServer::new(ExtAuthz { app: app.clone() }))
        .add_service(super::grpc_health::service(app.clone()))
        .serve_with_incoming_shutdown(incoming, stopped(stop.clone()));
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        () = stopped(stop) => {
            // tonic has stopped accepting and sent GOAWAY: in-flight calls
            // finish, unless they outlast the drain deadline.
            match tokio::time::timeout(deadline, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    warn!("shutdown deadline reached; closing remaining ext_authz connections");
                    Ok(())
                }
            }
        }
    };
    accept.abort();
    if let Err(e) = result {
        warn!(error = %e, "ext_authz server stopped with an error");
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts until `stop`; TLS handshakes run in their own tasks.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tx: mpsc::Sender<io::Result<Io>>,
    stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            () = stopped(stop.clone()) => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "ext_authz accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => {
                if tx.send(Ok(Io::Plain(stream))).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let handshake = tokio::time::timeout(
                    crate::http::tls::HANDSHAKE_TIMEOUT,
                    acceptor.accept(stream),
                );
                let tx = tx.clone();
                tokio::spawn(async move {
                    match handshake.await {
                        Ok(Ok(s)) => {
                            let _ = tx.send(Ok(Io::Tls(Box::new(s)))).await;
                        }
                        Ok(Err(e)) => debug!(error = %e, "ext_authz TLS handshake failed"),
                        Err(_) => debug!("ext_authz TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// One ext_authz connection, cleartext or TLS.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for Io {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Io::Plain(s) => s.connect_info(),
            Io::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}
