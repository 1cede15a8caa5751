//! Stateless DPoP server nonces (RFC 9449 §8, `dpop.require_nonce`).
//!
//! A nonce is base64url(window ‖ HMAC-SHA-256(key, label ‖ window)[..16]),
//! where window = unix seconds / period (the period is `dpop.max_age`). It is
//! accepted during its own window and the next, so a nonce lives between one
//! and two periods and no replica has to remember which nonces it issued.
//! With `[cache.shared]` every replica derives the same key from the shared
//! HMAC secret, so a nonce from one replica is good at all of them; without
//! it the key is random per process (a restart makes clients fetch a new
//! nonce, one extra round trip).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

const LABEL: &[u8] = b"tokengate dpop nonce\0";
const MAC_BYTES: usize = 16;

pub struct Nonces {
    key: [u8; 32],
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nonces(…)")
    }
}

impl Nonces {
    /// A key shared by the fleet (derived from `cache.shared.key_secret_file`).
    pub fn with_key(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A random key for this process.
    pub fn random() -> Self {
        use ring::rand::SecureRandom as _;
        let mut key = [0u8; 32];
        if ring::rand::SystemRandom::new().fill(&mut key).is_err() {
            // The OS has no randomness for us: the hasher seeds of std come
            // from the same source, but try them rather than run with a
            // known key.
            use std::hash::{BuildHasher, Hasher};
            for chunk in key.chunks_mut(8) {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_usize(chunk.as_ptr() as usize);
                chunk.copy_from_slice(&h.finish().to_be_bytes());
            }
            tracing::error!("no OS randomness for the DPoP nonce key; using a weaker one");
        }
        Self { key }
    }

    fn mac(&self, window: u64) -> [u8; MAC_BYTES] {
        // Any key length is valid for HMAC: this cannot fail.
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(LABEL);
        m.update(&window.to_be_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }

    fn window(now_secs: i64, period: Duration) -> u64 {
        u64::try_from(now_secs).unwrap_or(0) / period.as_secs().max(1)
    }

    /// The nonce to hand out now.
    pub fn issue(&self, now_secs: i64, period: Duration) -> String {
        let w = Self::window(now_secs, period);
        let mut raw = [0u8; 8 + MAC_BYTES];
        raw[..8].copy_from_slice(&w.to_be_bytes());
        raw[8..].copy_from_slice(&self.mac(w));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `nonce` was issued by us (this key) in this window or the last.
    pub fn check(&self, nonce: &str, now_secs: i64, period: Duration) -> bool {
        use subtle::ConstantTimeEq;
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        if raw.len() != 8 + MAC_BYTES {
            return false;
        }
        let mut wb = [0u8; 8];
        wb.copy_from_slice(&raw[..8]);
        let w = u64::from_be_bytes(wb);
        let now = Self::window(now_secs, period);
        (w == now || w.checked_add(1) == Some(now)) && bool::from(raw[8..].ct_eq(&self.mac(w)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_lives_its_window_and_the_next_and_only_with_its_key() {
        let p = Duration::from_secs(60);
        let n = Nonces::random();
        let t = 1_800_000_000;
        let nonce = n.issue(t, p);
        assert!(n.check(&nonce, t, p));
        assert!(n.check(&nonce, t + 60, p));
        assert!(!n.check(&nonce, t + 120, p));
        assert!(!n.check(&nonce, t - 60, p), "not before it was issued");
        assert!(!Nonces::random().check(&nonce, t, p), "another key");
        assert!(Nonces::with_key([7; 32]).check(&Nonces::with_key([7; 32]).issue(t, p), t, p));
        let mut forged = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        forged[7] ^= 1;
        assert!(!n.check(&URL_SAFE_NO_PAD.encode(&forged), t, p));
        assert!(!n.check("", t, p));
        assert!(!n.check("not base64!", t, p));
    }
}
