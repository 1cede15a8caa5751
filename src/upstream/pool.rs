//! The upstream's connection pool, over `hyper::client::conn`.
//!
//! tokengate has exactly one upstream per process, so hyper-util's keyed pool
//! (a `(Scheme, Authority)` key hashed twice per request, a checkout future,
//! a spawned task per request to wait for the connection to be ready again)
//! was pure overhead: ~5 000 of the bare proxy's ~32 000 instructions per
//! request (BENCHMARKS.md, "An upstream pool of our own"). Here:
//!
//! - HTTP/1.1: a LIFO of idle [`http1::SendRequest`]s behind one `Mutex`.
//!   Checkout pops the most recent idle sender that is ready (closed ones are
//!   dropped; idle longer than [`IDLE_TIMEOUT`] ends the search, since
//!   everything below it is older); none → a new connection. A connection
//!   goes back only when its response body has been read to the end
//!   ([`PoolBody`]): never after a `101` (the connection is the tunnel's),
//!   an error, or a body dropped half-read.
//! - HTTP/2 (`upstream_http2`): one shared [`http2::SendRequest`], cloned per
//!   request, replaced when it is closed.
//! - A request that fails on a *reused* connection before any of it was
//!   written (the upstream closed an idle keep-alive connection: the race
//!   every pool has) is sent once more on a new connection; hyper hands such a
//!   request back (`try_send_request`), and never one it has begun to write.

use crate::http::client::{error_chain, Connector, UnixConnector};
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// An idle connection older than this is closed at checkout instead of being
/// used (hyper-util's `pool_idle_timeout`, which the upstream had before):
/// most servers close idle keep-alive connections after 5–120 s, and the
/// older a connection, the likelier the upstream is closing it right now.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// At most this many idle HTTP/1.1 connections are kept (hyper-util's
/// default has no bound); past it, the oldest is closed. Idle connections are
/// what a burst of concurrent requests left: each is ~one socket and its
/// buffers (~16 KiB), so the bound keeps a past burst from holding memory and
/// upstream sockets.
pub const MAX_IDLE: usize = 1024;

/// Why the pool could not get a response.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made (TCP, TLS, or the HTTP/2 handshake).
    #[error("{0}")]
    Connect(String),
    /// The request failed on its connection (hyper's error, with its cause:
    /// `upstream::forward` tells the client's body failing from the upstream).
    #[error(transparent)]
    Request(hyper::Error),
}

/// How connections are made: the connectors hyper-util's client used.
enum Transport {
    /// http:// or https:// (TCP, connect timeout, nodelay; TLS with ALPN).
    Tcp(Connector),
    /// unix:/path.sock.
    Unix(UnixConnector),
}

/// An idle HTTP/1.1 connection and when it went idle.
struct Idle<B> {
    tx: http1::SendRequest<B>,
    since: Instant,
}

/// The idle HTTP/1.1 connections, oldest first (a LIFO: checkout takes the
/// last). Shared with the response bodies that bring their connection back.
struct IdleList<B> {
    list: Mutex<Vec<Idle<B>>>,
}

impl<B: SendBody> IdleList<B> {
    /// Gives a connection back once it can take a request. It usually already
    /// can: hyper's connection task asks for the next request in the same
    /// poll that finishes the response body. When it cannot yet (its task
    /// has not run, or the request body is still being written because the
    /// upstream answered early), a small task waits for it, as hyper-util
    /// did for every request.
    fn put(self: Arc<Self>, mut tx: http1::SendRequest<B>) {
        if tx.is_ready() {
            self.push(tx);
        } else if !tx.is_closed() {
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return;
            };
            rt.spawn(async move {
                if std::future::poll_fn(|cx| tx.poll_ready(cx)).await.is_ok() {
                    self.push(tx);
                }
            });
        }
    }

    fn push(&self, tx: http1::SendRequest<B>) {
        let idle = Idle {
            tx,
            since: Instant::now(),
        };
        let oldest = {
            let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
            list.push(idle);
            (list.len() > MAX_IDLE).then(|| list.remove(0))
        };
        // Closed outside the lock.
        drop(oldest);
    }

    /// The most recent idle connection that can take a request now.
    fn checkout(&self) -> Option<http1::SendRequest<B>> {
        let now = Instant::now();
        let mut stale = Vec::new();
        let found = {
            let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                let Some(idle) = list.pop() else {
                    break None;
                };
                if now.saturating_duration_since(idle.since) > IDLE_TIMEOUT {
                    // Everything below went idle earlier still.
                    stale = std::mem::take(&mut *list);
                    stale.push(idle);
                    break None;
                }
                // Not ready here means closed: a sender is only put back
                // ready, and stays so until it is given a request.
                if idle.tx.is_ready() {
                    break Some(idle.tx);
                }
                stale.push(idle);
            }
        };
        // Closed outside the lock.
        drop(stale);
        found
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.list.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// What the pool can send: a request body hyper can stream from any thread
/// (the forwarder's is `upstream::forward::ForwardBody`).
pub trait SendBody:
    Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + Unpin + 'static
{
}

