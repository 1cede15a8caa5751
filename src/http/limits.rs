//! Limits on what a client can make tokengate hold: header bytes, open
//! connections, request body bytes, and idle keep-alive time.
//!
//! * Header size: hyper's HTTP/1 read buffer (`max_buf_size`) and HTTP/2
//!   `max_header_list_size`; over it, hyper itself answers 431.
//! * Connections: a semaphore in the accept loop. At the limit tokengate stops
//!   *accepting* (like HAProxy's `maxconn`): new connections wait in the
//!   kernel's listen backlog and are served as others close, rather than being
//!   reset. A client sees connect latency, not an error, during a burst. An
//!   upgraded (WebSocket) tunnel keeps its connection's permit
//!   ([`ConnectionSlot`]) until it closes: it holds a socket to each side.
//! * Body: `Content-Length` over the limit is refused up front (413, nothing
//!   forwarded, no introspection); a body without a length is counted while it
//!   streams, and the stream to the upstream is aborted before the frame that
//!   would cross the limit, so the upstream never receives a complete
//!   over-limit request.
//! * Idle: hyper's `header_read_timeout`, which in hyper 1.x runs from the
//!   moment a connection waits for a request head — for the first request and
//!   between keep-alive requests — so it closes idle keep-alive connections
//!   and slow-header (slowloris) clients alike. Tunnels have their own
//!   `tunnel_idle_timeout` (see `crate::upstream::upgrade`).

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// hyper refuses an HTTP/1 read buffer smaller than this (it panics).
pub const MIN_HEADER_BYTES: usize = 8192;

/// `[limits]`, validated.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    /// `None`: unlimited.
    pub max_connections: Option<usize>,
    /// `None`: unlimited.
    pub max_body_bytes: Option<u64>,
    pub idle_timeout: Duration,
    /// An upgraded tunnel with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
}

/// Applies the header and idle limits to the connection builder.
pub fn configure<E>(builder: &mut hyper_util::server::conn::auto::Builder<E>, limits: &Limits) {
    builder
        .http1()
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
        .header_read_timeout(limits.idle_timeout);
    builder
        .http2()
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Pings find dead HTTP/2 peers (a half-open TCP connection would
        // otherwise hold a connection slot forever).
        .keep_alive_interval(limits.idle_timeout)
        .keep_alive_timeout(Duration::from_secs(20));
}

/// The open-connection limit. Each accepted connection holds a permit until it
/// closes.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    permits: Option<Arc<Semaphore>>,
    max: usize,
}

impl ConnectionLimit {
    pub fn new(max: Option<usize>) -> Self {
        Self {
            permits: max.map(|m| Arc::new(Semaphore::new(m))),
            max: max.unwrap_or(0),
        }
    }

    /// Waits for a free slot. `None` when there is no limit.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        let sem = self.permits.as_ref()?;
        // The semaphore is never closed, so this cannot fail; if it ever did,
        // carrying on without a permit is the lesser evil.
        sem.clone().acquire_owned().await.ok()
    }

    /// True when the next connection would have to wait.
    pub fn is_full(&self) -> bool {
        self.permits
            .as_ref()
            .is_some_and(|s| s.available_permits() == 0)
    }

    /// Connections currently counted (0 without a limit), for metrics.
    pub fn in_use(&self) -> usize {
        self.permits
            .as_ref()
            .map_or(0, |s| self.max.saturating_sub(s.available_permits()))
    }
}

/// One connection's permit, shared by its task and its request handler: an
/// upgrade takes it over ([`ConnectionSlot::take`]) so the tunnel counts
/// against `max_connections` after hyper has let go of the connection. Released
/// when the last holder drops it.
#[derive(Debug, Clone, Default)]
pub struct ConnectionSlot(Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>);

impl ConnectionSlot {
    pub fn new(permit: Option<OwnedSemaphorePermit>) -> Self {
        Self(Arc::new(std::sync::Mutex::new(permit)))
    }

