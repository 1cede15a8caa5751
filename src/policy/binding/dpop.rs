//! DPoP proof verification (RFC 9449 §4.3), pure: a proof, the request it
//! came with and the settings in, a [`VerifiedProof`] or the one reason for
//! refusing it out. The replay check (which needs the cache, and Redis) and
//! the comparison with the token's `cnf.jkt` are the stage's
//! ([`super::Binder::check`]); the nonce format is [`super::nonce`].
//!
//! Checked, in this order (the first failure is the answer):
//! one `DPoP` header; a compact JWS no longer than [`MAX_PROOF_BYTES`];
//! header `typ` = `dpop+jwt`; `alg` one of `dpop.algorithms` (asymmetric only,
//! so never `none` or HS*); no `crit`; `jwk` a public key (no private or
//! symmetric members) of the kind `alg` needs; the signature, with that key;
//! `htm` = the request method; `htu` = the request URI without query and
//! fragment; `iat` within `max_age` (+ [`SKEW`]) of now and at most [`SKEW`]
//! ahead; a `jti`; `ath` = base64url(SHA-256(access token)).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderName;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The request header that carries the proof.
pub static DPOP: HeaderName = HeaderName::from_static("dpop");
/// The response header that carries a server nonce (RFC 9449 §8).
pub static DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// Clock skew allowed on `iat`, either way: clients' clocks are not ours.
pub const SKEW: Duration = Duration::from_secs(5);
/// Longest proof accepted. An RSA-4096 `jwk` and signature make about 1.6 KiB;
/// the bound keeps a client from making us parse megabytes.
pub const MAX_PROOF_BYTES: usize = 8192;
/// Longest `jti` accepted (it is hashed into the replay cache's key).
const MAX_JTI_BYTES: usize = 256;
/// JWK members that only a private or symmetric key has (RFC 7518 §6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// `[dpop]`, validated. Read per request, so a reload applies at once (except
/// `replay_cache_entries`, which sizes the cache at start-up).
#[derive(Debug, Clone)]
pub struct DpopSettings {
    pub enabled: bool,
    pub algorithms: Vec<Algorithm>,
    pub max_age: Duration,
    pub require_nonce: bool,
    pub forward_proof: bool,
    pub replay_cache_entries: u64,
    /// The challenge's `algs="…"` value, built once.
    pub challenge_algs: Arc<str>,
}

impl DpopSettings {
    pub fn new(
        enabled: bool,
        algorithms: Vec<Algorithm>,
        max_age: Duration,
        require_nonce: bool,
        forward_proof: bool,
        replay_cache_entries: u64,
    ) -> Self {
        let challenge_algs: Vec<&str> = algorithms.iter().map(|a| alg_name(*a)).collect();
        Self {
            enabled,
            challenge_algs: challenge_algs.join(" ").into(),
            algorithms,
            max_age,
            require_nonce,
            forward_proof,
            replay_cache_entries,
        }
    }
}

impl Default for DpopSettings {
    fn default() -> Self {
        Self::new(
            true,
            vec![
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::PS256,
                Algorithm::RS256,
                Algorithm::EdDSA,
            ],
            Duration::from_secs(60),
            false,
            false,
            100_000,
        )
    }
}

/// An asymmetric JWS algorithm by its JOSE name; `None` for anything else
/// (`none`, HS*, unknown or misspelt names: the names are case-sensitive).
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The JOSE name of an algorithm (for the challenge's `algs`).
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        // `Algorithm` is non-exhaustive; a new one is never in our list
        // (parse_algorithm does not know it).
        _ => "unknown",
    }
}

/// Why a proof was refused; each is a 401 `invalid_dpop_proof`.
/// [`ProofError::reason`] is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the request has no DPoP proof header")]
    Missing,
    #[error("the request has more than one DPoP header")]
    Multiple,
    #[error("the DPoP proof is not a well-formed compact JWS")]
    Malformed,
    #[error("the DPoP proof's typ is not dpop+jwt")]
    Type,
    #[error("the DPoP proof's alg is not accepted here")]
    Algorithm,
    #[error("the DPoP proof's jwk is missing, not a public key, or does not fit its alg")]
    Key,
    #[error("the DPoP proof's signature does not verify")]
    Signature,
    #[error("the DPoP proof's htm is not the request method")]
    Method,
    #[error("the DPoP proof's htu is not the request URI")]
    Uri,
    #[error("the DPoP proof's iat is too old or in the future")]
    IssuedAt,
    #[error("the DPoP proof has no usable jti")]
    Jti,
    #[error("the DPoP proof's ath is not the hash of the access token")]
    TokenHash,
    #[error("the DPoP proof is signed with another key than the token is bound to")]
    KeyMismatch,
    #[error("the DPoP proof has been used before")]
    Replayed,
}

