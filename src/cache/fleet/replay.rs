//! What the DPoP stage ([`crate::policy::binding`]) asks of the shared Redis: a
//! fleet-wide "first use" of a proof (`SET NX PX`), and a key derived from
//! the shared secret for the stateless nonces, so that every replica issues
//! and accepts the same ones.

use super::*;

/// A proof's replay record: `tokengate:j:` + hex HMAC(key, label ‖ id).
const REPLAY_PREFIX: &str = "tokengate:j:";
const REPLAY_LABEL: &[u8] = b"tokengate dpop jti\0";

impl Fleet {
    /// Records `id` (a proof's replay id) for `ttl`; `Ok(true)` when no
    /// replica had recorded it before. An error means "unknown": the caller
    /// decides (the DPoP stage refuses, see `crate::policy::binding`).
    pub async fn first_use(&self, id: &[u8; 32], ttl: Duration) -> Result<bool, FleetError> {
        let key = format!(
            "{REPLAY_PREFIX}{}",
            hex::encode(self.mac(&[REPLAY_LABEL, id]))
        );
        self.set_nx_px("dpop replay", key, ttl).await
    }

    /// A 32-byte key for `label`, the same on every replica with the same
    /// `key_secret` (and useless for anything the cache's own labels do).
    pub fn derive_key(&self, label: &[u8]) -> [u8; 32] {
        self.mac(&[b"tokengate derived key\0", label])
    }
}
