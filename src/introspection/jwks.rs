//! The issuer's signing keys (JWKS, RFC 7517), for JWT access tokens
//! (`introspection::jwt`) and signed introspection answers (RFC 9701).
//!
//! - Fetched from `jwt.jwks_url`, else from the `jwks_uri` of the issuer's
//!   metadata (discovery), on first use or by the background refresh
//!   ([`Jwks::refresh_loop`], every `jwt.jwks_refresh_interval`).
//! - A `kid` we do not hold triggers one refetch, at most once per
//!   `jwt.jwks_refetch_min_interval` (on the injected clock): a key rotation
//!   is picked up without a restart, and garbage `kid`s cannot make us hammer
//!   the AS. Concurrent refetches are coalesced.
//! - A failed fetch keeps the keys in hand: tokens signed with them keep
//!   working while the JWKS endpoint is down. Only a key we cannot know about
//!   (none fetched yet, or an unknown `kid` while the last fetch failed) is
//!   [`KeyError::Unavailable`] (503, never 401).
//! - Only signature keys the verifier can use are kept: `use` absent or
//!   `sig`; RSA, EC P-256/P-384, OKP Ed25519. Symmetric (`oct`) keys are
//!   dropped, so no HS* token can ever find a key.

use crate::resilience::clock::Clock;
use arc_swap::ArcSwap;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::Algorithm;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Largest JWKS document we read. Real ones hold a few keys (a few KiB).
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `jwt.jwks_url`.
    Url(url::Url),
    /// The `jwks_uri` of this issuer's metadata (looked up on each fetch, so
    /// an AS that moves its JWKS is followed).
    Issuer(String),
}

/// Why no key could be found for a JWS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The JWKS (after a refetch, or within the refetch interval after a
    /// successful one) has no usable key for this `kid` / algorithm: the
    /// token is not acceptable (401).
    #[error("no signing key of the issuer matches the token's kid and alg")]
    Unknown,
    /// We cannot know: no key set was ever fetched, or the key is unknown and
    /// the last fetch failed (503).
    #[error("the issuer's signing keys (JWKS) are unavailable: {0}")]
    Unavailable(String),
}

/// One usable verification key.
pub struct Key {
    kid: Option<String>,
    /// The JWK's `alg`, when it names one: the key then verifies only that.
    alg: Option<Algorithm>,
    /// The algorithms this key's type can verify (family and curve).
    fits: &'static [Algorithm],
    /// The public key parsed once, per algorithm it may verify (an RSA key
    /// serves six). jsonwebtoken's `DecodingKey` keeps the raw bytes and
    /// parses them again on every verification (`UnparsedPublicKey`): for an
    /// RSA key that is a modulus to load, for a P-256 key a point to
    /// decompress and check, each time. Parsed here, at fetch time, a
    /// verification is the signature arithmetic alone.
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Whether this key may verify a JWS with `alg` (no algorithm confusion:
    /// an RSA key never verifies an ES or HS signature, a P-384 key never ES256).
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.fits.contains(&alg) && self.alg.is_none_or(|a| a == alg)
    }

    /// Whether `signature` (the JWS's, base64url-decoded) signs `message`
    /// (the JWS signing input) under `alg` with this key. `false` for an
    /// algorithm this key does not accept.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.accepts(alg)
            && self
                .parsed
                .iter()
                .find(|(a, _)| *a == alg)
                .is_some_and(|(_, k)| k.verify_sig(message, signature).is_ok())
    }

    fn from_jwk(jwk: &Jwk) -> Option<Self> {
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            return None;
        }
        // RFC 7517 §4.3: `key_ops`, when given, must allow "verify"; a key
        // meant only to encrypt, wrap or derive verifies nothing.
        if matches!(&jwk.common.key_operations, Some(ops) if !ops.contains(&KeyOperations::Verify))
        {
            return None;
        }
        let fits: &'static [Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => &[Algorithm::ES256],
                EllipticCurve::P384 => &[Algorithm::ES384],
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
                _ => return None,
            },
            // Symmetric keys have no place in a public JWKS: never HS*.
            AlgorithmParameters::OctetKey(_) => return None,
            _ => return None,
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(key_algorithm(a)?),
        };
        let parsed = parse_public(&jwk.algorithm, fits)?;
        Some(Self {
            kid: jwk.common.key_id.clone(),
            alg,
            fits,
            parsed,
        })
    }
}

