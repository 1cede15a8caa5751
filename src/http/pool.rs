//! One origin's connection pool, over `hyper::client::conn`: the upstream's
//! (`upstream::forward`) and the introspection endpoint's
//! (`introspection::connections`).
//!
//! Each pool serves exactly one origin, so hyper-util's keyed pool (a
//! `(Scheme, Authority)` key hashed twice per request, a checkout future, a
//! spawned task per request to wait for the connection to be ready again) was
//! pure overhead: ~5 000 of the bare proxy's ~32 000 instructions per request
//! (BENCHMARKS.md, "An upstream pool of our own"). Here:
//!
//! - HTTP/1.1: a LIFO of idle [`http1::SendRequest`]s behind one `Mutex`.
//!   Checkout pops the most recent idle sender that is ready (closed ones are
//!   dropped; idle longer than [`IDLE_TIMEOUT`] ends the search, since
//!   everything below it is older); none → a new connection. A connection
//!   goes back only when its response body has been read to the end
//!   ([`PoolBody`]): never after a `101` (the connection is the tunnel's),
//!   an error, or a body dropped half-read.
//! - HTTP/2 (`upstream_http2`): one shared [`http2::SendRequest`], cloned per
//!   request, replaced when it is closed; requests that find none wait for
//!   the one being made (one connection attempt at a time).
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

/// `scheme://authority/`: what a pool's connector is called with (host,
/// port, TLS server name).
pub fn origin(scheme: &http::uri::Scheme, authority: &http::uri::Authority) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    // Cannot fail (both parts were parsed already); if it did, the default
    // URI would make every connect fail, never go elsewhere.
    Uri::from_parts(parts).unwrap_or_default()
}

/// The `Host` of an HTTP/1.1 request to this origin (the pool sends
/// origin-form targets, so `Host` alone names it): the host, plus the port
/// when it is not the scheme's default (what hyper-util's client sent).
fn host_header(
    scheme: &http::uri::Scheme,
    authority: &http::uri::Authority,
) -> Option<http::HeaderValue> {
    let default_port = match scheme.as_str() {
        "https" => 443,
        _ => 80,
    };
    let value = match authority.port_u16() {
        Some(port) if port != default_port => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    http::HeaderValue::from_str(&value).ok()
}

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
            let found = loop {
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
            };
            // Under steady traffic only the top of the LIFO is ever looked
            // at, so the connections a past burst left below it would stay
            // open for good (sockets of ours and the upstream's). The list
            // is oldest first: the expired ones are a prefix.
            if found.is_some() {
                let expired =
                    list.partition_point(|i| now.saturating_duration_since(i.since) > IDLE_TIMEOUT);
                stale.extend(list.drain(..expired));
            }
            found
        };
        // Closed outside the lock.
        drop(stale);
        found
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
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

/// One origin's connections.
pub struct OriginPool<B> {
    transport: Transport,
    /// `scheme://authority/`, what the connector connects to (host, port,
    /// TLS server name); ignored by the unix connector.
    uri: Uri,
    http2: bool,
    /// The `Host` of every HTTP/1.1 request (sent in origin-form), built
    /// once; `None` for HTTP/2, which carries the authority itself.
    host: Option<http::HeaderValue>,
    idle: Arc<IdleList<B>>,
    /// The shared HTTP/2 connection (`upstream_http2`).
    h2: Mutex<Option<http2::SendRequest<B>>>,
    /// Held while an HTTP/2 connection is being made, so that the requests
    /// that find none wait for it instead of each opening their own. Holds
    /// the last attempt's failure, for the requests that waited for it.
    h2_connecting: tokio::sync::Mutex<Option<String>>,
    /// HTTP/2 connection attempts finished (made or failed): a request that
    /// sees it move while it waits for its turn takes that attempt's outcome.
    h2_attempts: std::sync::atomic::AtomicU64,
    /// Requests sent again on a new connection (the tests check the path).
    #[cfg(test)]
    retries: std::sync::atomic::AtomicUsize,
}

impl<B: SendBody> OriginPool<B> {
    /// A pool over TCP (`connector`: `http::client::connector`).
    pub fn tcp(connector: Connector, uri: Uri, http2: bool) -> Self {
        Self::new(Transport::Tcp(connector), uri, http2)
    }

    /// A pool over a unix socket (h1, or h2c when `http2`).
    pub fn unix(connector: UnixConnector, uri: Uri, http2: bool) -> Self {
        Self::new(Transport::Unix(connector), uri, http2)
    }

