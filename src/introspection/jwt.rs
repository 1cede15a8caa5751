//! JWT access tokens checked locally (RFC 9068), and signed introspection
//! answers (RFC 9701), for one issuer.
//!
//! [`JwtVerifier`] decides, from the token alone, which path a token takes
//! ([`JwtVerifier::classify`]) and checks the ones that are ours
//! ([`JwtVerifier::verify`]); its answer is an [`Introspection`] with
//! `active: true` and the token's claims, so the cache, the policy (scopes,
//! `aud`, `client_id`, `iss`) and the binding stages (`cnf`) read it exactly
//! like an introspected one. [`SignedAnswers`] verifies an RFC 9701 answer
//! and hands back its `token_introspection` member.
//!
//! Which token goes where (`[jwt] enabled = true`):
//!
//! | the token                                           | path                          |
//! |-----------------------------------------------------|-------------------------------|
//! | not a compact JWS (opaque, JWE, unparsable parts)   | introspection                 |
//! | JWS, `typ` not `at+jwt`, `iss` not ours             | introspection (another AS's)  |
//! | JWS, `typ` `at+jwt`, `iss` ours                     | local check                   |
//! | JWS, `typ` `at+jwt`, `iss` not ours                 | 401, no AS call               |
//! | JWS, `iss` ours, `typ` not `at+jwt` (an ID token…)  | 401, no AS call               |
//!
//! A token that fails the local check is never introspected.

use crate::introspection::client::Introspection;
use crate::introspection::jwks::{Jwks, JwksSource, KeyError};
use crate::resilience::clock::{duration_str, Clock};
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// `[jwt]` as the file spells it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwt {
    pub enabled: bool,
    /// Default: `discovery.issuer`.
    pub issuer: String,
    /// Default: the issuer metadata's `jwks_uri`.
    pub jwks_url: String,
    pub algorithms: Vec<String>,
    /// Also introspect a locally valid JWT (revocation).
    pub introspect: bool,
    /// Clock skew allowed on `nbf` and `iat` (never on `exp`).
    #[serde(with = "duration_str")]
    pub leeway: Duration,
    /// Background refresh of the JWKS.
    #[serde(with = "duration_str")]
    pub jwks_refresh_interval: Duration,
    /// An unknown `kid` refetches the JWKS at most once per this.
    #[serde(with = "duration_str")]
    pub jwks_refetch_min_interval: Duration,
}

impl Default for RawJwt {
    fn default() -> Self {
        Self {
            enabled: false,
            issuer: String::new(),
            jwks_url: String::new(),
            algorithms: ["RS256", "PS256", "ES256", "EdDSA"]
                .map(String::from)
                .to_vec(),
            introspect: false,
            leeway: Duration::from_secs(30),
            jwks_refresh_interval: Duration::from_secs(300),
            jwks_refetch_min_interval: Duration::from_secs(10),
        }
    }
}

/// The largest `jwt.leeway`: more would let a token live visibly before its time.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// `[jwt]`, validated. Present when local validation is on or the
/// introspection answers are signed (both need the issuer's keys).
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSettings {
    /// `jwt.enabled`: check `at+jwt` tokens of `issuer` locally.
    pub enabled: bool,
    /// Compared exactly with a token's (or an RFC 9701 answer's) `iss`.
    pub issuer: String,
    pub jwks: JwksSource,
    pub algorithms: Vec<Algorithm>,
    pub introspect: bool,
    pub leeway: Duration,
    pub jwks_refresh_interval: Duration,
    pub jwks_refetch_min_interval: Duration,
}

impl JwtSettings {
    /// One line for `--check-config`: what is checked locally and with
    /// which keys (no secret is involved).
    pub fn summary(&self) -> String {
        let algs: Vec<_> = self.algorithms.iter().map(|a| format!("{a:?}")).collect();
        format!(
            "jwt: local={} hybrid={} iss={} jwks={} algorithms={} leeway={}",
            if self.enabled {
                "on"
            } else {
                "off (keys for signed answers)"
            },
            if self.introspect { "on" } else { "off" },
            self.issuer,
            match &self.jwks {
                JwksSource::Url(u) => u.to_string(),
                JwksSource::Issuer(i) => format!("(jwks_uri of {i})"),
            },
            algs.join(","),
            humantime::format_duration(self.leeway),
        )
    }
}

