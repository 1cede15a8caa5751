//! HTTP/1.1 Upgrade (WebSocket and friends): once the token is accepted, the
//! upgrade request goes to the upstream, and on `101 Switching Protocols` the two
//! connections are joined byte for byte. A tunnel is closed when the token's
//! `exp` passes (the token authorised the tunnel, not the hours after it) and at
//! the shutdown deadline: hyper-util's `GracefulShutdown` no longer sees an
//! upgraded connection, so the tunnels are tracked here.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
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
    /// side closes, `max_life` passes (the token expires), or shutdown.
    pub fn spawn(&self, client: OnUpgrade, upstream: OnUpgrade, max_life: Option<Duration>) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            let expiry = async {
                match max_life {
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
                () = cancel.cancelled() => info!("shutdown deadline: closing tunnel"),
            }
            // A clean FIN on both sides; a peer that does not read cannot hold us.
            let close = async {
                let _ = client.shutdown().await;
                let _ = upstream.shutdown().await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
        });
    }
}

/// The `Upgrade` value of an HTTP/1.1 upgrade request (`Connection: upgrade` and
/// an `Upgrade` field), else `None`. HTTP/2 has no Upgrade (RFC 9113 §8.6).
pub fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let connection_says_upgrade = crate::forward::connection_tokens(req.headers())
        .any(|t| t.eq_ignore_ascii_case(b"upgrade"));
    if !connection_says_upgrade {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

/// Puts back the two hop-by-hop fields a tunnelled upgrade needs, after the
/// usual stripping removed them (and anything else `Connection` named).
pub fn restore_headers(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// The tunnel's lifetime: until `exp` by the injected clock (`None`: no `exp`,
/// the tunnel lives until either side closes it or shutdown).
pub fn until_exp(exp: Option<i64>, now: std::time::SystemTime) -> Option<Duration> {
    exp.map(|exp| crate::clock::until_exp(exp, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn upgrade_detection() {
        let req = |version, conn: &str, up: Option<&str>| {
            let mut b = Request::builder()
                .version(version)
                .header("connection", conn);
            if let Some(u) = up {
                b = b.header("upgrade", u);
            }
            b.body(()).unwrap()
        };
        assert_eq!(
            requested(&req(
                Version::HTTP_11,
                "keep-alive, Upgrade",
                Some("websocket")
            ))
            .unwrap(),
            "websocket"
        );
        assert!(requested(&req(Version::HTTP_11, "keep-alive", Some("websocket"))).is_none());
        assert!(requested(&req(Version::HTTP_11, "upgrade", None)).is_none());
        assert!(requested(&req(Version::HTTP_10, "upgrade", Some("websocket"))).is_none());
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
        assert_eq!(requested(&obs).unwrap(), "websocket");
    }

    #[test]
    fn lifetime_is_exp_minus_now_never_negative() {
        let now = UNIX_EPOCH + Duration::from_millis(1_000_500);
        assert_eq!(
            until_exp(Some(1_002), now),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(until_exp(Some(999), now), Some(Duration::ZERO));
        assert_eq!(until_exp(None, SystemTime::now()), None);
    }
}
