//! HTTP/1.1 Upgrade (WebSocket and friends): once the token is accepted, the
//! upgrade request goes to the upstream, and on `101 Switching Protocols` the two
//! connections are joined byte for byte.
//!
//! Only the protocols in `upgrade_protocols` (default `["websocket"]`) are ever
//! offered to the upstream: anything else is removed and the request goes on as
//! a plain one (RFC 9110 §7.8 lets a server ignore `Upgrade`). A tunnel is
//! opaque to tokengate, so an upgrade to another HTTP (`h2c`, `h2`, `HTTP/2.0`)
//! would let the client send requests inside it that no token ever checked:
//! those are refused even if configured. A `101` is relayed only when it names
//! a protocol that was offered (see [`confirms`]; `forward::Forwarder::send`).
//!
//! A tunnel is closed when the token's `exp` passes (the token authorised the
//! tunnel, not the hours after it), after `limits.tunnel_idle_timeout` without a
//! byte either way, and at the shutdown deadline: hyper-util's
//! `GracefulShutdown` no longer sees an upgraded connection, so the tunnels are
//! tracked here. A tunnel keeps its client connection's `limits.max_connections`
//! slot until it closes.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

/// Every open tunnel, so that shutdown can wait for them and then close them.
#[derive(Debug, Default)]
pub struct Tunnels {
    tracker: TaskTracker,
    /// Fired by `server::run` at the shutdown deadline.
    cancel: CancellationToken,
}

/// When a tunnel closes by itself.
#[derive(Debug, Clone, Copy)]
pub struct TunnelLimits {
    /// Until the token's `exp` (`None`: no `exp`).
    pub max_life: Option<Duration>,
    /// `limits.tunnel_idle_timeout`: no byte either way for this long.
    pub idle: Duration,
}

impl Tunnels {
    /// Open tunnels (and upgrades still being set up).
    pub fn count(&self) -> usize {
        self.tracker.len()
    }

    /// Resolves when every tunnel has ended by itself.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Closes every tunnel now (the shutdown deadline has passed).
    pub fn close_all(&self) {
        self.cancel.cancel();
    }

    /// Joins the client's and the upstream's upgraded connections until either
    /// side closes, the limits end it, or shutdown. `slot` is the client
    /// connection's `limits.max_connections` permit: held until the tunnel ends,
    /// so that open tunnels count against the limit like the connections they were.
    pub fn spawn(
        &self,
        client: OnUpgrade,
        upstream: OnUpgrade,
        limits: TunnelLimits,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            let _slot = slot;
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            join(TokioIo::new(client), TokioIo::new(upstream), limits, cancel).await;
        });
    }
}

/// Copies bytes both ways until either side closes, `exp`, idleness or
/// `cancel`; then shuts both sides down.
async fn join<C, U>(client: C, upstream: U, limits: TunnelLimits, cancel: CancellationToken)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Watched {
        io: client,
        activity: activity.clone(),
    };
    let mut upstream = Watched {
        io: upstream,
        activity: activity.clone(),
    };
    let expiry = async {
        match limits.max_life {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
            Ok((up, down)) => debug!(bytes_to_upstream = up, bytes_to_client = down, "tunnel closed"),
            Err(e) => debug!(error = %e, "tunnel closed with error"),
        },
        () = expiry => info!("token expired: closing tunnel"),
        () = activity.idle_for(limits.idle) => {
            info!(idle = ?limits.idle, "tunnel idle: closing it");
        }
        () = cancel.cancelled() => info!("shutdown deadline: closing tunnel"),
    }
    // A clean FIN on both sides; a peer that does not read cannot hold us.
    let close = async {
        let _ = client.shutdown().await;
        let _ = upstream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
}