impl<B> SendBody for B where
    B: Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

/// The upstream's connections.
pub struct UpstreamPool<B> {
    transport: Transport,
    /// `scheme://authority/`, what the connector connects to (host, port,
    /// TLS server name); ignored by the unix connector.
    uri: Uri,
    http2: bool,
    idle: Arc<IdleList<B>>,
    /// The shared HTTP/2 connection (`upstream_http2`).
    h2: Mutex<Option<http2::SendRequest<B>>>,
}

impl<B: SendBody> UpstreamPool<B> {
    /// A pool over TCP (`connector`: `http::client::connector`).
    pub fn tcp(connector: Connector, uri: Uri, http2: bool) -> Self {
        Self::new(Transport::Tcp(connector), uri, http2)
    }

    /// A pool over a unix socket (h1, or h2c when `http2`).
    pub fn unix(connector: UnixConnector, uri: Uri, http2: bool) -> Self {
        Self::new(Transport::Unix(connector), uri, http2)
    }

    fn new(transport: Transport, uri: Uri, http2: bool) -> Self {
        Self {
            transport,
            uri,
            http2,
            idle: Arc::new(IdleList {
                list: Mutex::new(Vec::new()),
            }),
            h2: Mutex::new(None),
        }
    }

    /// Sends a request (HTTP/1.1: origin-form, with its `Host`; HTTP/2:
    /// scheme and authority in the URI). The response's body gives the
    /// connection back when it has been read to the end.
    pub async fn send(&self, req: Request<B>) -> Result<Response<PoolBody<B>>, PoolError> {
        if self.http2 {
            return self.send_h2(req).await;
        }
        let (mut tx, reused) = match self.idle.checkout() {
            Some(tx) => (tx, true),
            None => (self.connect_h1().await?, false),
        };
        let req = match tx.try_send_request(req).await {
            Ok(resp) => return Ok(self.h1_response(resp, tx)),
            Err(mut e) => match e.take_message() {
                // Not a byte of it was written: the upstream had closed the
                // idle connection. A new one gets it; a new one that fails
                // the same way is an answer.
                Some(req) if reused => req,
                _ => return Err(PoolError::Request(e.into_error())),
            },
        };
        drop(tx);
        let mut tx = self.connect_h1().await?;
        match tx.try_send_request(req).await {
            Ok(resp) => Ok(self.h1_response(resp, tx)),
            Err(e) => Err(PoolError::Request(e.into_error())),
        }
    }

