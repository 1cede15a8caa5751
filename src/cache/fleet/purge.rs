//! Fleet-wide purge: the publishing side ([`Fleet::purge`]) and the
//! subscriber that drops purged tokens from this replica's L1.

use super::*;

impl Fleet {
    /// Fleet-wide purge: this replica's L1, the L2 entry, and a message that
    /// makes every subscribed replica drop its L1 entry. L1 goes first and
    /// always; the error says that the rest of the fleet may not have heard.
    /// The purge is also remembered (here, and as a tombstone in Redis that
    /// lives as long as any entry written before it): an L2 value asked for
    /// at or before the purge is refused from then on, whether it is a
    /// replay written back by someone who can write Redis or the answer of an
    /// introspection that was in flight during the purge.
    pub async fn purge(&self, hash: &TokenHash) -> Result<(), FleetError> {
        let now = self.remember_purge(hash).await;
        self.l1.invalidate(hash).await;
        let key = self.l2_key(hash);
        let tomb = Self::tomb_key(&key);
        let tomb_ms = as_ms(self.purge_lifetime.get());
        let msg = hex::encode(hash);
        let sent = self
            .call_with("purge", false, |mut c| async move {
                redis::pipe()
                    .cmd("DEL")
                    .arg(&key)
                    .ignore()
                    .cmd("SET")
                    .arg(&tomb)
                    .arg(now)
                    .arg("PX")
                    .arg(tomb_ms)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(PURGE_CHANNEL)
                    .arg(&msg)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        match &sent {
            Ok(()) => {
                bump(&self.counters.purges_sent);
                info!(token = %fingerprint(hash), "purge published to the fleet");
            }
            Err(e) => warn!(token = %fingerprint(hash), error = %e,
                "purge reached this replica only: the shared cache is unavailable"),
        }
        sent
    }

    /// The purge subscriber: its own connection, reconnecting with backoff,
    /// until the task is aborted (at shutdown).
    pub async fn run_subscriber(self: Arc<Self>) {
        let mut backoff = RESUBSCRIBE_MIN;
        loop {
            match self.subscribe_once().await {
                // It had been up: try again soon.
                Ok(()) => backoff = RESUBSCRIBE_MIN,
                Err(e) => debug!(error = %e, "purge subscriber: cannot subscribe"),
            }
            if self.subscribed.swap(false, Ordering::SeqCst) {
                warn!("purge subscriber disconnected; L1 will be cleared on reconnect");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
        }
    }

    /// One subscription's life. `Ok` when an established subscription ended.
    async fn subscribe_once(&self) -> Result<(), FleetError> {
        let pubsub = within(CONNECT_TIMEOUT, self.client.get_async_pubsub()).await?;
        let (mut sink, mut stream) = pubsub.split();
        within(CONNECT_TIMEOUT, sink.subscribe(PURGE_CHANNEL)).await?;
        // Purges published while we were not subscribed are lost to us; the
        // only safe assumption is that any L1 entry may have been purged.
        self.l1.clear();
        bump(&self.counters.l1_resyncs);
        self.subscribed.store(true, Ordering::SeqCst);
        info!(
            channel = PURGE_CHANNEL,
            "purge subscriber connected; L1 cleared"
        );
        let mut ping = tokio::time::interval(SUBSCRIBER_PING);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.on_message(msg.get_payload_bytes()).await,
                    None => return Ok(()),
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(CONNECT_TIMEOUT, sink.ping::<String>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn on_message(&self, payload: &[u8]) {
        let mut hash: TokenHash = [0; 32];
        if payload.len() != 64 || hex::decode_to_slice(payload, &mut hash).is_err() {
            debug!(
                len = payload.len(),
                "purge subscriber: ignoring a malformed message"
            );
            return;
        }
        bump(&self.counters.purges_received);
        // Received now, so purged no later than now on our clock (the message
        // carries only the hash, for older replicas' sake).
        self.remember_purge(&hash).await;
        self.l1.invalidate(&hash).await;
        debug!(token = %fingerprint(&hash), "purge received; L1 entry dropped");
    }
}