/// When a tunnel last moved a byte (read from either side), shared by its two
/// ends. Kept on tokio's clock, so tests can drive it with paused time.
#[derive(Clone)]
struct Activity {
    start: Instant,
    /// Nanoseconds from `start` to the last byte read.
    last: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One end of a tunnel, reporting every byte read to the tunnel's [`Activity`].
struct Watched<T> {
    io: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Protocol names that can never be allowed: each switches the connection to
/// (another version of) HTTP, and the requests sent inside the tunnel would
/// reach the upstream without a token check. `h2c` is the one real servers
/// still accept (RFC 9113 §3.1 deprecated it); `h2` is never negotiated by
/// Upgrade (RFC 9113 §3.2); `HTTP/x` names any HTTP version; `TLS/x` (RFC
/// 2817) goes on with HTTP/1.1 inside TLS.
const NEVER: [&str; 4] = ["h2c", "h2", "http", "tls"];

fn is_never(name: &[u8]) -> bool {
    NEVER
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// `upgrade_protocols`, validated: the protocols a client may upgrade to.
/// Names match case-insensitively; an entry with a version (`name/1`) matches
/// only that version, one without matches any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeProtocols(Vec<(String, Option<String>)>);

impl Default for UpgradeProtocols {
    fn default() -> Self {
        Self(vec![("websocket".to_owned(), None)])
    }
}

impl UpgradeProtocols {
    /// Parses the configured list; the error says which entry is wrong and why.
    pub fn parse(list: &[String]) -> Result<Self, String> {
        let mut out = Vec::new();
        for entry in list {
            let Some((name, version)) = split_protocol(entry.trim().as_bytes()) else {
                return Err(format!(
                    "{entry:?} is not a protocol token (RFC 9110 §7.8: name or name/version)"
                ));
            };
            if is_never(name) {
                return Err(format!(
                    "{entry:?} cannot be allowed: an upgrade to HTTP/2 or another HTTP \
                     (h2c, h2, HTTP/x, TLS/x) would carry requests past tokengate \
                     unchecked (h2c upgrade was removed by RFC 9113 §3.1)"
                ));
            }
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            out.push((text(name), version.map(text)));
        }
        Ok(Self(out))
    }

    /// Whether the client may upgrade to this one `Upgrade` list element.
    /// Never for an HTTP, whatever the configuration says.
    pub fn allows(&self, protocol: &[u8]) -> bool {
        let Some((name, version)) = split_protocol(protocol) else {
            return false;
        };
        !is_never(name)
            && self.0.iter().any(|(n, v)| {
                n.as_bytes().eq_ignore_ascii_case(name)
                    && v.as_ref().is_none_or(|v| Some(v.as_bytes()) == version)
            })
    }
}

/// `protocol-name ["/" protocol-version]`, both RFC 9110 tokens; `None` if
/// the element is not that.
fn split_protocol(p: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (name, version) = match p.iter().position(|b| *b == b'/') {
        Some(i) => (&p[..i], Some(&p[i + 1..])),
        None => (p, None),
    };
    let token = |t: &[u8]| !t.is_empty() && t.iter().all(|b| is_tchar(*b));
    (token(name) && version.is_none_or(token)).then_some((name, version))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The elements of every field `name`, trimmed (comma-separated lists).
fn list_elements<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
) -> impl Iterator<Item = &'a [u8]> {
    values
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The `Upgrade` value to forward for an HTTP/1.1 upgrade request
/// (`Connection: upgrade` and an `Upgrade` field): only the offered protocols
/// that `allowed` allows, in the client's order. `None` when nothing is left
/// (the request then goes on as a plain one, without `Upgrade`). HTTP/2 has no
/// Upgrade (RFC 9113 §8.6), HTTP/1.0 neither.
pub fn requested<B>(req: &Request<B>, allowed: &UpgradeProtocols) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let connection_says_upgrade = crate::http::headers::connection_tokens(req.headers())
        .any(|t| t.eq_ignore_ascii_case(b"upgrade"));
    if !connection_says_upgrade {
        return None;
    }
    let mut offer = Vec::new();
    for p in list_elements(req.headers().get_all(header::UPGRADE).iter()) {
        if allowed.allows(p) {
            if !offer.is_empty() {
                offer.extend_from_slice(b", ");
            }
            offer.extend_from_slice(p);
        }
    }
    if offer.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&offer).ok()
}

/// Whether a `101` may be relayed: it names (in its `Upgrade`) only protocols
/// that were offered in `offered`, by name, case-insensitively, and never an
/// HTTP. No offer, or a 101 without `Upgrade` (RFC 9110 §15.2.2 requires it):
/// never.
pub fn confirms(offered: Option<&HeaderValue>, request: &HeaderMap, answer: &HeaderMap) -> bool {
    let Some(offered) = offered else {
        return false;
    };
    let offered_names: Vec<&[u8]> = list_elements(std::iter::once(offered))
        .filter_map(|p| split_protocol(p).map(|(name, _)| name))
        .collect();
    let mut named = 0;
    for p in list_elements(answer.get_all(header::UPGRADE).iter()) {
        let Some((name, _)) = split_protocol(p) else {
            return false;
        };
        if is_never(name) || !offered_names.iter().any(|o| o.eq_ignore_ascii_case(name)) {
            return false;
        }
        if name.eq_ignore_ascii_case(b"websocket") && !websocket_accepted(request, answer) {
            return false;
        }
        named += 1;
    }
    named > 0
}

/// RFC 6455 §4.2.2: a server that really switches to WebSocket answers the
/// request's one `Sec-WebSocket-Key` with `Sec-WebSocket-Accept` =
/// base64(SHA-1(key ‖ GUID)). A `101` + `Upgrade: websocket` without it did
/// not run the handshake (an endpoint that lets the client choose its
/// status, a misbehaving app): the server behind it may go on reading
/// HTTP/1.1 from the connection, and the client would then send requests
/// through the tunnel that no token check sees. Browsers refuse such a 101
/// too, so no real WebSocket client is turned away.
fn websocket_accepted(request: &HeaderMap, answer: &HeaderMap) -> bool {
    use base64::Engine as _;
    use sha1::Digest as _;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let single = |h: &HeaderMap, name: &str| {
        let mut values = h.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => Some(v.as_bytes().trim_ascii().to_vec()),
            _ => None,
        }
    };
    let (Some(key), Some(accept)) = (
        single(request, "sec-websocket-key"),
        single(answer, "sec-websocket-accept"),
    ) else {
        return false;
    };
    let mut sha = sha1::Sha1::new();
    sha.update(&key);
    sha.update(GUID);
    let want = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    !key.is_empty() && accept == want.as_bytes()
}