impl RawJwt {
    /// Validates `[jwt]`. `discovery_issuer` is `discovery.issuer`;
    /// `signed_answers` is `introspection.response_format = "jwt"`. Every
    /// problem is reported (key, message); `Ok(None)` when nothing needs it.
    pub fn settings(
        &self,
        discovery_issuer: &str,
        signed_answers: bool,
    ) -> Result<Option<JwtSettings>, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        let mut algorithms = Vec::new();
        for name in &self.algorithms {
            match name.parse::<Algorithm>() {
                Ok(a) if !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
                    algorithms.push(a)
                }
                Ok(_) => errors.push((
                    "jwt.algorithms",
                    format!("{name:?}: HMAC algorithms are never accepted (a public key must not verify a shared-secret signature)"),
                )),
                Err(_) => errors.push((
                    "jwt.algorithms",
                    format!("{name:?} is not a supported JWS algorithm (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA; never \"none\")"),
                )),
            }
        }
        if self.algorithms.is_empty() {
            errors.push(("jwt.algorithms", "must name at least one algorithm".into()));
        }
        if self.leeway > MAX_LEEWAY {
            errors.push((
                "jwt.leeway",
                format!("must be at most {}", humantime::format_duration(MAX_LEEWAY)),
            ));
        }
        if self.jwks_refresh_interval.is_zero() {
            errors.push(("jwt.jwks_refresh_interval", "must be greater than 0".into()));
        }
        // 0 would let every made-up `kid` fetch the JWKS again.
        if self.jwks_refetch_min_interval.is_zero() {
            errors.push((
                "jwt.jwks_refetch_min_interval",
                "must be greater than 0 (it bounds the JWKS fetches that unknown kids cause)"
                    .into(),
            ));
        }
        let jwks_url = if self.jwks_url.is_empty() {
            None
        } else {
            match url::Url::parse(&self.jwks_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
                _ => {
                    errors.push((
                        "jwt.jwks_url",
                        format!("{:?} is not an http(s) URL", self.jwks_url),
                    ));
                    None
                }
            }
        };
        let needed = self.enabled || signed_answers;
        let issuer = if self.issuer.is_empty() {
            discovery_issuer.to_owned()
        } else {
            self.issuer.clone()
        };
        if needed && issuer.is_empty() {
            let why = if self.enabled {
                "jwt.enabled"
            } else {
                "introspection.response_format = \"jwt\""
            };
            errors.push((
                "jwt.issuer",
                format!("is required with {why} (or set discovery.issuer): tokens and signed answers are checked against it"),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if !needed {
            return Ok(None);
        }
        Ok(Some(JwtSettings {
            enabled: self.enabled,
            jwks: match jwks_url {
                Some(u) => JwksSource::Url(u),
                None => JwksSource::Issuer(issuer.clone()),
            },
            issuer,
            algorithms,
            introspect: self.introspect,
            leeway: self.leeway,
            jwks_refresh_interval: self.jwks_refresh_interval,
            jwks_refetch_min_interval: self.jwks_refetch_min_interval,
        }))
    }
}

/// Why a JWT (or a signed answer) was refused. Every variant but
/// [`Self::KeysUnavailable`] means "this token is not acceptable" (401, no AS
/// call); that one means "we cannot tell now" (503). The messages never quote
/// the token or a value taken from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a well-formed JWS")]
    Malformed,
    #[error("the JWS names an algorithm that is not in jwt.algorithms")]
    Algorithm,
    #[error("the JWS has critical header parameters we do not understand")]
    Critical,
    #[error("the JWT is from a configured issuer but its typ is not at+jwt")]
    WrongType,
    #[error("the JWT is an access token (typ at+jwt) of an issuer that is not configured")]
    UnknownIssuer,
    #[error("no key of the issuer matches the JWS's kid and alg")]
    UnknownKey,
    #[error("the JWS signature does not verify")]
    Signature,
    #[error("the JWT lacks the {0} claim, or it is not of the right type")]
    Claim(&'static str),
    #[error("the JWT has expired")]
    Expired,
    #[error("the JWT is not valid yet (nbf or iat in the future)")]
    NotYetValid,
    #[error("the signed introspection answer is not for us (aud)")]
    Audience,
    #[error("the issuer's signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl JwtError {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::Critical => "critical",
            Self::WrongType => "wrong_typ",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKey => "unknown_key",
            Self::Signature => "signature",
            Self::Claim(_) => "claim",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Audience => "audience",
            Self::KeysUnavailable(_) => "keys_unavailable",
        }
    }
}

