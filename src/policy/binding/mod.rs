//! The binding stage: after the policy decision, on every request with a
//! token (cache hits included), is the token used by the sender it is bound
//! to? Reads the answer's `cnf` (`Answer::extra("cnf")`) and `token_type`,
//! the request's authorization scheme and `DPoP` header, and the client
//! certificate's SHA-256 (when there is one), and names how the token was
//! bound ([`Binding`]: `dpop`, `mtls`, `none`) or refuses it.
//!
//! Downgrade protection does not depend on `[dpop] enabled`:
//!
//! | answer                                  | request                        | result |
//! |-----------------------------------------|--------------------------------|--------|
//! | `cnf.jkt`, or `token_type` `DPoP`       | `DPoP` scheme, valid proof by that key | `dpop` |
//! | same                                    | Bearer (or query / cookie)     | 401 invalid_token |
//! | same, without `cnf.jkt`                 | anything                       | 401 invalid_token (no key to check) |
//! | `cnf["x5t#S256"]`                       | client certificate with that SHA-256 | `mtls` |
//! | same                                    | no or another certificate      | 401 invalid_token |
//! | `cnf` with neither member, or not an object | anything                   | 401 invalid_token (a binding we cannot check) |
//! | no `cnf`                                | Bearer                         | `none` |
//! | no `cnf`                                | `DPoP` scheme                  | 401 invalid_token (RFC 9449 §7.1: the proof's key must match the token's) |
//!
//! A token bound both ways needs both. Proof checks: [`dpop`]; nonces:
//! [`nonce`]; the replay check is here ([`Binder`]): a bounded local cache,
//! and with `[cache.shared]` a fleet-wide `SET NX PX` in Redis. Where the
//! client certificate comes from (tokengate's own TLS, or a trusted proxy's
//! header): [`mtls`].

pub mod dpop;
pub mod mtls;
pub mod nonce;

use crate::cache::fleet::Fleet;
use crate::introspection::answer::Answer;
use crate::resilience::clock::Clock;
use crate::token::{Scheme, Token};
use dpop::{DpopSettings, ProofContext, ProofError, RequestUri};
use http::{HeaderMap, HeaderValue, Method};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// How the request's token was bound to its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Dpop,
    Mtls,
    None,
}

impl Binding {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dpop => "dpop",
            Self::Mtls => "mtls",
            Self::None => "none",
        }
    }

    /// The `identity.binding_header` value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// Why a token may not be used by this request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The answer binds the token to a DPoP key, and the request did not use
    /// the DPoP scheme (Bearer, query or cookie): a downgrade.
    #[error("the token is bound to a DPoP key and must be sent with the DPoP scheme and a proof")]
    DpopRequired,
    /// The DPoP scheme with a token that is not bound to a key.
    #[error("the DPoP scheme was used with a token that is not DPoP-bound")]
    NotDpopBound,
    /// `cnf` names a binding we cannot check (not an object, no `jkt` nor
    /// `x5t#S256`, or `token_type` DPoP without `cnf.jkt`).
    #[error("the token is bound to its sender in a way this service cannot check")]
    Unsupported,
    /// `cnf["x5t#S256"]`, and the request came without a client certificate.
    #[error("the token is bound to a client certificate and the request presented none")]
    CertificateMissing,
    /// `cnf["x5t#S256"]`, and the request's client certificate is another one.
    #[error("the token is bound to another client certificate")]
    CertificateMismatch,
    #[error("{0}")]
    Proof(ProofError),
    /// `dpop.require_nonce`, and the proof's nonce is missing or stale: the
    /// client retries with this one.
    #[error("the DPoP proof must carry the server's current nonce")]
    UseNonce(String),
    /// With `[cache.shared]`: Redis could not say whether the proof was used
    /// before (503, never an allow).
    #[error("the DPoP replay check is unavailable")]
    ReplayCheckUnavailable,
}