impl ProofError {
    /// The `reason` label of `tokengate_dpop_proofs_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Multiple => "multiple",
            Self::Malformed => "malformed",
            Self::Type => "typ",
            Self::Algorithm => "alg",
            Self::Key => "jwk",
            Self::Signature => "signature",
            Self::Method => "htm",
            Self::Uri => "htu",
            Self::IssuedAt => "iat",
            Self::Jti => "jti",
            Self::TokenHash => "ath",
            Self::KeyMismatch => "key_mismatch",
            Self::Replayed => "replay",
        }
    }
}

/// The request URI as the client addressed it: scheme, host (with a port
/// when not the default) and path. See [`super::request_uri`] for where the
/// scheme and host come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestUri<'a> {
    pub scheme: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
}

/// What a proof is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ProofContext<'a> {
    pub method: &'a str,
    pub uri: RequestUri<'a>,
    /// The access token the request carries (`ath`).
    pub token: &'a str,
    pub now: SystemTime,
}

/// A proof that passed every check of its own.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// RFC 7638 SHA-256 thumbprint of the proof's key, base64url.
    pub jkt: String,
    /// SHA-256(jkt ‖ 0 ‖ jti): the replay cache's key. With the thumbprint in
    /// it, one client cannot burn another's `jti` values.
    pub replay_id: [u8; 32],
    /// How much longer the proof would be accepted: its replay record must
    /// live at least this long.
    pub remaining: Duration,
    /// The `nonce` claim, if any.
    pub nonce: Option<String>,
}

impl std::fmt::Debug for VerifiedProof {
    // The thumbprint is public, but the nonce and jti are the client's: keep
    // Debug to what a log line may show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedProof")
            .field("jkt", &self.jkt)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Claims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<serde_json::Number>,
    ath: Option<String>,
    nonce: Option<String>,
}

/// base64url(SHA-256(token)), the `ath` a proof for `token` carries.
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// Checks one proof against its request (see the module docs for the list).
pub fn verify(
    proof: &str,
    ctx: &ProofContext<'_>,
    settings: &DpopSettings,
) -> Result<VerifiedProof, ProofError> {
    if proof.is_empty() || proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::Malformed);
    }
    let mut parts = proof.split('.');
    let (Some(h64), Some(p64), Some(sig64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(h64)
        .map_err(|_| ProofError::Malformed)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header_json).map_err(|_| ProofError::Malformed)?;

    let typ = header.get("typ").and_then(|v| v.as_str());
    // A media type compares without case (RFC 2045 §5.1).
    if !typ.is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt")) {
        return Err(ProofError::Type);
    }
    let alg = header
        .get("alg")
        .and_then(|v| v.as_str())
        .and_then(parse_algorithm)
        .filter(|a| settings.algorithms.contains(a))
        .ok_or(ProofError::Algorithm)?;
    // We understand no extension, so one marked critical is refused (RFC 7515 §4.1.11).
    if header.contains_key("crit") {
        return Err(ProofError::Malformed);
    }
    let jwk_json = header
        .get("jwk")
        .and_then(|v| v.as_object())
        .ok_or(ProofError::Key)?;
    // The crate would happily parse a private key and use its public half:
    // RFC 9449 §4.3 says the proof must carry no private key, so look at the
    // raw members.
    if PRIVATE_MEMBERS.iter().any(|m| jwk_json.contains_key(*m)) {
        return Err(ProofError::Key);
    }
    let jwk: Jwk = serde_json::from_value(serde_json::Value::Object(jwk_json.clone()))
        .map_err(|_| ProofError::Key)?;
    if !key_fits(alg, &jwk.algorithm) {
        return Err(ProofError::Key);
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| ProofError::Key)?;
    let signed = &proof[..h64.len() + 1 + p64.len()];
    match jsonwebtoken::crypto::verify(sig64, signed.as_bytes(), &key, alg) {
        Ok(true) => {}
        Ok(false) | Err(_) => return Err(ProofError::Signature),
    }

    let payload = URL_SAFE_NO_PAD
        .decode(p64)
        .map_err(|_| ProofError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| ProofError::Malformed)?;
    // Methods are case-sensitive (RFC 9110 §9.1).
    if claims.htm.as_deref() != Some(ctx.method) {
        return Err(ProofError::Method);
    }
    if !claims
        .htu
        .as_deref()
        .is_some_and(|htu| htu_matches(htu, &ctx.uri))
    {
        return Err(ProofError::Uri);
    }
    let remaining = iat_window(claims.iat.as_ref(), ctx.now, settings.max_age)?;
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_BYTES)
        .ok_or(ProofError::Jti)?;
    let ath_ok = claims.ath.is_some_and(|ath| {
        // Not a secret comparison, but a constant-time one costs nothing.
        use subtle::ConstantTimeEq;
        bool::from(ath.as_bytes().ct_eq(token_hash(ctx.token).as_bytes()))
    });
    if !ath_ok {
        return Err(ProofError::TokenHash);
    }
    let jkt = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| ProofError::Key)?;
    let mut h = Sha256::new();
    h.update(jkt.as_bytes());
    h.update([0u8]);
    h.update(jti.as_bytes());
    Ok(VerifiedProof {
        jkt,
        replay_id: h.finalize().into(),
        remaining,
        nonce: claims.nonce,
    })
}