impl From<KeyError> for JwtError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Unknown => Self::UnknownKey,
            KeyError::Unavailable(m) => Self::KeysUnavailable(m),
        }
    }
}

/// The header members we read; the rest is ignored (but signed).
#[derive(Deserialize)]
struct PeekHeader {
    #[serde(default)]
    typ: Option<String>,
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A compact JWS's header and claims, decoded but not verified.
pub struct Peeked {
    typ: Option<String>,
    alg: String,
    kid: Option<String>,
    crit: bool,
    claims: serde_json::Map<String, serde_json::Value>,
}

impl Peeked {
    /// `None` unless `token` is a compact JWS (three base64url parts) whose
    /// header and payload are JSON objects.
    fn of(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (h, p, _sig) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: PeekHeader = serde_json::from_slice(&b64.decode(h).ok()?).ok()?;
        let claims = serde_json::from_slice(&b64.decode(p).ok()?).ok()?;
        Some(Self {
            typ: header.typ,
            alg: header.alg,
            kid: header.kid,
            crit: header.crit.is_some(),
            claims,
        })
    }

    fn iss(&self) -> Option<&str> {
        self.claims.get("iss").and_then(|v| v.as_str())
    }

    /// `typ` is `want` or `application/want` (RFC 7515 §4.1.9: the prefix
    /// may be left out; media types compare case-insensitively).
    fn typ_is(&self, want: &str) -> bool {
        self.typ.as_deref().is_some_and(|t| typ_is(t, want))
    }
}

/// A `typ` names the media type `want` (the `application/` prefix may be
/// left out; compared case-insensitively).
fn typ_is(typ: &str, want: &str) -> bool {
    let t = typ
        .get(..12)
        .filter(|p| p.eq_ignore_ascii_case("application/"))
        .map_or(typ, |_| &typ[12..]);
    t.eq_ignore_ascii_case(want)
}

/// What [`peek_iss`] reads of a compact JWS, unverified: enough to pick the
/// issuer whose keys will verify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeekedIss {
    /// Its header's `typ` is `at+jwt` (or `application/at+jwt`).
    pub at_jwt: bool,
    /// Its payload's `iss`, when that is a string.
    pub iss: Option<String>,
}

/// The header's `typ` and the payload's `iss` of a compact JWS, unverified;
/// `None` when `token` is not one (an opaque token). Runs on every request
/// of a route that admits several issuers, cache hits included (the issuer
/// must be known before the lookup: the cache is partitioned by issuer), so
/// it reads only those two members: two base64 decodes and two small JSON
/// reads that skip everything else, no map of the claims. Whatever it says
/// is checked again after the signature ([`JwtVerifier::verify_peeked`]).
pub fn peek_iss(token: &str) -> Option<PeekedIss> {
    #[derive(Deserialize)]
    struct Typ<'a> {
        #[serde(default, borrow)]
        typ: Option<std::borrow::Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Iss {
        #[serde(default)]
        iss: Option<String>,
    }
    let mut parts = token.split('.');
    let (h, p, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.decode(h).ok()?;
    let typ: Typ = serde_json::from_slice(&header).ok()?;
    let at_jwt = typ.typ.as_deref().is_some_and(|t| typ_is(t, "at+jwt"));
    // A payload that is no JSON object, or whose `iss` is no string: no
    // `iss` (an `at+jwt` without one is refused by the caller).
    let iss = b64
        .decode(p)
        .ok()
        .and_then(|p| serde_json::from_slice::<Iss>(&p).ok())
        .and_then(|c| c.iss);
    Some(PeekedIss { at_jwt, iss })
}

/// Which path a token takes (see the module's table).
pub enum Shape {
    /// Not ours to check: introspect it, as without `[jwt]`.
    Introspect,
    /// Ours: check it locally.
    Local(Peeked),
    /// Refused from its shape alone: 401, no AS call.
    Refuse(JwtError),
}

/// Verifies one issuer's JWT access tokens against its JWKS.
pub struct JwtVerifier {
    settings: JwtSettings,
    jwks: Arc<Jwks>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.settings.issuer)
            .field("jwks", &self.jwks)
            .finish()
    }
}

impl JwtVerifier {
    pub fn new(settings: JwtSettings, jwks: Arc<Jwks>, clock: Arc<dyn Clock>) -> Self {
        Self {
            settings,
            jwks,
            clock,
        }
    }

    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    pub fn jwks(&self) -> &Arc<Jwks> {
        &self.jwks
    }