impl BindingError {
    /// The `reason` label of `tokengate_binding_refusals_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::DpopRequired => "dpop_required",
            Self::NotDpopBound => "not_dpop_bound",
            Self::Unsupported => "unsupported_cnf",
            Self::CertificateMissing => "certificate_missing",
            Self::CertificateMismatch => "certificate_mismatch",
            Self::Proof(_) => "invalid_dpop_proof",
            Self::UseNonce(_) => "use_dpop_nonce",
            Self::ReplayCheckUnavailable => "replay_check_unavailable",
        }
    }

    /// Whether the challenge for this error names the DPoP scheme.
    pub fn is_dpop(&self) -> bool {
        match self {
            Self::DpopRequired
            | Self::NotDpopBound
            | Self::Proof(_)
            | Self::UseNonce(_)
            | Self::ReplayCheckUnavailable => true,
            Self::Unsupported | Self::CertificateMissing | Self::CertificateMismatch => false,
        }
    }

    /// Every reason, for the metric's series that exist from the start.
    pub const REASONS: [&'static str; 8] = [
        "dpop_required",
        "not_dpop_bound",
        "unsupported_cnf",
        "certificate_missing",
        "certificate_mismatch",
        "invalid_dpop_proof",
        "use_dpop_nonce",
        "replay_check_unavailable",
    ];
}

/// What the stage needs to know about the request besides its headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The method the client sent (forward-auth mode: the original request's).
    pub method: &'a Method,
    /// The URI the client addressed ([`request_uri`]).
    pub uri: RequestUri<'a>,
    /// SHA-256 of the client certificate (DER) the request came with, for
    /// `cnf["x5t#S256"]` ([`mtls::client_certificate`]); `None` without one,
    /// and then a certificate-bound token is refused.
    pub client_cert_sha256: Option<[u8; 32]>,
}

/// The request URI the client signed in `htu`, behind whatever terminated
/// its connection:
///
/// * scheme: `X-Forwarded-Proto` when the peer is one of
///   `forwarding.trusted_proxies` and sent exactly one value, `http` or
///   `https`; else tokengate's own (`https` when it terminates TLS);
/// * host: `X-Forwarded-Host` under the same rule; else `host` (the request's
///   checked Host / `:authority` in proxy mode, the front proxy's original
///   host in forward-auth mode);
/// * path: the request's path (forward-auth: the original's), no query.
///
/// A header from anyone else, or sent twice, or with a list, is ignored:
/// the proof is then checked against our own view, and a client that signed
/// another one is refused rather than believed.
pub fn request_uri<'a>(
    headers: &'a HeaderMap,
    trusted_peer: bool,
    own_scheme: &'a str,
    host: Option<&'a str>,
    path: &'a str,
) -> RequestUri<'a> {
    let one = |name: &str| -> Option<&'a str> {
        if !trusted_peer {
            return None;
        }
        let mut values = headers.get_all(name).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        first
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && !v.contains(','))
    };
    let scheme = match one("x-forwarded-proto") {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        _ => own_scheme,
    };
    // A forwarded host that is not a host[:port] (`api.example.com@evil`,
    // `api.example.com#`) is ignored like an untrusted one.
    let forwarded_host =
        one("x-forwarded-host").filter(|h| matches!(crate::policy::normalize_host(h), Ok(Some(_))));
    RequestUri {
        scheme,
        host: forwarded_host.or(host),
        path,
    }
}

/// The replay cache: proofs seen (by [`dpop::VerifiedProof::replay_id`]),
/// each kept as long as its proof would be accepted. LRU, so that when more
/// than `replay_cache_entries` proofs arrive within one `max_age` it is the
/// oldest records that go (TinyLFU, moka's default, could refuse to admit a
/// new record, which would let that very proof be replayed).
struct ReplayExpiry;

impl moka::Expiry<[u8; 32], Duration> for ReplayExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        ttl: &Duration,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(*ttl)
    }
}

/// The binding stage's state: the replay cache, the nonce key, and the fleet
/// for the fleet-wide replay check.
pub struct Binder {
    replay: moka::future::Cache<[u8; 32], Duration>,
    /// `dpop.replay_cache_entries`: live records allowed at once.
    replay_capacity: u64,
    /// Live records now: +1 per record, −1 when moka drops one (expiry).
    /// moka's own count lags; this one is what the full check reads.
    replay_live: Arc<std::sync::atomic::AtomicU64>,
    nonces: nonce::Nonces,
    fleet: Option<Arc<Fleet>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Binder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binder")
            .field("fleet", &self.fleet.is_some())
            .finish_non_exhaustive()
    }
}