/// Whether the key is of the kind `alg` signs with (an ES256 proof with an
/// RSA key is refused before any crypto runs).
fn key_fits(alg: Algorithm, key: &AlgorithmParameters) -> bool {
    match (alg, key) {
        (Algorithm::ES256, AlgorithmParameters::EllipticCurve(p)) => p.curve == EllipticCurve::P256,
        (Algorithm::ES384, AlgorithmParameters::EllipticCurve(p)) => p.curve == EllipticCurve::P384,
        (
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
            AlgorithmParameters::RSA(_),
        ) => true,
        (Algorithm::EdDSA, AlgorithmParameters::OctetKeyPair(p)) => {
            p.curve == EllipticCurve::Ed25519
        }
        _ => false,
    }
}

/// `htu` against the request URI, both through the same URL parser so that
/// RFC 3986 §6.2.2/§6.2.3 normalisation (case of scheme and host, default
/// port, dot segments) does not make equal URIs differ. Query and fragment
/// are ignored (RFC 9449 §4.3).
fn htu_matches(htu: &str, uri: &RequestUri<'_>) -> bool {
    let Some(host) = uri.host else {
        // No Host at all (HTTP/1.0): nothing the client could have signed.
        return false;
    };
    let Ok(expected) = url::Url::parse(&format!("{}://{}{}", uri.scheme, host, uri.path)) else {
        return false;
    };
    // Our side must be exactly scheme://host/path: a host with `@`, `?` or
    // `#` in it (a forwarded header) would move the real host into userinfo
    // or cut the path off, and let a proof for another URI match.
    if !expected.username().is_empty()
        || expected.password().is_some()
        || expected.query().is_some()
        || expected.fragment().is_some()
    {
        return false;
    }
    let Ok(got) = url::Url::parse(htu) else {
        return false;
    };
    got.scheme() == expected.scheme()
        && got.username().is_empty()
        && got.password().is_none()
        && got.host_str() == expected.host_str()
        && got.port_or_known_default() == expected.port_or_known_default()
        && got.path() == expected.path()
}