    /// `jwt.introspect`: a locally valid JWT is introspected too.
    pub fn hybrid(&self) -> bool {
        self.settings.introspect
    }

    /// Which path `token` takes, from its unverified header and `iss`.
    pub fn classify(&self, token: &str) -> Shape {
        let Some(peeked) = Peeked::of(token) else {
            return Shape::Introspect;
        };
        let at_jwt = peeked.typ_is("at+jwt");
        let ours = peeked.iss() == Some(self.settings.issuer.as_str());
        match (at_jwt, ours) {
            (true, true) => Shape::Local(peeked),
            (true, false) => Shape::Refuse(JwtError::UnknownIssuer),
            (false, true) => Shape::Refuse(JwtError::WrongType),
            (false, false) => Shape::Introspect,
        }
    }

    /// Classifies and checks `token`: the answer a local check gives, or why
    /// not. A token that [`Self::classify`] sends to introspection is
    /// [`JwtError::UnknownIssuer`] here.
    pub async fn verify(&self, token: &str) -> Result<Introspection, JwtError> {
        match self.classify(token) {
            Shape::Local(p) => self.verify_peeked(token, p).await,
            Shape::Refuse(e) => Err(e),
            Shape::Introspect => Err(JwtError::UnknownIssuer),
        }
    }

    /// Checks a token that [`Self::classify`] found to be ours: signature
    /// with a key of the JWKS (`kid`, `alg` from `jwt.algorithms` and fitting
    /// the key), `iss` exact, `exp` (required, no leeway), `nbf` and `iat`
    /// (`iat` required) with `jwt.leeway`. `aud`, scopes and clients are the
    /// policy's business, as for an introspected answer.
    pub async fn verify_peeked(
        &self,
        token: &str,
        peeked: Peeked,
    ) -> Result<Introspection, JwtError> {
        let alg = check_alg(&peeked, &self.settings.algorithms)?;
        let key = self.jwks.key_for(peeked.kid.as_deref(), alg).await?;
        verify_signature(token, &key, alg)?;
        if peeked.iss() != Some(self.settings.issuer.as_str()) {
            return Err(JwtError::UnknownIssuer);
        }
        let mut claims = peeked.claims;
        claims.insert("active".into(), serde_json::Value::Bool(true));
        let mut answer: Introspection = serde_json::from_value(serde_json::Value::Object(claims))
            .map_err(|_| JwtError::Claim("a registered"))?;
        let now = self.clock.unix_secs();
        let leeway = i64::try_from(self.settings.leeway.as_secs()).unwrap_or(i64::MAX);
        let exp = answer.exp.ok_or(JwtError::Claim("exp"))?;
        // No leeway past `exp`: tokengate never passes a token after its
        // `exp`, whichever path checked it (the policy re-checks it too).
        if exp <= now {
            return Err(JwtError::Expired);
        }
        let iat = answer.iat.ok_or(JwtError::Claim("iat"))?;
        if iat > now.saturating_add(leeway) {
            return Err(JwtError::NotYetValid);
        }
        if let Some(nbf) = answer.nbf {
            if nbf > now.saturating_add(leeway) {
                return Err(JwtError::NotYetValid);
            }
            // Within the leeway: the policy (which allows no skew) must not
            // refuse what this check accepted.
            answer.nbf = Some(nbf.min(now));
        }
        Ok(answer)
    }
}

/// The header's `alg`, if it is one of `allowed` (never `none`, never HS*:
/// validation refuses them in `jwt.algorithms`), and no `crit`.
fn check_alg(peeked: &Peeked, allowed: &[Algorithm]) -> Result<Algorithm, JwtError> {
    if peeked.crit {
        return Err(JwtError::Critical);
    }
    let alg = peeked
        .alg
        .parse::<Algorithm>()
        .map_err(|_| JwtError::Algorithm)?;
    if !allowed.contains(&alg) {
        return Err(JwtError::Algorithm);
    }
    Ok(alg)
}