impl Binder {
    pub fn new(settings: &DpopSettings, fleet: Option<Arc<Fleet>>, clock: Arc<dyn Clock>) -> Self {
        let nonces = match &fleet {
            Some(f) => nonce::Nonces::with_key(f.derive_key(b"dpop nonce")),
            None => nonce::Nonces::random(),
        };
        let replay_live = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let live = replay_live.clone();
        Self {
            replay_capacity: settings.replay_cache_entries,
            replay_live,
            // Room for twice the records the full check allows, so that moka
            // never evicts a live record to make space (it would let that
            // proof be replayed); records leave when they expire.
            replay: moka::future::Cache::builder()
                .max_capacity(settings.replay_cache_entries.saturating_mul(2))
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .expire_after(ReplayExpiry)
                .eviction_listener(move |_, _, _| {
                    live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                })
                .build(),
            nonces,
            fleet,
            clock,
        }
    }

    /// The binding stage (see the module docs). `scheme` is how the token
    /// came (the Authorization scheme; a query or cookie token is Bearer).
    pub async fn check(
        &self,
        settings: &DpopSettings,
        answer: &Answer,
        token: &Token,
        scheme: Scheme,
        headers: &HeaderMap,
        facts: &RequestFacts<'_>,
    ) -> Result<Binding, BindingError> {
        let result = self
            .decide(settings, answer, token, scheme, headers, facts)
            .await;
        if let Err(e) = &result {
            debug!(reason = %e, token = %token.fingerprint(), "token binding refused");
        }
        result
    }

    async fn decide(
        &self,
        settings: &DpopSettings,
        answer: &Answer,
        token: &Token,
        scheme: Scheme,
        headers: &HeaderMap,
        facts: &RequestFacts<'_>,
    ) -> Result<Binding, BindingError> {
        let cnf = Cnf::of(answer)?;
        // Certificate first: it needs no parsing and fails fastest.
        if let Some(want) = &cnf.x5t_s256 {
            let got = facts
                .client_cert_sha256
                .ok_or(BindingError::CertificateMissing)?;
            // Constant time: the bound certificate's thumbprint is no secret,
            // but a timing oracle on the comparison is not worth reasoning about.
            use subtle::ConstantTimeEq;
            if !bool::from(got.ct_eq(want)) {
                return Err(BindingError::CertificateMismatch);
            }
        }
        match (cnf.dpop, scheme) {
            (DpopBinding::None, Scheme::Bearer) => Ok(if cnf.x5t_s256.is_some() {
                Binding::Mtls
            } else {
                Binding::None
            }),
            (DpopBinding::None, Scheme::Dpop) => Err(BindingError::NotDpopBound),
            (DpopBinding::Unknown, _) => Err(BindingError::Unsupported),
            (DpopBinding::Key(_), Scheme::Bearer) => Err(BindingError::DpopRequired),
            (DpopBinding::Key(jkt), Scheme::Dpop) => {
                self.check_proof(settings, &jkt, token, headers, facts)
                    .await?;
                Ok(Binding::Dpop)
            }
        }
    }

    async fn check_proof(
        &self,
        settings: &DpopSettings,
        jkt: &str,
        token: &Token,
        headers: &HeaderMap,
        facts: &RequestFacts<'_>,
    ) -> Result<(), BindingError> {
        let refused = BindingError::Proof;
        let mut proofs = headers.get_all(&dpop::DPOP).iter();
        let proof = proofs.next().ok_or_else(|| refused(ProofError::Missing))?;
        if proofs.next().is_some() {
            return Err(refused(ProofError::Multiple));
        }
        let proof = proof.to_str().map_err(|_| refused(ProofError::Malformed))?;
        let now = self.clock.now();
        let ctx = ProofContext {
            method: facts.method.as_str(),
            uri: facts.uri,
            token: token.secret(),
            now,
        };
        let verified = dpop::verify(proof, &ctx, settings).map_err(refused)?;
        if verified.jkt != jkt {
            return Err(refused(ProofError::KeyMismatch));
        }
        if settings.require_nonce {
            let secs = self.clock.unix_secs();
            let fresh = verified
                .nonce
                .as_deref()
                .is_some_and(|n| self.nonces.check(n, secs, settings.max_age));
            if !fresh {
                return Err(BindingError::UseNonce(
                    self.nonces.issue(secs, settings.max_age),
                ));
            }
        }
        // Last, so that only proofs that are good in every other way (and
        // signed by the token's key) are recorded: nobody can fill the cache
        // with another client's jti values.
        //
        // Without the fleet, this cache is the only record of a proof: a full
        // one would evict a record that is still live, and a captured proof
        // could then be replayed (anyone with a bound token of their own can
        // fill it). So a full cache refuses new proofs (503) until records
        // expire, instead of forgetting one. With the fleet, Redis keeps
        // every record for its whole window.
        let live = || self.replay_live.load(std::sync::atomic::Ordering::Relaxed);
        if self.fleet.is_none() && live() >= self.replay_capacity {
            // Expired records are dropped (and counted out) here.
            self.replay.run_pending_tasks().await;
            if live() >= self.replay_capacity {
                warn!(
                    capacity = self.replay_capacity,
                    "DPoP replay cache full of live proofs; refusing new proofs (503) until some expire (raise dpop.replay_cache_entries, or use [cache.shared])"
                );
                return Err(BindingError::ReplayCheckUnavailable);
            }
        }
        let first_here = self
            .replay
            .entry(verified.replay_id)
            .or_insert(verified.remaining)
            .await
            .is_fresh();
        if first_here {
            self.replay_live
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            return Err(refused(ProofError::Replayed));
        }
        if let Some(fleet) = &self.fleet {
            match fleet
                .first_use(&verified.replay_id, verified.remaining)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err(refused(ProofError::Replayed)),
                Err(e) => {
                    // Fail closed: a proof replayed at another replica cannot
                    // be told from a fresh one now.
                    warn!(error = %e, "DPoP replay check: shared cache unavailable; refusing the request (503)");
                    return Err(BindingError::ReplayCheckUnavailable);
                }
            }
        }
        Ok(())
    }
}