/// Puts back the two hop-by-hop fields a tunnelled upgrade needs, after the
/// usual stripping removed them (and anything else `Connection` named).
pub fn restore_headers(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// The tunnel's lifetime: until `exp` by the injected clock (`None`: no `exp`,
/// the tunnel lives until either side closes it, idleness or shutdown).
pub fn until_exp(exp: Option<i64>, now: std::time::SystemTime) -> Option<Duration> {
    exp.map(|exp| crate::resilience::clock::until_exp(exp, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;
    use tokio::io::{duplex, AsyncReadExt, DuplexStream};

    fn req(version: Version, conn: &str, up: &[&str]) -> Request<()> {
        let mut b = Request::builder()
            .version(version)
            .header("connection", conn);
        for u in up {
            b = b.header("upgrade", *u);
        }
        b.body(()).unwrap()
    }

    fn allowed(list: &[&str]) -> UpgradeProtocols {
        UpgradeProtocols::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn upgrade_detection() {
        let ws = UpgradeProtocols::default();
        let got = |r: &Request<()>| requested(r, &ws);
        assert_eq!(
            got(&req(
                Version::HTTP_11,
                "keep-alive, Upgrade",
                &["websocket"]
            ))
            .unwrap(),
            "websocket"
        );
        assert!(got(&req(Version::HTTP_11, "keep-alive", &["websocket"])).is_none());
        assert!(got(&req(Version::HTTP_11, "upgrade", &[])).is_none());
        assert!(got(&req(Version::HTTP_10, "upgrade", &["websocket"])).is_none());
        // The same tokenizer as hop-by-hop stripping: an obs-text byte next to
        // `upgrade` does not hide it.
        let obs = Request::builder()
            .version(Version::HTTP_11)
            .header(
                "connection",
                HeaderValue::from_bytes(b"x-\xff, upgrade").unwrap(),
            )
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert_eq!(got(&obs).unwrap(), "websocket");
    }

    /// Issue 12 item 1: only allowed protocols are offered to the upstream,
    /// h2c (or any HTTP) never, in whatever case or list position.
    #[test]
    fn only_allowed_protocols_are_offered() {
        let ws = UpgradeProtocols::default();
        let offer = |up: &[&str], a: &UpgradeProtocols| {
            requested(&req(Version::HTTP_11, "Upgrade", up), a)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        for refused in [
            &["h2c"][..],
            &["H2C"],
            &["h2c/2"],
            &["h2"],
            &["HTTP/2.0"],
            &["http/1.1"],
            &["TLS/1.0"],
            &["websocket2"],
            &["web socket"],
            &["websocket/"],
            &[""],
            &[", ,"],
        ] {
            assert_eq!(offer(refused, &ws), None, "{refused:?}");
        }
        assert_eq!(offer(&["WebSocket"], &ws).as_deref(), Some("WebSocket"));
        assert_eq!(
            offer(&["websocket/13"], &ws).as_deref(),
            Some("websocket/13")
        );
        assert_eq!(
            offer(&["h2c, websocket", "HTTP/2.0"], &ws).as_deref(),
            Some("websocket")
        );
        let two = allowed(&["websocket", "example/1"]);
        assert_eq!(
            offer(&["example/2, h2c", "EXAMPLE/1", "websocket"], &two).as_deref(),
            Some("EXAMPLE/1, websocket")
        );
        // Nothing allowed: no upgrade at all.
        assert_eq!(offer(&["websocket"], &allowed(&[])), None);
        // Even a list that somehow holds h2c (validation refuses it) never offers it.
        let forced = UpgradeProtocols(vec![("h2c".into(), None)]);
        assert_eq!(offer(&["h2c"], &forced), None);
    }

    #[test]
    fn config_refuses_every_http_upgrade() {
        for bad in ["h2c", "H2C", "h2", "h2c/2", "HTTP/2.0", "http", "TLS/1.2"] {
            let err = UpgradeProtocols::parse(&[bad.into()]).unwrap_err();
            assert!(err.contains("cannot be allowed"), "{bad}: {err}");
        }
        for bad in ["", "web socket", "ws/", "/1", "a,b"] {
            let err = UpgradeProtocols::parse(&[bad.into()]).unwrap_err();
            assert!(err.contains("not a protocol token"), "{bad:?}: {err}");
        }
        assert_eq!(
            UpgradeProtocols::parse(&[" websocket ".into()]).unwrap(),
            UpgradeProtocols::default()
        );
    }

    /// The RFC 6455 §1.3 sample handshake.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn fields(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_101_must_name_an_offered_protocol() {
        let asked = fields(&[("sec-websocket-key", KEY)]);
        let answer = |up: &[&str]| {
            let mut h = fields(&[("sec-websocket-accept", ACCEPT)]);
            for u in up {
                h.append(header::UPGRADE, HeaderValue::from_str(u).unwrap());
            }
            h
        };
        let confirms = |o: Option<&HeaderValue>, a: &HeaderMap| confirms(o, &asked, a);
        let ws = HeaderValue::from_static("websocket");
        assert!(confirms(Some(&ws), &answer(&["websocket"])));
        assert!(confirms(Some(&ws), &answer(&["WebSocket"])));
        assert!(confirms(Some(&ws), &answer(&["websocket/13"])));
        assert!(!confirms(Some(&ws), &answer(&["h2c"])));
        assert!(!confirms(Some(&ws), &answer(&["websocket, h2c"])));
        assert!(!confirms(Some(&ws), &answer(&[])));
        assert!(!confirms(Some(&ws), &answer(&["web socket"])));
        // No upgrade was forwarded: no 101 is ever right.
        assert!(!confirms(None, &answer(&["websocket"])));
        assert!(!confirms(None, &answer(&["h2c"])));
        let two = HeaderValue::from_static("EXAMPLE/1, websocket");
        assert!(confirms(Some(&two), &answer(&["example/1"])));
        // Not even when the offer itself held h2c.
        let h2c = HeaderValue::from_static("h2c");
        assert!(!confirms(Some(&h2c), &answer(&["h2c"])));
    }

    /// Review finding: a 101 + `Upgrade: websocket` is a WebSocket only if it
    /// answers the request's key; otherwise the server behind it may keep
    /// reading HTTP/1.1 from the tunnel.
    #[test]
    fn a_websocket_101_must_answer_the_key() {
        let ws = HeaderValue::from_static("websocket");
        let up = |extra: &[(&'static str, &str)]| {
            let mut h = fields(extra);
            h.append(header::UPGRADE, ws.clone());
            h
        };
        let key = fields(&[("sec-websocket-key", KEY)]);
        assert!(confirms(
            Some(&ws),
            &key,
            &up(&[("sec-websocket-accept", ACCEPT)])
        ));
        // No accept, a wrong one, two, or no key to answer: not a WebSocket.
        assert!(!confirms(Some(&ws), &key, &up(&[])));
        assert!(!confirms(
            Some(&ws),
            &key,
            &up(&[("sec-websocket-accept", KEY)])
        ));
        assert!(!confirms(
            Some(&ws),
            &key,
            &up(&[
                ("sec-websocket-accept", ACCEPT),
                ("sec-websocket-accept", ACCEPT)
            ])
        ));
        assert!(!confirms(
            Some(&ws),
            &HeaderMap::new(),
            &up(&[("sec-websocket-accept", ACCEPT)])
        ));
        let two_keys = fields(&[("sec-websocket-key", KEY), ("sec-websocket-key", KEY)]);
        assert!(!confirms(
            Some(&ws),
            &two_keys,
            &up(&[("sec-websocket-accept", ACCEPT)])
        ));
        // Another allowed protocol has no such handshake to check.
        let ex = HeaderValue::from_static("example");
        assert!(confirms(
            Some(&ex),
            &HeaderMap::new(),
            &fields(&[("upgrade", "example")])
        ));
    }

    #[test]
    fn lifetime_is_exp_minus_now_never_negative() {
        let now = UNIX_EPOCH + Duration::from_millis(1_000_500);
        assert_eq!(
            until_exp(Some(1_002), now),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(until_exp(Some(999), now), Some(Duration::ZERO));
        assert_eq!(until_exp(None, now), None);
    }

    /// Sends `byte` in at one end and checks it comes out at the other.
    async fn through(from: &mut DuplexStream, to: &mut DuplexStream, byte: u8) {
        from.write_all(&[byte]).await.unwrap();
        let mut got = [0u8; 1];
        to.read_exact(&mut got).await.unwrap();
        assert_eq!(got[0], byte);
    }

    /// Issue 12 item 8: a tunnel with no byte either way for
    /// `tunnel_idle_timeout` is closed; every byte (either way) restarts the
    /// count. Paused time: the close happens exactly at the idle deadline.
    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_closes_after_the_idle_timeout_and_traffic_keeps_it_open() {
        let idle = Duration::from_secs(60);
        let (mut client, client_end) = duplex(64);
        let (mut upstream, upstream_end) = duplex(64);
        let limits = TunnelLimits {
            max_life: None,
            idle,
        };
        let tunnel = tokio::spawn(join(
            client_end,
            upstream_end,
            limits,
            CancellationToken::new(),
        ));
        through(&mut client, &mut upstream, b'a').await;
        tokio::time::advance(Duration::from_secs(59)).await;
        through(&mut upstream, &mut client, b'b').await;
        tokio::time::advance(Duration::from_secs(59)).await;
        through(&mut client, &mut upstream, b'c').await;
        let last = Instant::now();
        assert!(!tunnel.is_finished(), "traffic must keep the tunnel open");

        // Now silence: both ends see EOF, `idle` after the last byte.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(Instant::now() - last, idle);
        upstream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        tunnel.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_counts_from_the_start_of_a_silent_tunnel() {
        let (mut client, client_end) = duplex(64);
        let (_upstream, upstream_end) = duplex(64);
        let start = Instant::now();
        let limits = TunnelLimits {
            max_life: None,
            idle: Duration::from_secs(5),
        };
        let tunnel = tokio::spawn(join(
            client_end,
            upstream_end,
            limits,
            CancellationToken::new(),
        ));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        tunnel.await.unwrap();
    }
}