/// The signature check alone, with the key parsed at fetch time; claims are
/// checked by the caller against the injected clock. The header and payload
/// were decoded once already ([`Peeked::of`], which also made sure there are
/// exactly three parts): only the signature is decoded here, and the
/// signing input is the token's bytes up to the last dot (RFC 7515 §5.2).
fn verify_signature(
    token: &str,
    key: &crate::introspection::jwks::Key,
    alg: Algorithm,
) -> Result<(), JwtError> {
    let (signing_input, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| JwtError::Signature)?;
    if key.verify(alg, signing_input.as_bytes(), &signature) {
        Ok(())
    } else {
        Err(JwtError::Signature)
    }
}

/// The media type of an RFC 9701 answer.
pub use crate::introspection::client::INTROSPECTION_JWT;

/// Verifies RFC 9701 signed introspection answers of one issuer.
pub struct SignedAnswers {
    jwks: Arc<Jwks>,
    issuer: String,
    client_id: String,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    /// The introspection call's deadline: an answer signed longer ago than
    /// that (plus the leeway) was not made for this call.
    call_timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SignedAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedAnswers")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl crate::introspection::client::AnswerVerifier for SignedAnswers {
    fn verify_answer<'a>(
        &'a self,
        jws: &'a [u8],
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Vec<u8>, crate::introspection::client::AnswerRefused>,
                > + Send
                + 'a,
        >,
    > {
        use crate::introspection::client::AnswerRefused;
        Box::pin(async move {
            self.verify(jws).await.map_err(|e| match e {
                JwtError::KeysUnavailable(m) => AnswerRefused::KeysUnavailable(m),
                e => AnswerRefused::Invalid(e.to_string()),
            })
        })
    }
}