/// The JWK's public key, parsed by aws-lc-rs once for each of `fits` (the
/// same verification algorithms jsonwebtoken's aws-lc-rs backend uses).
/// `None` for a malformed key (bad base64, a point not on the curve, a
/// coordinate of the wrong length, an RSA key aws-lc-rs refuses). An RSA
/// key shorter than 2048 bits parses, but aws-lc-rs refuses it on every
/// verification (the 2048-8192-bit range is checked per call): fail closed.
fn parse_public(
    params: &AlgorithmParameters,
    fits: &[Algorithm],
) -> Option<Vec<(Algorithm, ParsedPublicKey)>> {
    let b64 = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .ok()
    };
    let mut out = Vec::with_capacity(fits.len());
    for &alg in fits {
        let key = match (params, alg) {
            (AlgorithmParameters::RSA(p), _) => {
                let (n, e) = (b64(&p.n)?, b64(&p.e)?);
                let v: &'static sig::RsaParameters = match alg {
                    Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
                    Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
                    _ => return None,
                };
                RsaPublicKeyComponents { n: &n, e: &e }
                    .to_parsed_public_key(v)
                    .ok()?
            }
            (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256 | Algorithm::ES384) => {
                let (v, len): (&'static sig::EcdsaVerificationAlgorithm, usize) =
                    if alg == Algorithm::ES256 {
                        (&sig::ECDSA_P256_SHA256_FIXED, 32)
                    } else {
                        (&sig::ECDSA_P384_SHA384_FIXED, 48)
                    };
                let (x, y) = (b64(&p.x)?, b64(&p.y)?);
                if x.len() != len || y.len() != len {
                    return None;
                }
                // SEC 1 uncompressed point: 0x04 ‖ x ‖ y.
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                ParsedPublicKey::new(v, point).ok()?
            }
            (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
                ParsedPublicKey::new(&sig::ED25519, b64(&p.x)?).ok()?
            }
            _ => return None,
        };
        out.push((alg, key));
    }
    Some(out)
}

/// A JWK `alg` as a JWS algorithm; `None` for one no JWS can use (e.g. an
/// encryption algorithm): such a key is skipped.
fn key_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Parses a JWKS document into the usable keys. A key we cannot use (an
/// encryption key, an unknown type, a malformed member) is skipped, not a
/// reason to refuse the others.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Arc<Key>>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body)
        .map_err(|_| "not a JWKS document (an object with a `keys` array)".to_owned())?;
    Ok(doc
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        .filter_map(|jwk| Key::from_jwk(&jwk))
        .map(Arc::new)
        .collect())
}

/// When the keys were last fetched, and how that went.
#[derive(Debug, Clone, Default)]
struct FetchState {
    last_attempt: Option<SystemTime>,
    /// The last attempt's error; `None` after a success.
    last_error: Option<String>,
    ever_succeeded: bool,
}

type HttpClient = hyper_util::client::legacy::Client<crate::http::client::Connector, Empty<Bytes>>;

/// The key store of one issuer. Cheap to read on every verification (an
/// `ArcSwap` load); fetches are serialised.
pub struct Jwks {
    source: JwksSource,
    keys: ArcSwap<Vec<Arc<Key>>>,
    state: Mutex<FetchState>,
    /// Serialises fetches: concurrent unknown `kid`s share one.
    fetching: tokio::sync::Mutex<()>,
    min_refetch: Duration,
    clock: Arc<dyn Clock>,
    http: HttpClient,
    tls: crate::http::tls::ClientTls,
    timeout: Duration,
    /// Fetch attempts (for metrics and tests).
    fetches: AtomicU64,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.source)
            .field("keys", &self.keys.load().len())
            .finish()
    }
}