/// What the answer's `cnf` and `token_type` say about the DPoP binding.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DpopBinding {
    None,
    Key(String),
    /// `token_type` DPoP without a `cnf.jkt`: bound, to a key we do not know.
    Unknown,
}

#[derive(Debug)]
struct Cnf {
    dpop: DpopBinding,
    x5t_s256: Option<[u8; 32]>,
}

/// Whether a `token_type` says DPoP (RFC 9449 §6.2: case-insensitive): such
/// a token is bound to a key even when its answer carries no `cnf.jkt`.
pub fn is_dpop_type(token_type: Option<&oauth2::basic::BasicTokenType>) -> bool {
    token_type.is_some_and(|t| AsRef::<str>::as_ref(t).eq_ignore_ascii_case("dpop"))
}

impl Cnf {
    fn of(answer: &Answer) -> Result<Self, BindingError> {
        let dpop_type = is_dpop_type(answer.token_type());
        let Some(cnf) = answer.extra("cnf").filter(|v| !v.is_null()) else {
            return Ok(Self {
                dpop: if dpop_type {
                    DpopBinding::Unknown
                } else {
                    DpopBinding::None
                },
                x5t_s256: None,
            });
        };
        let cnf = cnf.as_object().ok_or(BindingError::Unsupported)?;
        let jkt = match cnf.get("jkt") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .filter(|s| !s.is_empty())
                    .ok_or(BindingError::Unsupported)?,
            ),
        };
        let x5t_s256 = match cnf.get("x5t#S256") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(decode_thumbprint)
                    .ok_or(BindingError::Unsupported)?,
            ),
        };
        if jkt.is_none() && x5t_s256.is_none() {
            // e.g. `cnf.jwk` or `cnf.kid`: bound to something we cannot check.
            return Err(BindingError::Unsupported);
        }
        let dpop = match jkt {
            Some(k) => DpopBinding::Key(k.to_owned()),
            None if dpop_type => DpopBinding::Unknown,
            None => DpopBinding::None,
        };
        Ok(Self { dpop, x5t_s256 })
    }
}