impl SignedAnswers {
    pub fn new(
        settings: &JwtSettings,
        client_id: &str,
        call_timeout: Duration,
        jwks: Arc<Jwks>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            jwks,
            issuer: settings.issuer.clone(),
            client_id: client_id.to_owned(),
            algorithms: settings.algorithms.clone(),
            leeway: settings.leeway,
            call_timeout,
            clock,
        }
    }

    /// Checks a signed answer (`body`, the JWS) and returns its
    /// `token_introspection` member as JSON: `typ`
    /// `token-introspection+jwt`, signature with a key of the issuer's JWKS,
    /// `iss` exact, `aud` naming our client id, `iat` present and not in the
    /// future (beyond `jwt.leeway`). The answer has no `exp` (RFC 9701 §5).
    pub async fn verify(&self, body: &[u8]) -> Result<Vec<u8>, JwtError> {
        let token = std::str::from_utf8(body)
            .map_err(|_| JwtError::Malformed)?
            .trim();
        let peeked = Peeked::of(token).ok_or(JwtError::Malformed)?;
        if !peeked.typ_is("token-introspection+jwt") {
            return Err(JwtError::WrongType);
        }
        let alg = check_alg(&peeked, &self.algorithms)?;
        let key = self.jwks.key_for(peeked.kid.as_deref(), alg).await?;
        verify_signature(token, &key, alg)?;
        if peeked.iss() != Some(self.issuer.as_str()) {
            return Err(JwtError::UnknownIssuer);
        }
        let aud_ok = match peeked.claims.get("aud") {
            Some(serde_json::Value::String(a)) => *a == self.client_id,
            Some(serde_json::Value::Array(a)) => {
                a.iter().any(|v| v.as_str() == Some(&self.client_id))
            }
            _ => false,
        };
        if !aud_ok {
            return Err(JwtError::Audience);
        }
        let iat = peeked
            .claims
            .get("iat")
            .and_then(|v| v.as_i64())
            .ok_or(JwtError::Claim("iat"))?;
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX);
        let now = self.clock.unix_secs();
        // Fresh: signed for this call. An older signed answer (captured and
        // replayed by whoever sits between us and the AS) is refused.
        let max_age = i64::try_from(self.call_timeout.as_secs())
            .unwrap_or(i64::MAX)
            .saturating_add(leeway);
        if iat < now.saturating_sub(max_age) {
            return Err(JwtError::Claim("iat"));
        }
        if iat > now.saturating_add(leeway) {
            return Err(JwtError::NotYetValid);
        }
        match peeked.claims.get("token_introspection") {
            Some(v @ serde_json::Value::Object(_)) => {
                serde_json::to_vec(v).map_err(|_| JwtError::Claim("token_introspection"))
            }
            _ => Err(JwtError::Claim("token_introspection")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::clock::ManualClock;
    use jsonwebtoken::{EncodingKey, Header};

    // A P-256 key pair (PKCS#8) and its public JWK.
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJmLHPnKKvKHYDrzJ\n/6Nk4BdFOJdRgwY4PKQ4y0egfoWhRANCAATQ6eEE/4DvR8VDVLPX96m4ziTezmEC\nGjiWgM97g505by45c8xPLMr6sMw4EfDiuUjwz+HjsJLovD+SlPtU9fEI\n-----END PRIVATE KEY-----\n";
    const EC_JWK: &str = r#"{"kty":"EC","crv":"P-256","kid":"k1","x":"0OnhBP-A70fFQ1Sz1_epuM4k3s5hAho4loDPe4OdOW8","y":"LjlzzE8syvqwzDgR8OK5SPDP4eOwkui8P5KU-1T18Qg"}"#;
    const ISS: &str = "https://as.example";

    /// A key store already holding `EC_JWK` (no fetch).
    fn ec_jwks(settings: &JwtSettings, clock: &Arc<ManualClock>) -> Arc<Jwks> {
        let jwks = Arc::new(Jwks::new(
            settings.jwks.clone(),
            settings.jwks_refetch_min_interval,
            Duration::from_secs(1),
            &crate::http::tls::ClientTls::new(&[], None).unwrap(),
            clock.clone(),
        ));
        jwks.set_keys(
            crate::introspection::jwks::parse_jwks(format!(r#"{{"keys":[{EC_JWK}]}}"#).as_bytes())
                .unwrap(),
        );
        jwks
    }

    fn verifier(clock: Arc<ManualClock>) -> JwtVerifier {
        let settings = RawJwt {
            enabled: true,
            issuer: ISS.into(),
            jwks_url: "http://127.0.0.1:9/jwks".into(),
            ..RawJwt::default()
        }
        .settings("", false)
        .unwrap()
        .unwrap();
        let jwks = ec_jwks(&settings, &clock);
        JwtVerifier::new(settings, jwks, clock)
    }

    fn sign(typ: &str, claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.typ = Some(typ.into());
        h.kid = Some("k1".into());
        let der: String = EC_PRIVATE
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(der)
            .unwrap();
        let key = EncodingKey::from_ec_der(&der);
        jsonwebtoken::encode(&h, &claims, &key).unwrap()
    }

    fn claims(now: i64) -> serde_json::Value {
        serde_json::json!({"iss": ISS, "sub": "u1", "client_id": "app", "aud": "api",
            "scope": "read write", "iat": now, "exp": now + 600, "jti": "j1",
            "cnf": {"jkt": "abc"}})
    }

    /// RFC 9701: a signed answer must be fresh (signed within the call's
    /// timeout plus the leeway), so a captured one cannot be replayed later.
    #[tokio::test]
    async fn a_signed_answer_is_accepted_only_while_fresh() {
        let clock = Arc::new(ManualClock::default());
        let settings = RawJwt {
            issuer: ISS.into(),
            jwks_url: "http://127.0.0.1:9/jwks".into(),
            ..RawJwt::default()
        }
        .settings("", true)
        .unwrap()
        .unwrap();
        let jwks = ec_jwks(&settings, &clock);
        let signed = SignedAnswers::new(
            &settings,
            "tokengate",
            Duration::from_secs(2),
            jwks,
            clock.clone(),
        );
        let now = clock.unix_secs();
        let answer = |iat: i64| {
            sign(
                "token-introspection+jwt",
                serde_json::json!({"iss": ISS, "aud": "tokengate", "iat": iat,
                    "token_introspection": {"active": true, "sub": "u1"}}),
            )
        };
        assert!(signed.verify(answer(now).as_bytes()).await.is_ok());
        // 30 s leeway + 2 s timeout: 32 s old is the limit.
        assert!(signed.verify(answer(now - 32).as_bytes()).await.is_ok());
        assert!(matches!(
            signed.verify(answer(now - 33).as_bytes()).await,
            Err(JwtError::Claim("iat"))
        ));
        assert!(signed.verify(answer(now - 3600).as_bytes()).await.is_err());
    }

    #[tokio::test]
    async fn a_valid_token_becomes_an_active_answer_with_every_claim() {
        let clock = Arc::new(ManualClock::default());
        let v = verifier(clock.clone());
        let now = clock.unix_secs();
        let i = v.verify(&sign("at+jwt", claims(now))).await.unwrap();
        assert!(i.active);
        assert_eq!(i.scope.as_ref().map(Vec::len), Some(2));
        assert_eq!(i.client_id.as_ref().map(|c| c.as_str()), Some("app"));
        assert_eq!(i.aud, Some(vec!["api".to_owned()]));
        assert_eq!(i.exp, Some(now + 600));
        assert!(i.extra.contains_key("cnf"));
        assert!(v
            .verify(&sign("application/AT+JWT", claims(now)))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn refusals() {
        let clock = Arc::new(ManualClock::default());
        let v = verifier(clock.clone());
        let now = clock.unix_secs();
        let good = sign("at+jwt", claims(now));
        // Tampered payload (scope widened), same signature.
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut c = claims(now);
        c["scope"] = "admin".into();
        parts[1] = b64.encode(c.to_string());
        assert_eq!(
            v.verify(&parts.join(".")).await.err(),
            Some(JwtError::Signature)
        );
        // alg none.
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"at+jwt"}"#),
            b64.encode(claims(now).to_string())
        );
        assert_eq!(v.verify(&none).await.err(), Some(JwtError::Algorithm));
        // HS256 signed with the public key's bytes.
        let mut h = Header::new(Algorithm::HS256);
        h.typ = Some("at+jwt".into());
        h.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(
            &h,
            &claims(now),
            &EncodingKey::from_secret(EC_JWK.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&hs).await.err(), Some(JwtError::Algorithm));
        // Wrong typ from our issuer; right typ from another issuer.
        assert_eq!(
            v.verify(&sign("JWT", claims(now))).await.err(),
            Some(JwtError::WrongType)
        );
        let mut other = claims(now);
        other["iss"] = "https://evil.example".into();
        assert_eq!(
            v.verify(&sign("at+jwt", other)).await.err(),
            Some(JwtError::UnknownIssuer)
        );
        // Expired (no leeway), nbf beyond the leeway, iat missing.
        let mut c = claims(now);
        c["exp"] = (now - 1).into();
        assert_eq!(
            v.verify(&sign("at+jwt", c)).await.err(),
            Some(JwtError::Expired)
        );
        let mut c = claims(now);
        c["nbf"] = (now + 31).into();
        assert_eq!(
            v.verify(&sign("at+jwt", c)).await.err(),
            Some(JwtError::NotYetValid)
        );
        let mut c = claims(now);
        c["nbf"] = (now + 29).into();
        assert_eq!(v.verify(&sign("at+jwt", c)).await.unwrap().nbf, Some(now));
        let mut c = claims(now);
        c.as_object_mut().unwrap().remove("iat");
        assert_eq!(
            v.verify(&sign("at+jwt", c)).await.err(),
            Some(JwtError::Claim("iat"))
        );
        // crit.
        let crit = format!(
            "{}.{}.x",
            b64.encode(r#"{"alg":"ES256","typ":"at+jwt","crit":["b64"],"b64":false}"#),
            b64.encode(claims(now).to_string())
        );
        assert_eq!(v.verify(&crit).await.err(), Some(JwtError::Critical));
    }

    #[test]
    fn classification() {
        let clock = Arc::new(ManualClock::default());
        let v = verifier(clock.clone());
        let now = clock.unix_secs();
        assert!(matches!(v.classify("opaque-token"), Shape::Introspect));
        assert!(matches!(v.classify("a.b.c.d.e"), Shape::Introspect));
        let mut c = claims(now);
        c["iss"] = "https://other.example".into();
        assert!(matches!(v.classify(&sign("JWT", c)), Shape::Introspect));
        assert!(matches!(
            v.classify(&sign("at+jwt", claims(now))),
            Shape::Local(_)
        ));
    }

    #[test]
    fn settings_report_every_bad_key() {
        let raw = RawJwt {
            enabled: true,
            algorithms: vec!["none".into(), "HS256".into(), "ES256".into()],
            leeway: Duration::from_secs(3600),
            jwks_url: "ftp://x".into(),
            ..RawJwt::default()
        };
        let errors = raw.settings("", false).unwrap_err();
        let keys: Vec<_> = errors.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "jwt.algorithms",
                "jwt.algorithms",
                "jwt.leeway",
                "jwt.jwks_url",
                "jwt.issuer"
            ]
        );
        assert!(RawJwt::default().settings("", false).unwrap().is_none());
        let s = RawJwt::default()
            .settings("https://as", true)
            .unwrap()
            .unwrap();
        assert_eq!(s.jwks, JwksSource::Issuer("https://as".into()));
    }
}
