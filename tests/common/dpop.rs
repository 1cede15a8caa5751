//! DPoP proofs signed in the test (RFC 9449 §4.2), with keys from rcgen.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};

/// A client's DPoP key: an ES256 (P-256) key pair.
pub struct DpopKey {
    enc: EncodingKey,
    /// The public JWK, as a proof's header carries it.
    pub jwk: Value,
    /// Its RFC 7638 thumbprint (what `cnf.jkt` holds).
    pub jkt: String,
}

/// The claims of one proof; [`DpopKey::proof`] signs them.
#[derive(Debug, Clone)]
pub struct ProofSpec {
    pub htm: String,
    pub htu: String,
    pub iat: i64,
    pub jti: String,
    /// The access token for `ath`; `None`: no `ath` (token requests).
    pub token: Option<String>,
    pub nonce: Option<String>,
}

static JTI: AtomicU64 = AtomicU64::new(0);

impl ProofSpec {
    /// A proof for `htm htu` issued at `iat`, for `token`, with a fresh jti.
    pub fn new(htm: &str, htu: &str, iat: i64, token: Option<&str>) -> Self {
        Self {
            htm: htm.into(),
            htu: htu.into(),
            iat,
            jti: format!(
                "jti-{}-{}",
                std::process::id(),
                JTI.fetch_add(1, Ordering::SeqCst)
            ),
            token: token.map(str::to_owned),
            nonce: None,
        }
    }
}

/// base64url(SHA-256(token)).
pub fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

impl DpopKey {
    pub fn generate() -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let enc = EncodingKey::from_ec_der(&kp.serialize_der());
        let jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
        let jkt = jwk.thumbprint(ThumbprintHash::SHA256).unwrap();
        let mut v = serde_json::to_value(&jwk).unwrap();
        v.as_object_mut()
            .unwrap()
            .retain(|k, _| ["kty", "crv", "x", "y"].contains(&k.as_str()));
        Self { enc, jwk: v, jkt }
    }

    /// Signs `claims` under `header` (ES256, whatever the header says).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &self.enc, Algorithm::ES256).unwrap();
        format!("{msg}.{sig}")
    }

    pub fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk})
    }

    pub fn claims(spec: &ProofSpec) -> Value {
        let mut c = json!({"jti": spec.jti, "htm": spec.htm, "htu": spec.htu, "iat": spec.iat});
        if let Some(t) = &spec.token {
            c["ath"] = json!(ath(t));
        }
        if let Some(n) = &spec.nonce {
            c["nonce"] = json!(n);
        }
        c
    }

    pub fn proof(&self, spec: &ProofSpec) -> String {
        self.sign(&self.header(), &Self::claims(spec))
    }
}