impl Jwks {
    pub fn new(
        source: JwksSource,
        min_refetch: Duration,
        timeout: Duration,
        tls: &crate::http::tls::ClientTls,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            source,
            keys: ArcSwap::from_pointee(Vec::new()),
            state: Mutex::new(FetchState::default()),
            fetching: tokio::sync::Mutex::new(()),
            min_refetch,
            clock,
            http: crate::http::client::build_with(timeout, tls),
            tls: tls.clone(),
            timeout,
            fetches: AtomicU64::new(0),
        }
    }

    /// How many times the JWKS was fetched (or a fetch was tried).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Keys held now.
    pub fn key_count(&self) -> usize {
        self.keys.load().len()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        // A poisoned lock only means a panic while copying a few fields.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key for a JWS with this `kid` and `alg`. Without a `kid`, the one
    /// key that accepts `alg` (two candidates: none is chosen). A miss
    /// refetches the JWKS once (rate-limited) and looks again.
    pub async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<Key>, KeyError> {
        if let Some(k) = self.find(kid, alg) {
            return Ok(k);
        }
        let seen = self.fetch_count();
        let _guard = self.fetching.lock().await;
        // Someone else fetched while we waited: look again before fetching.
        if self.fetch_count() == seen {
            // Failed fetches count too: while the endpoint is down, tokens
            // with keys we do not hold must not turn into one fetch each.
            let due = self.state().last_attempt.is_none_or(|t| {
                self.clock
                    .now()
                    .duration_since(t)
                    .is_ok_and(|d| d >= self.min_refetch)
            });
            if due {
                let _ = self.fetch_now().await;
            }
        }
        if let Some(k) = self.find(kid, alg) {
            return Ok(k);
        }
        let s = self.state();
        match (&s.last_error, s.ever_succeeded) {
            (Some(e), _) => Err(KeyError::Unavailable(e.clone())),
            (None, true) => Err(KeyError::Unknown),
            (None, false) => Err(KeyError::Unavailable("no key set fetched yet".into())),
        }
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<Key>> {
        let keys = self.keys.load();
        match kid {
            Some(kid) => keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid) && k.accepts(alg))
                .cloned(),
            None => {
                let mut fitting = keys.iter().filter(|k| k.accepts(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Some(k.clone()),
                    _ => None,
                }
            }
        }
    }

    /// Fetches the key set now (start-up, background refresh, a miss). On
    /// failure the keys in hand stay.
    pub async fn refresh(&self) -> Result<usize, String> {
        let _guard = self.fetching.lock().await;
        self.fetch_now().await
    }

    /// The fetch itself; the caller holds `fetching`.
    async fn fetch_now(&self) -> Result<usize, String> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.download().await;
        let mut s = self.state();
        s.last_attempt = Some(self.clock.now());
        match result {
            Ok(keys) => {
                let n = keys.len();
                self.keys.store(Arc::new(keys));
                s.last_error = None;
                s.ever_succeeded = true;
                Ok(n)
            }
            Err(e) => {
                tracing::warn!(error = %e, keys_kept = self.keys.load().len(), "cannot fetch the issuer's JWKS; keeping the keys in hand");
                s.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn download(&self) -> Result<Vec<Arc<Key>>, String> {
        let url = match &self.source {
            JwksSource::Url(u) => u.clone(),
            JwksSource::Issuer(issuer) => {
                crate::introspection::discovery::discover_jwks_uri(issuer, self.timeout, &self.tls)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        // `[tracing]`: a fetch made for a request (an unknown `kid`) is a
        // child of it and carries its `traceparent`; background refreshes are not traced.
        let span = crate::http::trace::child(crate::http::trace::Call::Jwks);
        let mut req = http::Request::get(url.as_str())
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        if let Some(span) = &span {
            crate::http::trace::inject_span(span, req.headers_mut());
        }
        let call = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| format!("{url}: {}", crate::http::client::error_chain(&e)))?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!("{url}: HTTP {}", resp.status().as_u16()));
            }
            let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("{url}: {e}"))?
                .to_bytes();
            parse_jwks(&body).map_err(|e| format!("{url}: {e}"))
        };
        let fetched =
            crate::http::trace::within(span.as_ref(), tokio::time::timeout(self.timeout, call))
                .await
                .map_err(|_| format!("{url}: timed out after {:?}", self.timeout))
                .and_then(|r| r);
        crate::http::trace::record_outcome(
            span.as_ref(),
            fetched.is_ok().then_some(200),
            fetched.is_err().then_some("fetch_failed"),
        );
        fetched
    }

    /// Background refresh every `interval` (the first fetch happens at once).
    /// Failures are logged by the fetch; the keys in hand stay.
    pub async fn refresh_loop(self: Arc<Self>, interval: Duration) {
        loop {
            if let Ok(n) = self.refresh().await {
                tracing::debug!(keys = n, "JWKS refreshed");
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Puts keys in directly (tests, benches).
    pub fn set_keys(&self, keys: Vec<Arc<Key>>) {
        self.keys.store(Arc::new(keys));
        let mut s = self.state();
        s.ever_succeeded = true;
        s.last_error = None;
        s.last_attempt = Some(self.clock.now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::clock::ManualClock;

    const EC_JWKS: &str = r#"{"keys":[
        {"kty":"EC","crv":"P-256","kid":"ec1","use":"sig","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty":"oct","kid":"hmac","k":"c2VjcmV0"},
        {"kty":"RSA","kid":"enc","use":"enc","n":"sXch","e":"AQAB"},
        {"kty":"EC","crv":"P-256","kid":"bad","x":"!!","y":"??"},
        {"kty":"weird"}
    ]}"#;

    #[test]
    fn only_usable_signature_keys_are_kept() {
        let keys = parse_jwks(EC_JWKS.as_bytes()).unwrap();
        assert_eq!(
            keys.len(),
            1,
            "oct, enc, malformed and unknown keys are skipped"
        );
        assert!(keys[0].accepts(Algorithm::ES256));
        assert!(
            !keys[0].accepts(Algorithm::ES384),
            "a P-256 key never verifies ES384"
        );
        assert!(!keys[0].accepts(Algorithm::RS256));
        assert!(!keys[0].accepts(Algorithm::HS256));
        assert!(parse_jwks(b"[]").is_err());
    }

    /// RFC 7517 §4.3: a key whose `key_ops` are given but do not include
    /// "verify" (an encryption or key-wrapping key that has no `use`) is not
    /// a signature key, whatever its type: never used to verify a JWS.
    #[test]
    fn a_key_whose_key_ops_exclude_verify_is_skipped() {
        let x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
        let y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
        let key = |ops: &str| {
            format!(
                r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k","x":"{x}","y":"{y}"{ops}}}]}}"#
            )
        };
        for ops in [
            r#","key_ops":["encrypt"]"#,
            r#","key_ops":["deriveKey","deriveBits"]"#,
            r#","key_ops":["sign"]"#,
            r#","key_ops":[]"#,
        ] {
            let keys = parse_jwks(key(ops).as_bytes()).unwrap();
            assert!(keys.is_empty(), "{ops}");
        }
        for ops in [
            "",
            r#","key_ops":["verify"]"#,
            r#","key_ops":["sign","verify"]"#,
        ] {
            let keys = parse_jwks(key(ops).as_bytes()).unwrap();
            assert_eq!(keys.len(), 1, "{ops}");
        }
    }

    /// An RSA key under 2048 bits verifies nothing, not even a genuine
    /// RS256 signature of its own (aws-lc-rs checks the size per
    /// verification with the parsed key, as with the unparsed one).
    #[test]
    fn a_short_rsa_key_verifies_nothing() {
        let n = "5-ooWXkfZSP_QouKbme85vsSYaE3eIM2Q95syYJqXnyJUFboo8RSqxhXIfVMdPHhsUirzpU_m9SuKB4dD6xXPz5mx6QiKlK3CIu76EkxX1TuzzoOP38JIhUEFEoSEDfhIiNixP7W8bdQ49p2zDjpc9ZsnAs9R-loh8XH_9kSVRs";
        // `openssl dgst -sha256 -sign` (RSASSA-PKCS1-v1_5) of the message, with
        // the 1024-bit private key of `n`.
        let sig = "3pvB2w1Z-cRZY-_auG6SCksOF8tyshYDb8dSqO3ii62LGllX5FDwBaSnWWPmbB09e4enO8pPyUgcKNgaRX_t_EHlzeZg1yNLPQXsCMqVFhfjzL2-Bqj9Bxh6x4yGpLY1K2LRGI059hjuyzDxJQTXq6lp2VZQorx17Pn3WjYPhTA";
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        // The signature is genuine: a verifier that allows 1024 bits takes it.
        let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(n)
            .unwrap();
        let legacy = sig::RsaPublicKeyComponents {
            n: modulus.as_slice(),
            e: &[1u8, 0, 1][..],
        };
        assert!(legacy
            .verify(
                &sig::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                b"header.payload",
                &sig
            )
            .is_ok());
        let doc = format!(r#"{{"keys":[{{"kty":"RSA","kid":"short","n":"{n}","e":"AQAB"}}]}}"#);
        for key in parse_jwks(doc.as_bytes()).unwrap() {
            assert!(!key.verify(Algorithm::RS256, b"header.payload", &sig));
        }
    }

    /// Each key type is parsed once into the verifier of every algorithm it
    /// fits (an RSA key: six), and verifies exactly those signatures.
    #[test]
    fn parsed_keys_verify_their_own_algorithms_only() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _, RsaKeyPair};
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let msg = b"header.payload";
        let ed = Ed25519KeyPair::generate().unwrap();
        let doc = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"{}"}}]}}"#,
            b64(ed.public_key().as_ref())
        );
        let keys = parse_jwks(doc.as_bytes()).unwrap();
        let sig = ed.sign(msg);
        assert!(keys[0].verify(Algorithm::EdDSA, msg, sig.as_ref()));
        assert!(!keys[0].verify(Algorithm::EdDSA, b"header.other", sig.as_ref()));
        assert!(!keys[0].verify(Algorithm::ES256, msg, sig.as_ref()));

        let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let c = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(rsa.public_key());
        let doc = format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"rs","n":"{}","e":"{}"}}]}}"#,
            b64(&c.n),
            b64(&c.e)
        );
        let keys = parse_jwks(doc.as_bytes()).unwrap();
        let rng = SystemRandom::new();
        let mut sig = vec![0; rsa.public_modulus_len()];
        use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256};
        rsa.sign(&RSA_PSS_SHA256, &rng, msg, &mut sig).unwrap();
        assert!(keys[0].verify(Algorithm::PS256, msg, &sig));
        assert!(!keys[0].verify(Algorithm::RS256, msg, &sig));
        rsa.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut sig).unwrap();
        assert!(keys[0].verify(Algorithm::RS256, msg, &sig));
        assert!(!keys[0].verify(Algorithm::RS384, msg, &sig));
        assert!(!keys[0].verify(Algorithm::ES256, msg, &sig));
    }

    #[tokio::test]
    async fn unknown_kid_refetches_at_most_once_per_interval() {
        let clock = Arc::new(ManualClock::default());
        // Nothing listens on port 9 of localhost: every fetch fails fast.
        let jwks = Jwks::new(
            JwksSource::Url(url::Url::parse("http://127.0.0.1:9/jwks").unwrap()),
            Duration::from_secs(10),
            Duration::from_secs(1),
            &crate::http::tls::ClientTls::new(&[], None).unwrap(),
            clock.clone(),
        );
        jwks.set_keys(parse_jwks(EC_JWKS.as_bytes()).unwrap());
        assert!(jwks.key_for(Some("ec1"), Algorithm::ES256).await.is_ok());
        assert_eq!(jwks.fetch_count(), 0, "a known kid needs no fetch");
        // Within the interval after the last (successful) fetch: no refetch, 401.
        for _ in 0..5 {
            assert_eq!(
                jwks.key_for(Some("garbage"), Algorithm::ES256).await.err(),
                Some(KeyError::Unknown)
            );
        }
        assert_eq!(jwks.fetch_count(), 0);
        clock.advance(Duration::from_secs(11));
        // Due: one refetch, which fails: unknown and unknowable → 503.
        let e = jwks.key_for(Some("garbage"), Algorithm::ES256).await.err();
        assert!(matches!(e, Some(KeyError::Unavailable(_))), "{e:?}");
        assert_eq!(jwks.fetch_count(), 1);
        let _ = jwks.key_for(Some("garbage2"), Algorithm::ES256).await;
        assert_eq!(jwks.fetch_count(), 1, "rate-limited after a failure too");
        // The keys in hand keep working while the endpoint is down.
        assert!(jwks.key_for(Some("ec1"), Algorithm::ES256).await.is_ok());
        // The right kid with the wrong algorithm finds nothing.
        assert!(jwks.key_for(Some("ec1"), Algorithm::RS256).await.is_err());
    }
}