/// `iat` within [now − max_age − SKEW, now + SKEW]; the time left in that
/// window (at least SKEW, so a replay record outlives a clock that lags).
fn iat_window(
    iat: Option<&serde_json::Number>,
    now: SystemTime,
    max_age: Duration,
) -> Result<Duration, ProofError> {
    let iat = iat
        .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f.floor() as i64)))
        .ok_or(ProofError::IssuedAt)?;
    let iat = u64::try_from(iat).map_err(|_| ProofError::IssuedAt)?;
    let issued = UNIX_EPOCH
        .checked_add(Duration::from_secs(iat))
        .ok_or(ProofError::IssuedAt)?;
    // Checked: an `iat` near the end of time must be a refusal, not a panic.
    let until = issued
        .checked_add(max_age + SKEW)
        .ok_or(ProofError::IssuedAt)?;
    if issued > now + SKEW || until <= now {
        return Err(ProofError::IssuedAt);
    }
    Ok(until.duration_since(now).unwrap_or(SKEW).max(SKEW))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    /// A P-256 key from rcgen, as a signing key and its public JWK.
    pub(crate) struct TestKey {
        pub enc: EncodingKey,
        pub jwk: serde_json::Value,
        pub jkt: String,
    }

    pub(crate) fn es256_key() -> TestKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let enc = EncodingKey::from_ec_der(&kp.serialize_der());
        let jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
        let jkt = jwk.thumbprint(ThumbprintHash::SHA256).unwrap();
        let mut v = serde_json::to_value(&jwk).unwrap();
        // Only the key members: the crate adds `alg`/`use`, which a JWK may carry.
        v.as_object_mut()
            .unwrap()
            .retain(|k, _| ["kty", "crv", "x", "y"].contains(&k.as_str()));
        TestKey { enc, jwk: v, jkt }
    }

    pub(crate) fn sign(
        key: &TestKey,
        header: serde_json::Value,
        claims: serde_json::Value,
    ) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        let msg = format!("{h}.{p}");
        // Always signed with the key's own algorithm, whatever the header claims.
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key.enc, Algorithm::ES256).unwrap();
        format!("{msg}.{sig}")
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    const TOKEN: &str = "tok-123";

    fn ctx() -> ProofContext<'static> {
        ProofContext {
            method: "GET",
            uri: RequestUri {
                scheme: "https",
                host: Some("api.example.com"),
                path: "/v1/things",
            },
            token: TOKEN,
            now: now(),
        }
    }

    fn header(key: &TestKey) -> serde_json::Value {
        json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk})
    }

    fn claims() -> serde_json::Value {
        json!({
            "jti": "j-1",
            "htm": "GET",
            "htu": "https://api.example.com/v1/things",
            "iat": 1_800_000_000u64,
            "ath": token_hash(TOKEN),
        })
    }

    fn check(proof: &str) -> Result<VerifiedProof, ProofError> {
        verify(proof, &ctx(), &DpopSettings::default())
    }

    #[test]
    fn a_good_proof_passes_and_names_its_key() {
        let k = es256_key();
        let v = check(&sign(&k, header(&k), claims())).unwrap();
        assert_eq!(v.jkt, k.jkt);
        assert_eq!(v.remaining, Duration::from_secs(65));
        // Equal URIs spelt differently: case, default port, query, fragment.
        let mut c = claims();
        c["htu"] = json!("HTTPS://API.example.com:443/v1/things?x=1#f");
        check(&sign(&k, header(&k), c)).unwrap();
        let mut c = claims();
        c["iat"] = json!(1_799_999_990.5);
        check(&sign(&k, header(&k), c)).unwrap();
    }

    #[test]
    fn each_check_refuses_with_its_reason() {
        let k = es256_key();
        let other = es256_key();
        let good = sign(&k, header(&k), claims());
        let with_claim = |name: &str, v: serde_json::Value| {
            let mut c = claims();
            c[name] = v;
            sign(&k, header(&k), c)
        };
        let without_claim = |name: &str| {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(name);
            sign(&k, header(&k), c)
        };
        let with_header = |name: &str, v: serde_json::Value| {
            let mut h = header(&k);
            h[name] = v;
            sign(&k, h, claims())
        };
        let mut private = k.jwk.clone();
        private["d"] = json!("AAAA");
        let mut tampered = good.clone();
        tampered.pop();
        tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
        let (h, rest) = good.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let mut forged_claims = claims();
        forged_claims["htm"] = json!("POST");
        let swapped = format!(
            "{h}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(forged_claims.to_string())
        );
        let cases: Vec<(String, ProofError)> = vec![
            (String::new(), ProofError::Malformed),
            ("a.b".into(), ProofError::Malformed),
            (format!("{good}.x"), ProofError::Malformed),
            ("x".repeat(MAX_PROOF_BYTES + 1), ProofError::Malformed),
            (with_header("typ", json!("JWT")), ProofError::Type),
            (
                sign(&k, json!({"alg": "ES256", "jwk": k.jwk}), claims()),
                ProofError::Type,
            ),
            (with_header("alg", json!("none")), ProofError::Algorithm),
            (with_header("alg", json!("HS256")), ProofError::Algorithm),
            (with_header("alg", json!("ES512")), ProofError::Algorithm),
            (with_header("crit", json!(["exp"])), ProofError::Malformed),
            (with_header("jwk", json!(null)), ProofError::Key),
            (with_header("jwk", private), ProofError::Key),
            (
                with_header("jwk", json!({"kty": "oct", "k": "c2VjcmV0"})),
                ProofError::Key,
            ),
            (with_header("alg", json!("RS256")), ProofError::Key),
            (with_header("jwk", other.jwk.clone()), ProofError::Signature),
            (tampered, ProofError::Signature),
            (swapped, ProofError::Signature),
            (with_claim("htm", json!("POST")), ProofError::Method),
            (with_claim("htm", json!("get")), ProofError::Method),
            (without_claim("htm"), ProofError::Method),
            (
                with_claim("htu", json!("https://api.example.com/v1/other")),
                ProofError::Uri,
            ),
            (
                with_claim("htu", json!("http://api.example.com/v1/things")),
                ProofError::Uri,
            ),
            (
                with_claim("htu", json!("https://evil.example.com/v1/things")),
                ProofError::Uri,
            ),
            (
                with_claim("htu", json!("https://api.example.com:8443/v1/things")),
                ProofError::Uri,
            ),
            (
                with_claim("htu", json!("https://u@api.example.com/v1/things")),
                ProofError::Uri,
            ),
            (with_claim("htu", json!("/v1/things")), ProofError::Uri),
            (without_claim("htu"), ProofError::Uri),
            (
                with_claim("iat", json!(1_800_000_000u64 - 66)),
                ProofError::IssuedAt,
            ),
            (
                with_claim("iat", json!(1_800_000_000u64 + 6)),
                ProofError::IssuedAt,
            ),
            (
                with_claim("iat", json!("1800000000")),
                ProofError::Malformed,
            ),
            (with_claim("iat", json!(-1)), ProofError::IssuedAt),
            (with_claim("iat", json!(i64::MAX)), ProofError::IssuedAt),
            (with_claim("iat", json!(u64::MAX)), ProofError::IssuedAt),
            (with_claim("iat", json!(1e300)), ProofError::IssuedAt),
            (without_claim("iat"), ProofError::IssuedAt),
            (without_claim("jti"), ProofError::Jti),
            (with_claim("jti", json!("")), ProofError::Jti),
            (with_claim("jti", json!("j".repeat(300))), ProofError::Jti),
            (
                with_claim("ath", json!(token_hash("another"))),
                ProofError::TokenHash,
            ),
            (without_claim("ath"), ProofError::TokenHash),
        ];
        for (proof, want) in cases {
            let shown = &proof[..proof.len().min(60)];
            assert_eq!(check(&proof).map(|_| ()), Err(want), "{shown}");
        }
        // An algorithm the operator did not list is refused even when valid.
        let only_rs = DpopSettings::new(
            true,
            vec![Algorithm::RS256],
            Duration::from_secs(60),
            false,
            false,
            10,
        );
        assert_eq!(
            verify(&good, &ctx(), &only_rs).map(|_| ()),
            Err(ProofError::Algorithm)
        );
        // No Host: no URI to match.
        let mut c = ctx();
        c.uri.host = None;
        assert_eq!(
            verify(&good, &c, &DpopSettings::default()).map(|_| ()),
            Err(ProofError::Uri)
        );
    }

    #[test]
    fn the_replay_id_depends_on_key_and_jti() {
        let k = es256_key();
        let other = es256_key();
        let a = check(&sign(&k, header(&k), claims())).unwrap();
        let b = check(&sign(&other, header(&other), claims())).unwrap();
        let mut c = claims();
        c["jti"] = json!("j-2");
        let c = check(&sign(&k, header(&k), c)).unwrap();
        assert_ne!(a.replay_id, b.replay_id);
        assert_ne!(a.replay_id, c.replay_id);
        assert!(!format!("{a:?}").contains("j-1"));
    }

    #[test]
    fn algorithm_names_round_trip_and_symmetric_ones_are_refused() {
        for name in [
            "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
        ] {
            assert_eq!(alg_name(parse_algorithm(name).unwrap()), name);
        }
        for name in ["none", "HS256", "HS384", "HS512", "es256", "ES512", ""] {
            assert_eq!(parse_algorithm(name), None, "{name}");
        }
        assert_eq!(
            &*DpopSettings::default().challenge_algs,
            "ES256 ES384 PS256 RS256 EdDSA"
        );
    }
}