    fn new(transport: Transport, uri: Uri, http2: bool) -> Self {
        let host = match (http2, uri.scheme(), uri.authority()) {
            (false, Some(scheme), Some(authority)) => host_header(scheme, authority),
            _ => None,
        };
        Self {
            transport,
            uri,
            http2,
            host,
            idle: Arc::new(IdleList {
                list: Mutex::new(Vec::new()),
            }),
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(None),
            h2_attempts: std::sync::atomic::AtomicU64::new(0),
            #[cfg(test)]
            retries: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Sends a request. HTTP/1.1: in origin-form (an absolute URI is cut to
    /// its path and query), with this origin's `Host` in place of any other;
    /// HTTP/2: as it is (scheme and authority in the URI). The response's
    /// body gives the connection back when it has been read to the end.
    ///
    /// Connecting is boxed (`Box::pin`): it is the rare path, and its future
    /// (the connector's and the handshake's, ~4.6 KiB) would otherwise be
    /// inlined into this one (9.6 KiB in all), which is moved with every
    /// request (callgrind: +9 000 instructions of `memcpy` per request). So is
    /// the HTTP/2 path (one allocation per request there, against every HTTP/1.1
    /// request carrying its state): this future is 552 bytes.
    pub async fn send(&self, mut req: Request<B>) -> Result<Response<PoolBody<B>>, PoolError> {
        if self.http2 {
            return Box::pin(self.send_h2(req)).await;
        }
        if req.uri().authority().is_some() {
            *req.uri_mut() = req
                .uri()
                .path_and_query()
                .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        }
        if let Some(host) = &self.host {
            req.headers_mut().insert(http::header::HOST, host.clone());
        }
        let (mut tx, reused) = match self.idle.checkout() {
            Some(tx) => (tx, true),
            None => (Box::pin(self.connect_h1()).await?, false),
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
        #[cfg(test)]
        self.retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tx = Box::pin(self.connect_h1()).await?;
        match tx.try_send_request(req).await {
            Ok(resp) => Ok(self.h1_response(resp, tx)),
            Err(e) => Err(PoolError::Request(e.into_error())),
        }
    }

    /// Whether this pool's connections go to `scheme://authority`.
    pub fn serves(&self, scheme: &http::uri::Scheme, authority: &http::uri::Authority) -> bool {
        self.uri.scheme() == Some(scheme) && self.uri.authority() == Some(authority)
    }

    async fn send_h2(&self, req: Request<B>) -> Result<Response<PoolBody<B>>, PoolError> {
        let (mut tx, reused) = match self.shared_h2() {
            Some(tx) => (tx, true),
            None => (Box::pin(self.connect_h2(false)).await?, false),
        };
        let req = match tx.try_send_request(req).await {
            Ok(resp) => return Ok(resp.map(PoolBody::plain)),
            Err(mut e) => match e.take_message() {
                Some(req) if reused => req,
                _ => return Err(PoolError::Request(e.into_error())),
            },
        };
        #[cfg(test)]
        self.retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tx = Box::pin(self.connect_h2(true)).await?;
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

    /// The shared HTTP/2 connection, unless the upstream closed it.
    fn shared_h2(&self) -> Option<http2::SendRequest<B>> {
        self.h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|tx| !tx.is_closed())
            .cloned()
    }

    /// The HTTP/2 connection to share from now on: the one another request
    /// made while this one waited its turn, else a new one. `replace`: a new
    /// one whatever is shared (the shared one just handed a request back
    /// unsent, so it is going away), unless one was made while this request
    /// waited (the requests handed back together share one new connection).
    ///
    /// An attempt that failed while this request waited is this request's
    /// failure too: attempting again at once would most likely fail the
    /// same way, and the waiters would each wait one more connect timeout
    /// in turn (the tenth, ten) while the upstream is unreachable.
    async fn connect_h2(&self, replace: bool) -> Result<http2::SendRequest<B>, PoolError> {
        use std::sync::atomic::Ordering;
        let seen = self.h2_attempts.load(Ordering::Acquire);
        let mut turn = self.h2_connecting.lock().await;
        let waited_for_one = self.h2_attempts.load(Ordering::Acquire) != seen;
        if !replace || waited_for_one {
            if let Some(tx) = self.shared_h2() {
                return Ok(tx);
            }
        }
        if waited_for_one {
            if let Some(failed) = turn.as_ref() {
                return Err(PoolError::Connect(failed.clone()));
            }
        }
        let made = match &self.transport {
            Transport::Tcp(c) => match connect(c.clone(), &self.uri).await {
                Ok(io) => handshake_h2(io).await,
                Err(e) => Err(e),
            },
            Transport::Unix(c) => match connect(c.clone(), &self.uri).await {
                Ok(io) => handshake_h2(io).await,
                Err(e) => Err(e),
            },
        };
        *turn = made.as_ref().err().map(ToString::to_string);
        self.h2_attempts.fetch_add(1, Ordering::Release);
        let tx = made?;
        *self.h2.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx.clone());
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
            tracing::debug!(error = %error_chain(&e), "pooled connection closed");
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
            tracing::debug!(error = %error_chain(&e), "pooled connection closed");
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Notify;

    #[test]
    fn upstream_host_is_what_hyper_util_would_send() {
        let cases = [
            ("http", "a.internal", "a.internal"),
            ("http", "a.internal:80", "a.internal"),
            ("http", "a.internal:8080", "a.internal:8080"),
            ("https", "a.internal:443", "a.internal"),
            ("https", "a.internal:80", "a.internal:80"),
            ("http", "[::1]:9000", "[::1]:9000"),
            ("http", "127.0.0.1:3000", "127.0.0.1:3000"),
        ];
        for (scheme, authority, want) in cases {
            let got = host_header(&scheme.parse().unwrap(), &authority.parse().unwrap());
            assert_eq!(
                got,
                Some(http::HeaderValue::from_static(want)),
                "{scheme}://{authority}"
            );
        }
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// What the test upstream does with the requests of each connection.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        /// Answers every request, keeps the connection.
        KeepAlive,
        /// Answers, then closes the connection without a word (no
        /// `Connection: close`) when told: an upstream's idle timeout.
        CloseAfterEach,
        /// Answers the first request; reads the second, then closes.
        DropSecond,
        /// Switches to an echo protocol with a 101.
        Upgrade,
        /// The first request's body is sent half now, half when told.
        Slow,
        /// Answers each request as soon as its head is in, then reads its
        /// chunked body to the end: an upstream that refuses an upload, or
        /// does not need it, before it has arrived.
        EarlyAnswer,
        /// Answers the first request with more bytes than its framing says
        /// (a response of its own, in the same write): a broken upstream's
        /// desync. Answers the others (on any connection) plainly.
        Smuggle(&'static [u8]),
        /// Answers every request with `Connection: close` and keeps the
        /// socket open (the client is the one to close it).
        AnnouncesClose,
    }

    /// A raw HTTP/1.1 upstream on 127.0.0.1:0 that counts what it accepts.
    struct Upstream {
        addr: SocketAddr,
        conns: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
        /// A connection was closed (`CloseAfterEach`).
        closed: Arc<Notify>,
        /// Send the rest of the slow body (`Slow`), or close (`CloseAfterEach`).
        rest: Arc<Notify>,
    }

    /// Reads one request head (the tests send no bodies); false at EOF.
    async fn read_head(sock: &mut TcpStream) -> bool {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    async fn upstream(mode: Mode) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream {
            addr: listener.local_addr().unwrap(),
            conns: Arc::default(),
            requests: Arc::default(),
            closed: Arc::default(),
            rest: Arc::default(),
        };
        let (conns, requests, closed, rest) = (
            up.conns.clone(),
            up.requests.clone(),
            up.closed.clone(),
            up.rest.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let (requests, closed, rest) = (requests.clone(), closed.clone(), rest.clone());
                tokio::spawn(async move {
                    let mut seen = 0;
                    while read_head(&mut sock).await {
                        seen += 1;
                        let total = requests.fetch_add(1, Ordering::SeqCst) + 1;
                        match mode {
                            Mode::KeepAlive => sock.write_all(OK).await.unwrap(),
                            Mode::Smuggle(first) if total == 1 => {
                                sock.write_all(first).await.unwrap()
                            }
                            Mode::Smuggle(_) => sock.write_all(OK).await.unwrap(),
                            Mode::AnnouncesClose => sock
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\nconnection: close\r\n\
                                      content-length: 2\r\n\r\nok",
                                )
                                .await
                                .unwrap(),
                            Mode::CloseAfterEach => {
                                sock.write_all(OK).await.unwrap();
                                rest.notified().await;
                                drop(sock);
                                closed.notify_one();
                                return;
                            }
                            Mode::DropSecond if seen == 2 => return,
                            Mode::DropSecond => sock.write_all(OK).await.unwrap(),
                            Mode::Upgrade => {
                                sock.write_all(
                                    b"HTTP/1.1 101 Switching Protocols\r\n\
                                      connection: upgrade\r\nupgrade: echo\r\n\r\n",
                                )
                                .await
                                .unwrap();
                                let mut b = [0u8; 64];
                                while let Ok(n @ 1..) = sock.read(&mut b).await {
                                    sock.write_all(&b[..n]).await.unwrap();
                                }
                                return;
                            }
                            Mode::Slow if total == 1 => {
                                sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab")
                                    .await
                                    .unwrap();
                                rest.notified().await;
                                sock.write_all(b"cd").await.unwrap();
                            }
                            Mode::Slow => sock.write_all(OK).await.unwrap(),
                            Mode::EarlyAnswer => {
                                sock.write_all(OK).await.unwrap();
                                let mut body = Vec::new();
                                let mut b = [0u8; 256];
                                while !body.ends_with(b"0\r\n\r\n") {
                                    match sock.read(&mut b).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(n) => body.extend_from_slice(&b[..n]),
                                    }
                                }
                            }
                        }
                    }
                });
            }
        });
        up
    }

    fn pool<B: SendBody>(addr: SocketAddr) -> OriginPool<B> {
        let tls = crate::http::tls::ClientTls::new(&[], None).unwrap();
        let connector = crate::http::client::connector(Duration::from_secs(2), &tls, false);
        OriginPool::tcp(connector, format!("http://{addr}/").parse().unwrap(), false)
    }

    fn get() -> Request<Empty<Bytes>> {
        Request::builder()
            .uri("/x")
            .header(http::header::HOST, "upstream")
            .body(Empty::new())
            .unwrap()
    }

    /// Sends a request and reads its body to the end.
    async fn fetch(pool: &OriginPool<Empty<Bytes>>) -> Result<Bytes, PoolError> {
        let resp = pool.send(get()).await?;
        assert_eq!(resp.status(), 200);
        Ok(resp.into_body().collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let up = upstream(Mode::KeepAlive).await;
        let pool = pool(up.addr);
        for _ in 0..5 {
            assert_eq!(fetch(&pool).await.unwrap(), "ok");
        }
        assert_eq!(up.requests.load(Ordering::SeqCst), 5);
        assert_eq!(up.conns.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_len(), 1);
    }

    #[tokio::test]
    async fn an_upgraded_connection_is_the_tunnels_and_never_pooled() {
        let up = upstream(Mode::Upgrade).await;
        let pool = pool(up.addr);
        let mut req = get();
        req.headers_mut()
            .insert(http::header::CONNECTION, "upgrade".parse().unwrap());
        req.headers_mut()
            .insert(http::header::UPGRADE, "echo".parse().unwrap());
        let mut resp = pool.send(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        io.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        io.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping");
        drop(resp);
        assert_eq!(pool.idle_len(), 0);
        // The next request gets a connection of its own (this upstream
        // upgrades every one: it answers 101 again).
        let resp = pool.send(get()).await.unwrap();
        assert_eq!(resp.status(), 101);
        assert_eq!(up.conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_the_upstream_closed_the_idle_connection_on_is_sent_again() {
        let up = upstream(Mode::CloseAfterEach).await;
        let pool = pool(up.addr);
        assert_eq!(fetch(&pool).await.unwrap(), "ok");
        assert_eq!(pool.idle_len(), 1);
        // The connection is back in the pool; now the upstream closes it. The
        // client's connection task has not run since (one thread, and no
        // I/O events polled in between), so checkout takes it as ready, and
        // hyper hands the request back unsent when it finds it closed.
        up.rest.notify_one();
        up.closed.notified().await;
        assert_eq!(fetch(&pool).await.unwrap(), "ok");
        assert_eq!(pool.retries.load(Ordering::Relaxed), 1);
        assert_eq!(up.conns.load(Ordering::SeqCst), 2);
        assert_eq!(up.requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_the_upstream_may_have_seen_is_never_sent_again() {
        let up = upstream(Mode::DropSecond).await;
        let pool = pool(up.addr);
        assert_eq!(fetch(&pool).await.unwrap(), "ok");
        let err = pool.send(get()).await.unwrap_err();
        assert!(matches!(err, PoolError::Request(_)), "{err:?}");
        assert_eq!(pool.retries.load(Ordering::Relaxed), 0);
        assert_eq!(up.conns.load(Ordering::SeqCst), 1);
        assert_eq!(up.requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_whose_body_is_still_streaming_takes_no_second_request() {
        let up = upstream(Mode::Slow).await;
        let pool = pool(up.addr);
        let mut slow = pool.send(get()).await.unwrap().into_body();
        let first = slow.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ab");
        assert_eq!(pool.idle_len(), 0);
        // The first connection is busy: the second request opens another.
        assert_eq!(fetch(&pool).await.unwrap(), "ok");
        assert_eq!(up.conns.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_len(), 1);
        up.rest.notify_one();
        let last = slow.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(last, "cd");
        // Both are idle now; the most recent (the slow one) is used first.
        assert_eq!(pool.idle_len(), 2);
        assert_eq!(fetch(&pool).await.unwrap(), "ok");
        assert_eq!(up.conns.load(Ordering::SeqCst), 2);
    }

    /// The response is over while the request body is still on its way: the
    /// connection cannot take a request yet, so it goes back only once the
    /// request body has been written (a task waits for it).
    #[tokio::test]
    async fn a_connection_still_sending_its_request_body_goes_back_once_it_is_sent() {
        type Streamed = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
        let up = upstream(Mode::EarlyAnswer).await;
        let pool: OriginPool<Streamed> = pool(up.addr);
        let (more, rest) = tokio::sync::oneshot::channel::<()>();
        let frames = futures_util::stream::unfold(Some(rest), |rest| async move {
            let rest = rest?;
            // The first chunk now, then the end of the body when told.
            let _ = rest.await;
            None::<(Result<Frame<Bytes>, std::convert::Infallible>, _)>
        });
        let first = futures_util::stream::iter([Ok(Frame::data(Bytes::from_static(b"abc")))]);
        let body = BodyExt::boxed(http_body_util::StreamBody::new(
            futures_util::StreamExt::chain(first, frames),
        ));
        let upload = Request::builder()
            .method("POST")
            .uri("/upload")
            .header(http::header::HOST, "upstream")
            .body(body)
            .unwrap();
        let resp = pool.send(upload).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(pool.idle_len(), 0, "still writing the request body");
        more.send(()).unwrap();
        // The waiting task puts it back once hyper has written the body's end.
        for _ in 0..10_000 {
            if pool.idle_len() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.idle_len(), 1, "never given back");
        let get = Request::builder()
            .uri("/x")
            .header(http::header::HOST, "upstream")
            .body(BodyExt::boxed(Empty::new()))
            .unwrap();
        let resp = pool.send(get).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(up.conns.load(Ordering::SeqCst), 1);
        assert_eq!(up.requests.load(Ordering::SeqCst), 2);
    }

    /// Bytes past the end of a response (its framing says it is over) are
    /// not the next request's response: the next request never reads them.
    #[tokio::test]
    async fn bytes_past_a_responses_end_never_answer_the_next_request() {
        const SMUGGLED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok\
            HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret";
        let up = upstream(Mode::Smuggle(SMUGGLED)).await;
        let pool = pool(up.addr);
        assert_eq!(fetch(&pool).await.unwrap(), "ok");
        for _ in 0..3 {
            match fetch(&pool).await {
                Ok(body) => assert_eq!(body, "ok"),
                Err(e) => assert!(matches!(e, PoolError::Request(_)), "{e:?}"),
            }
        }
    }

    /// A 204 that carries a body anyway (a broken upstream): the bytes are
    /// never read as the next request's response.
    #[tokio::test]
    async fn a_body_on_a_204_never_answers_the_next_request() {
        const SMUGGLED: &[u8] = b"HTTP/1.1 204 No Content\r\ncontent-length: 44\r\n\r\n\
            HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret";
        let up = upstream(Mode::Smuggle(SMUGGLED)).await;
        let pool = pool(up.addr);
        let resp = pool.send(get()).await.unwrap();
        assert_eq!(resp.status(), 204);
        assert!(resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());
        for _ in 0..3 {
            match fetch(&pool).await {
                Ok(body) => assert_eq!(body, "ok"),
                Err(e) => assert!(matches!(e, PoolError::Request(_)), "{e:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_connection_the_upstream_announced_to_close_is_not_pooled() {
        let up = upstream(Mode::AnnouncesClose).await;
        let pool = pool(up.addr);
        assert_eq!(fetch(&pool).await.unwrap(), "ok");
        assert_eq!(fetch(&pool).await.unwrap(), "ok");
        assert_eq!(up.conns.load(Ordering::SeqCst), 2);
        assert_eq!(pool.retries.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_body_dropped_half_read_closes_its_connection() {
        let up = upstream(Mode::Slow).await;
        let pool = pool(up.addr);
        let mut slow = pool.send(get()).await.unwrap().into_body();
        slow.frame().await.unwrap().unwrap();
        drop(slow);
        assert_eq!(pool.idle_len(), 0);
        assert_eq!(fetch(&pool).await.unwrap(), "ok");
        assert_eq!(up.conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_idle_longer_than_the_timeout_are_not_used() {
        let up = upstream(Mode::KeepAlive).await;
        let pool = pool(up.addr);
        assert_eq!(fetch(&pool).await.unwrap(), "ok");
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        assert_eq!(fetch(&pool).await.unwrap(), "ok");
        assert_eq!(up.conns.load(Ordering::SeqCst), 1);
        tokio::time::advance(IDLE_TIMEOUT + Duration::from_secs(1)).await;
        assert_eq!(fetch(&pool).await.unwrap(), "ok");
        assert_eq!(up.conns.load(Ordering::SeqCst), 2);
        // The expired one was closed, not kept.
        assert_eq!(pool.idle_len(), 1);
    }

    /// A burst leaves idle connections below the one steady traffic keeps
    /// using: they are closed once expired, not kept for good.
    #[tokio::test(start_paused = true)]
    async fn connections_a_burst_left_expire_under_steady_traffic() {
        let up = upstream(Mode::KeepAlive).await;
        let pool = pool(up.addr);
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(pool.send(get()).await.unwrap());
        }
        for resp in open {
            resp.into_body().collect().await.unwrap();
        }
        assert_eq!(pool.idle_len(), 3);
        for _ in 0..3 {
            tokio::time::advance(IDLE_TIMEOUT / 2).await;
            assert_eq!(fetch(&pool).await.unwrap(), "ok");
        }
        assert_eq!(up.conns.load(Ordering::SeqCst), 3);
        assert_eq!(pool.idle_len(), 1);
    }

    #[tokio::test]
    async fn the_idle_list_is_bounded() {
        let up = upstream(Mode::KeepAlive).await;
        let pool = pool(up.addr);
        // MAX_IDLE + 2 concurrent requests: as many connections, of which
        // MAX_IDLE are kept once all are done.
        let n = MAX_IDLE + 2;
        let mut open = Vec::new();
        for _ in 0..n {
            open.push(pool.send(get()).await.unwrap());
        }
        for resp in open {
            resp.into_body().collect().await.unwrap();
        }
        assert_eq!(up.conns.load(Ordering::SeqCst), n);
        assert_eq!(pool.idle_len(), MAX_IDLE);
    }

    /// An address whose connects hang until they time out: a listener with
    /// its accept queue full (Linux drops the SYNs then), like an upstream
    /// behind a firewall that drops packets. The listener and the queued
    /// connection must be kept.
    async fn blackhole() -> (SocketAddr, tokio::net::TcpListener, TcpStream) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let queued = TcpStream::connect(addr).await.unwrap();
        (addr, listener, queued)
    }

    /// While the upstream cannot be reached, requests waiting for the one
    /// HTTP/2 connection attempt get its failure: they do not each make one
    /// more attempt in turn (the tenth would wait ten connect timeouts).
    #[tokio::test]
    async fn http2_requests_waiting_for_a_failing_connect_share_its_failure() {
        let (addr, _listener, _queued) = blackhole().await;
        tokio::time::pause();
        let connect_timeout = Duration::from_secs(1);
        let tls = crate::http::tls::ClientTls::new(&[], None).unwrap();
        let connector = crate::http::client::connector(connect_timeout, &tls, true);
        let pool: OriginPool<Empty<Bytes>> =
            OriginPool::tcp(connector, format!("http://{addr}/").parse().unwrap(), true);
        let started = Instant::now();
        let sends = (0..10).map(|_| {
            let pool = &pool;
            async move {
                let req = Request::builder()
                    .uri(format!("http://{addr}/x"))
                    .version(http::Version::HTTP_2)
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let err = pool.send(req).await.unwrap_err();
                assert!(matches!(err, PoolError::Connect(_)), "{err:?}");
                Instant::now().saturating_duration_since(started)
            }
        });
        let waited = futures_util::future::join_all(sends).await;
        assert!(
            waited.iter().all(|w| *w < connect_timeout * 2),
            "waited {waited:?}"
        );
    }

    /// An h2c upstream (hyper's server) on 127.0.0.1:0 that counts connections.
    async fn h2_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"h2"),
                    )))
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), service),
                );
            }
        });
        (addr, conns)
    }

    #[tokio::test]
    async fn http2_requests_share_one_connection() {
        let (addr, conns) = h2_upstream().await;
        let tls = crate::http::tls::ClientTls::new(&[], None).unwrap();
        let connector = crate::http::client::connector(Duration::from_secs(2), &tls, true);
        let pool: OriginPool<Empty<Bytes>> =
            OriginPool::tcp(connector, format!("http://{addr}/").parse().unwrap(), true);
        let get = || {
            Request::builder()
                .uri(format!("http://{addr}/x"))
                .version(http::Version::HTTP_2)
                .body(Empty::<Bytes>::new())
                .unwrap()
        };
        // Concurrent first requests: one connection is made, the others
        // wait for it; then every request is a stream on it.
        for _ in 0..2 {
            let sends: Vec<_> = (0..10).map(|_| pool.send(get())).collect();
            for resp in futures_util::future::join_all(sends).await {
                let body = resp.unwrap().into_body().collect().await.unwrap();
                assert_eq!(body.to_bytes(), "h2");
            }
        }
        let one = pool.send(get()).await.unwrap();
        assert_eq!(one.into_body().collect().await.unwrap().to_bytes(), "h2");
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    /// An upstream restarting gracefully (HTTP/2 GOAWAY) while a long
    /// response still streams on the shared connection: new requests go to
    /// a new connection, not to the one going away, and the long response
    /// still ends.
    #[tokio::test]
    async fn http2_requests_after_a_goaway_go_to_a_new_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let goaway = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let arrived = Arc::new(Notify::new());
        let (counted, go, rel, arr) = (
            conns.clone(),
            goaway.clone(),
            release.clone(),
            arrived.clone(),
        );
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let (rel, arr) = (rel.clone(), arr.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (rel, arr) = (rel.clone(), arr.clone());
                    async move {
                        if req.uri().path() == "/long" {
                            arr.notify_one();
                            rel.notified().await;
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"h2"),
                        )))
                    }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), service);
                let go = go.clone();
                tokio::spawn(async move {
                    let mut conn = std::pin::pin!(conn);
                    if n == 0 {
                        tokio::select! {
                            _ = conn.as_mut() => return,
                            () = go.notified() => conn.as_mut().graceful_shutdown(),
                        }
                    }
                    let _ = conn.await;
                });
            }
        });
        let tls = crate::http::tls::ClientTls::new(&[], None).unwrap();
        let connector = crate::http::client::connector(Duration::from_secs(2), &tls, true);
        let pool: Arc<OriginPool<Empty<Bytes>>> = Arc::new(OriginPool::tcp(
            connector,
            format!("http://{addr}/").parse().unwrap(),
            true,
        ));
        let req = |path: &str| {
            Request::builder()
                .uri(format!("http://{addr}{path}"))
                .version(http::Version::HTTP_2)
                .body(Empty::<Bytes>::new())
                .unwrap()
        };
        let resp = pool.send(req("/x")).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "h2");
        let long = tokio::spawn({
            let pool = pool.clone();
            let long = req("/long");
            async move { pool.send(long).await.map(|r| r.status()) }
        });
        // The long request is on the upstream's first connection when it
        // says GOAWAY. The shared sender does not look closed until hyper's
        // dispatcher is polled again (by the next request, which it hands
        // back unsent): the frames get a few turns of the I/O driver to
        // arrive (`yield_now` waits for one).
        arrived.notified().await;
        goaway.notify_one();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        for _ in 0..3 {
            let resp = pool.send(req("/x")).await.unwrap();
            assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "h2");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        assert_eq!(pool.retries.load(Ordering::Relaxed), 1);
        release.notify_one();
        assert_eq!(long.await.unwrap().unwrap(), 200);
    }
}