/// `x5t#S256` is base64url without padding (RFC 8705 §3.1); some servers pad.
fn decode_thumbprint(s: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()?;
    raw.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::dpop::tests::{es256_key, sign};
    use super::*;
    use crate::introspection::answer::Interner;
    use crate::introspection::client::Introspection;
    use crate::resilience::clock::ManualClock;
    use serde_json::json;

    fn answer(extra: serde_json::Value) -> Answer {
        let mut body = json!({"active": true, "scope": "read"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let i: Introspection = serde_json::from_value(body).unwrap();
        Answer::new(i, &Interner::new(16))
    }

    fn binder(clock: Arc<ManualClock>) -> Binder {
        Binder::new(&DpopSettings::default(), None, clock)
    }

    fn token() -> Token {
        crate::token::parse_bearer("Bearer tok-1", 100)
            .unwrap()
            .unwrap()
    }

    fn facts(method: &Method) -> RequestFacts<'_> {
        RequestFacts {
            method,
            uri: RequestUri {
                scheme: "https",
                host: Some("api.example.com"),
                path: "/x",
            },
            client_cert_sha256: None,
        }
    }

    #[tokio::test]
    async fn the_table_in_the_module_docs() {
        let clock = Arc::new(ManualClock::default());
        let b = binder(clock.clone());
        let s = DpopSettings::default();
        let key = es256_key();
        let get = Method::GET;
        let f = facts(&get);
        let proof = |jti: &str| {
            sign(
                &key,
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk}),
                json!({"jti": jti, "htm": "GET", "htu": "https://api.example.com/x",
                       "iat": clock.unix_secs(), "ath": dpop::token_hash("tok-1")}),
            )
        };
        let with_proof = |p: String| {
            let mut h = HeaderMap::new();
            h.insert("dpop", HeaderValue::from_str(&p).unwrap());
            h
        };
        let none = HeaderMap::new();
        let t = token();
        let bound = answer(json!({"token_type": "DPoP", "cnf": {"jkt": key.jkt}}));
        let bound_no_type = answer(json!({"cnf": {"jkt": key.jkt}}));
        let plain = answer(json!({"token_type": "Bearer"}));
        let typed_only = answer(json!({"token_type": "DPoP"}));
        let thumb = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32])
        };
        let cert = answer(json!({"cnf": {"x5t#S256": thumb}}));
        let odd = answer(json!({"cnf": {"jwk": {"kty": "EC"}}}));
        let not_obj = answer(json!({"cnf": "x"}));

        let ok = |r: Result<Binding, BindingError>| r.unwrap();
        assert_eq!(
            ok(b.check(&s, &plain, &t, Scheme::Bearer, &none, &f).await),
            Binding::None
        );
        assert_eq!(
            ok(
                b.check(&s, &bound, &t, Scheme::Dpop, &with_proof(proof("a")), &f)
                    .await
            ),
            Binding::Dpop
        );
        assert_eq!(
            ok(b.check(
                &s,
                &bound_no_type,
                &t,
                Scheme::Dpop,
                &with_proof(proof("b")),
                &f
            )
            .await),
            Binding::Dpop
        );
        let err = |r: Result<Binding, BindingError>| r.unwrap_err();
        // Downgrade: Bearer, with or without a (valid) proof.
        assert_eq!(
            err(b.check(&s, &bound, &t, Scheme::Bearer, &none, &f).await),
            BindingError::DpopRequired
        );
        assert_eq!(
            err(b
                .check(
                    &s,
                    &bound_no_type,
                    &t,
                    Scheme::Bearer,
                    &with_proof(proof("c")),
                    &f
                )
                .await),
            BindingError::DpopRequired
        );
        assert_eq!(
            err(b
                .check(
                    &s,
                    &typed_only,
                    &t,
                    Scheme::Dpop,
                    &with_proof(proof("d")),
                    &f
                )
                .await),
            BindingError::Unsupported
        );
        assert_eq!(
            err(b
                .check(&s, &typed_only, &t, Scheme::Bearer, &none, &f)
                .await),
            BindingError::Unsupported
        );
        assert_eq!(
            err(b
                .check(&s, &plain, &t, Scheme::Dpop, &with_proof(proof("e")), &f)
                .await),
            BindingError::NotDpopBound
        );
        assert_eq!(
            err(b.check(&s, &cert, &t, Scheme::Bearer, &none, &f).await),
            BindingError::CertificateMissing
        );
        let other_cert = RequestFacts {
            client_cert_sha256: Some([0xEE; 32]),
            ..f
        };
        assert_eq!(
            err(b
                .check(&s, &cert, &t, Scheme::Bearer, &none, &other_cert)
                .await),
            BindingError::CertificateMismatch
        );
        assert_eq!(
            err(b.check(&s, &odd, &t, Scheme::Bearer, &none, &f).await),
            BindingError::Unsupported
        );
        assert_eq!(
            err(b.check(&s, &not_obj, &t, Scheme::Bearer, &none, &f).await),
            BindingError::Unsupported
        );
        // A matching certificate passes a certificate-bound token.
        let mut with_cert = f;
        with_cert.client_cert_sha256 = Some([8u8; 32]);
        assert_eq!(
            err(b
                .check(&s, &cert, &t, Scheme::Bearer, &none, &with_cert)
                .await),
            BindingError::CertificateMismatch
        );
        with_cert.client_cert_sha256 = decode_thumbprint(&format!("{thumb}="));
        assert_eq!(
            ok(b.check(&s, &cert, &t, Scheme::Bearer, &none, &with_cert)
                .await),
            Binding::Mtls
        );

        // Proof failures the stage adds: none, two, another key, a replay.
        assert_eq!(
            err(b.check(&s, &bound, &t, Scheme::Dpop, &none, &f).await),
            BindingError::Proof(ProofError::Missing)
        );
        let mut two = with_proof(proof("f"));
        two.append("dpop", HeaderValue::from_str(&proof("g")).unwrap());
        assert_eq!(
            err(b.check(&s, &bound, &t, Scheme::Dpop, &two, &f).await),
            BindingError::Proof(ProofError::Multiple)
        );
        let other = es256_key();
        let foreign = answer(json!({"cnf": {"jkt": other.jkt}}));
        assert_eq!(
            err(b
                .check(&s, &foreign, &t, Scheme::Dpop, &with_proof(proof("h")), &f)
                .await),
            BindingError::Proof(ProofError::KeyMismatch)
        );
        assert_eq!(
            err(b
                .check(&s, &bound, &t, Scheme::Dpop, &with_proof(proof("a")), &f)
                .await),
            BindingError::Proof(ProofError::Replayed)
        );
        // The mismatching proof "h" was not recorded: its owner can still use it.
        let owner = answer(json!({"cnf": {"jkt": key.jkt}}));
        assert_eq!(
            ok(
                b.check(&s, &owner, &t, Scheme::Dpop, &with_proof(proof("h")), &f)
                    .await
            ),
            Binding::Dpop
        );
    }

    #[tokio::test]
    async fn a_required_nonce_is_handed_out_then_accepted() {
        let clock = Arc::new(ManualClock::default());
        let b = binder(clock.clone());
        let s = DpopSettings {
            require_nonce: true,
            ..DpopSettings::default()
        };
        let key = es256_key();
        let get = Method::GET;
        let f = facts(&get);
        let bound = answer(json!({"cnf": {"jkt": key.jkt}}));
        let t = token();
        let proof = |jti: &str, nonce: Option<&str>| {
            let mut c = json!({"jti": jti, "htm": "GET", "htu": "https://api.example.com/x",
                               "iat": clock.unix_secs(), "ath": dpop::token_hash("tok-1")});
            if let Some(n) = nonce {
                c["nonce"] = json!(n);
            }
            let mut h = HeaderMap::new();
            let p = sign(
                &key,
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk}),
                c,
            );
            h.insert("dpop", HeaderValue::from_str(&p).unwrap());
            h
        };
        let Err(BindingError::UseNonce(nonce)) = b
            .check(&s, &bound, &t, Scheme::Dpop, &proof("1", None), &f)
            .await
        else {
            panic!("a proof without a nonce must get one");
        };
        assert!(matches!(
            b.check(
                &s,
                &bound,
                &t,
                Scheme::Dpop,
                &proof("2", Some("forged")),
                &f
            )
            .await,
            Err(BindingError::UseNonce(_))
        ));
        assert_eq!(
            b.check(&s, &bound, &t, Scheme::Dpop, &proof("3", Some(&nonce)), &f)
                .await,
            Ok(Binding::Dpop)
        );
        // The nonce-less proof was not recorded as used.
        let mut s2 = s.clone();
        s2.require_nonce = false;
        assert_eq!(
            b.check(&s2, &bound, &t, Scheme::Dpop, &proof("1", None), &f)
                .await,
            Ok(Binding::Dpop)
        );
        clock.advance(Duration::from_secs(130));
        assert!(
            matches!(
                b.check(&s, &bound, &t, Scheme::Dpop, &proof("4", Some(&nonce)), &f)
                    .await,
                Err(BindingError::UseNonce(_))
            ),
            "a nonce two periods old is stale"
        );
    }

    #[test]
    fn forwarded_scheme_and_host_count_only_from_trusted_proxies_and_only_once() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("api.example.com"),
        );
        let u = request_uri(&h, true, "http", Some("internal:8080"), "/p");
        assert_eq!((u.scheme, u.host), ("https", Some("api.example.com")));
        let u = request_uri(&h, false, "http", Some("internal:8080"), "/p");
        assert_eq!((u.scheme, u.host), ("http", Some("internal:8080")));
        h.append("x-forwarded-proto", HeaderValue::from_static("http"));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("a.example, b.example"),
        );
        let u = request_uri(&h, true, "http", Some("internal:8080"), "/p");
        assert_eq!((u.scheme, u.host), ("http", Some("internal:8080")));
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        assert_eq!(request_uri(&h, true, "https", None, "/").scheme, "https");
    }
}