    async fn send_h2(&self, req: Request<B>) -> Result<Response<PoolBody<B>>, PoolError> {
        let shared = self
            .h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|tx| !tx.is_closed())
            .cloned();
        let (mut tx, reused) = match shared {
            Some(tx) => (tx, true),
            None => (self.connect_h2().await?, false),
        };
        let req = match tx.try_send_request(req).await {
            Ok(resp) => return Ok(resp.map(PoolBody::plain)),
            Err(mut e) => match e.take_message() {
                Some(req) if reused => req,
                _ => return Err(PoolError::Request(e.into_error())),
            },
        };
        let mut tx = self.connect_h2().await?;
        match tx.try_send_request(req).await {
            Ok(resp) => Ok(resp.map(PoolBody::plain)),
            Err(e) => Err(PoolError::Request(e.into_error())),
        }
    }

    /// The response, with the connection riding on its body; a `101` keeps
    /// its connection (it becomes the tunnel), so it is never given back.
    fn h1_response(
        &self,
        resp: Response<Incoming>,
        tx: http1::SendRequest<B>,
    ) -> Response<PoolBody<B>> {
        let back = (!resp.status().is_informational()).then(|| Back {
            tx,
            idle: self.idle.clone(),
        });
        let mut resp = resp.map(|inner| PoolBody { inner, back });
        // A body that is already over (204, 304, HEAD, `Content-Length: 0`)
        // may never be polled.
        if resp.body().inner.is_end_stream() {
            resp.body_mut().finish();
        }
        resp
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<B>, PoolError> {
        match &self.transport {
            Transport::Tcp(c) => handshake_h1(connect(c.clone(), &self.uri).await?).await,
            Transport::Unix(c) => handshake_h1(connect(c.clone(), &self.uri).await?).await,
        }
    }

    /// A new HTTP/2 connection, which becomes the shared one unless another
    /// request made a live one meanwhile: a burst of first requests may open
    /// a few (each serves its own request and closes when it is done), and
    /// one is kept.
    async fn connect_h2(&self) -> Result<http2::SendRequest<B>, PoolError> {
        let tx = match &self.transport {
            Transport::Tcp(c) => handshake_h2(connect(c.clone(), &self.uri).await?).await?,
            Transport::Unix(c) => handshake_h2(connect(c.clone(), &self.uri).await?).await?,
        };
        let mut shared = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        if shared.as_ref().is_none_or(http2::SendRequest::is_closed) {
            *shared = Some(tx.clone());
        }
        Ok(tx)
    }

    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle.len()
    }
}

/// Calls a connector (`tower_service::Service<Uri>`) once.
async fn connect<C>(mut connector: C, uri: &Uri) -> Result<C::Response, PoolError>
where
    C: tower_service::Service<Uri>,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let fail = |e: C::Error| PoolError::Connect(error_chain(&*e.into()));
    std::future::poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(fail)?;
    connector.call(uri.clone()).await.map_err(fail)
}

async fn handshake_h1<T, B: SendBody>(io: T) -> Result<http1::SendRequest<B>, PoolError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (tx, conn) = http1::handshake(io)
        .await
        .map_err(|e| PoolError::Connect(error_chain(&e)))?;
    // `with_upgrades`: a 101's connection is handed to `hyper::upgrade::on`
    // (WebSocket tunnels) instead of being closed.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %error_chain(&e), "upstream connection closed");
        }
    });
    Ok(tx)
}

async fn handshake_h2<T, B: SendBody>(io: T) -> Result<http2::SendRequest<B>, PoolError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (tx, conn) = http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(|e| PoolError::Connect(error_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %error_chain(&e), "upstream connection closed");
        }
    });
    Ok(tx)
}

/// An HTTP/1.1 connection on its way back to the pool.
struct Back<B> {
    tx: http1::SendRequest<B>,
    idle: Arc<IdleList<B>>,
}

/// The upstream's response body. An HTTP/1.1 connection rides on it and goes
/// back to the pool when the body has been read to the end; dropped earlier,
/// or after an error, the connection is closed with it (hyper cannot reuse a
/// connection with a response half-read).
pub struct PoolBody<B> {
    inner: Incoming,
    back: Option<Back<B>>,
}

impl<B: SendBody> PoolBody<B> {
    /// A body with no connection to give back (HTTP/2, or a `101`).
    fn plain(inner: Incoming) -> Self {
        Self { inner, back: None }
    }

    fn finish(&mut self) {
        if let Some(back) = self.back.take() {
            back.idle.put(back.tx);
        }
    }
}

impl<B> std::fmt::Debug for PoolBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBody")
            .field("pooled", &self.back.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: SendBody> Body for PoolBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            // The last frame: whoever reads us may stop here, so the
            // connection goes back now, not at a `None` that may never be
            // asked for.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