    /// The permit, moved out (`None` without a limit or if already taken).
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        // A poisoned lock only means a panic elsewhere held it; the permit is
        // still the right one to hand on.
        match self.0.lock() {
            Ok(mut p) => p.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

/// Waits for a new connection's first bytes, for at most `within`. hyper's
/// `header_read_timeout` only starts once the `auto` builder has read those
/// bytes (it peeks at them to tell HTTP/1 from h2c), so without this a client
/// that connects and sends nothing would hold its connection slot forever.
/// `false`: give up on the connection (timed out, or the server is stopping).
pub async fn first_bytes(
    stream: &tokio::net::TcpStream,
    within: Duration,
    stop: &mut tokio::sync::watch::Receiver<()>,
) -> bool {
    let mut byte = [0u8; 1];
    tokio::select! {
        // `peek`, not `readable()`: a fresh socket can report readiness
        // before any byte has arrived. EOF or an error also ends the wait; hyper
        // then sees them itself.
        ready = tokio::time::timeout(within, stream.peek(&mut byte)) => ready.is_ok(),
        _ = stop.changed() => false,
    }
}

/// True when the request declares a body longer than `max`.
pub fn declared_too_large(headers: &HeaderMap, max: Option<u64>) -> bool {
    let Some(max) = max else { return false };
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > max)
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    #[error(transparent)]
    Inner(#[from] hyper::Error),
}

/// Set when a [`LimitedBody`] stopped a body, so the handler can tell "the
/// client sent too much" (413) from "the upstream failed" (502).
#[derive(Debug, Clone, Default)]
pub struct Tripped(Arc<AtomicBool>);

impl Tripped {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A request body that errors instead of yielding the frame that would take
/// it past `max` bytes. Without a limit it is a plain pass-through.
pub struct LimitedBody<B> {
    inner: B,
    max: Option<u64>,
    seen: u64,
    tripped: Tripped,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, max: Option<u64>) -> (Self, Tripped) {
        let tripped = Tripped::default();
        (
            Self {
                inner,
                max,
                seen: 0,
                tripped: tripped.clone(),
            },
            tripped,
        )
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(max) = this.max {
            if this.tripped.is_set() {
                return Poll::Ready(Some(Err(BodyError::TooLarge(max))));
            }
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let (Some(max), Some(data)) = (this.max, frame.data_ref()) {
            this.seen = this.seen.saturating_add(data.len() as u64);
            if this.seen > max {
                this.tripped.0.store(true, Ordering::SeqCst);
                return Poll::Ready(Some(Err(BodyError::TooLarge(max))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
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
    use http_body_util::{BodyExt, StreamBody};

    fn body(chunks: &[usize]) -> impl Body<Data = Bytes, Error = BodyError> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = chunks
            .iter()
            .map(|n| Ok(Frame::data(Bytes::from(vec![b'x'; *n]))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn stops_before_the_frame_that_crosses_the_limit() {
        let (mut b, tripped) = LimitedBody::new(body(&[4, 4, 4]), Some(10));
        let mut passed = 0;
        let mut failed = false;
        while let Some(f) = b.frame().await {
            match f {
                Ok(f) => passed += f.data_ref().map_or(0, Bytes::len),
                Err(e) => {
                    assert!(matches!(e, BodyError::TooLarge(10)));
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed && tripped.is_set());
        assert_eq!(passed, 8, "the crossing frame is never handed on");
    }

    #[tokio::test]
    async fn exactly_at_the_limit_and_unlimited_pass() {
        let (b, tripped) = LimitedBody::new(body(&[5, 5]), Some(10));
        assert_eq!(b.collect().await.unwrap().to_bytes().len(), 10);
        assert!(!tripped.is_set());
        let (b, _) = LimitedBody::new(body(&[1 << 20, 1 << 20]), None);
        assert_eq!(b.collect().await.unwrap().to_bytes().len(), 2 << 20);
    }

    #[test]
    fn declared_length() {
        let mut h = HeaderMap::new();
        assert!(!declared_too_large(&h, Some(10)));
        h.insert("content-length", "11".parse().unwrap());
        assert!(declared_too_large(&h, Some(10)));
        assert!(!declared_too_large(&h, Some(11)));
        assert!(!declared_too_large(&h, None));
    }

    #[tokio::test]
    async fn connection_limit_counts_permits() {
        let limit = ConnectionLimit::new(Some(2));
        let a = limit.acquire().await;
        let _b = limit.acquire().await;
        assert!(limit.is_full());
        assert_eq!(limit.in_use(), 2);
        drop(a);
        assert!(!limit.is_full());
        assert!(ConnectionLimit::new(None).acquire().await.is_none());
    }

    #[tokio::test]
    async fn a_taken_slot_outlives_the_connection() {
        let limit = ConnectionLimit::new(Some(1));
        let slot = ConnectionSlot::new(limit.acquire().await);
        let handler = slot.clone();
        let tunnel = handler.take();
        drop((slot, handler)); // the connection ends
        assert!(limit.is_full(), "the tunnel still holds the permit");
        drop(tunnel);
        assert!(!limit.is_full());
        assert!(ConnectionSlot::default().take().is_none());
    }
}
