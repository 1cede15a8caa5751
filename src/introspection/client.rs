//! RFC 7662 token introspection: the `oauth2` crate builds and authenticates the
//! request; a pooled hyper-util client (http and https) carries it; our own
//! lenient [`Introspection`] type parses what real servers send.

use crate::secret::Secret;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full, Limited};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenResponse, BasicTokenType,
};
use oauth2::{
    AccessToken, AuthType, ClientId, EndpointMaybeSet, EndpointNotSet, RequestTokenError, Scope,
    StandardRevocableToken, TokenIntrospectionResponse,
};
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
}

/// `introspection.probe`: the start-up check of the introspection endpoint
/// (one call about a throwaway token; see `app::issuers::Issuer::run_probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMode {
    /// Probe, WARN on failure and retry with backoff; `/readyz` does not wait.
    Warn,
    /// Like `warn`, and `/readyz` answers 503 until one probe has succeeded.
    Require,
    /// No probe.
    Off,
}

/// `introspection.response_format`: plain JSON (RFC 7662), or a signed JWT
/// (RFC 9701) verified with the issuer's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    #[default]
    Json,
    Jwt,
}

/// `[introspection]`, validated: what the client needs to call the AS.
#[derive(Debug, Clone)]
pub struct IntrospectionSettings {
    /// `None` until discovery has found it (`[discovery] issuer`).
    pub url: Option<oauth2::IntrospectionUrl>,
    pub client_id: String,
    pub client_secret: Secret,
    pub auth_method: AuthMethod,
    pub timeout: Duration,
    /// Roots and the optional client certificate for the AS call.
    pub tls: crate::http::tls::ClientTls,
    pub probe: ProbeMode,
    /// `response_format = "jwt"`: the client gets its verifier from
    /// [`Introspector::with_signed_answers`].
    pub response_format: ResponseFormat,
}

/// Largest introspection response body we read. Real answers are < 2 KiB; an AS
/// (or a gateway in front of it) that streams more is broken, and we must not
/// buffer it all.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Largest error body (HTTP 400) we read for its `error` code. Real ones are a
/// few hundred bytes.
const MAX_ERROR_BODY_BYTES: usize = 4 * 1024;

/// Why the AS gave no introspection. Every variant but [`Self::TokenRejected`]
/// means "we do not know if the token is good": the caller turns it into 503,
/// never into 401 or an allow.
///
/// Which of them say the AS is *unhealthy* (and so count for the circuit
/// breaker, hence readiness) is `Outcome::of` (`introspection/breaker.rs`)'s business: only
/// those that no token can provoke. Anyone can send any token, so an answer
/// that may depend on the token must never open the breaker (issue 12, item 5).
#[derive(Debug, Clone, thiserror::Error)]
pub enum IntrospectError {
    #[error("introspection timed out after {0:?}")]
    Timeout(Duration),
    #[error("introspection endpoint unreachable: {0}")]
    Connect(String),
    #[error("authorization server rejected tokengate's client credentials (HTTP 401, or 400 invalid_client / unauthorized_client); check introspection.client_id / client_secret")]
    ClientUnauthorized,
    #[error("authorization server answered HTTP {0}")]
    Status(u16),
    /// HTTP 400 with an `error` code about the *token* (`invalid_request`,
    /// `invalid_token`, `unsupported_token_type`): the AS will not introspect
    /// this token, e.g. oidc-provider for any JWT-shaped token it did not
    /// issue. The token is not acceptable (401, like `active: false`); it
    /// says nothing about the AS's health (the client chose the token).
    #[error("authorization server refused to introspect this token ({0})")]
    TokenRejected(&'static str),
    /// An HTTP 4xx that may depend on the token we sent: 400 without a known
    /// `error` code, 413, 414, 422, ... We cannot tell what it means, so the
    /// request fails closed (503), but it says nothing about the AS's health.
    #[error("authorization server refused the introspection request (HTTP {0})")]
    Refused(u16),
    #[error("introspection response is not a valid RFC 7662 answer: {0}")]
    InvalidResponse(String),
    #[error("no introspection endpoint known yet (discovery has not succeeded)")]
    NoEndpoint,
    /// The issuer's signing keys (JWKS) are needed and cannot be fetched:
    /// for a JWT access token whose key we do not hold, or for an RFC 9701
    /// answer. We cannot tell whether the token is good: 503.
    #[error("the issuer's signing keys (JWKS) are unavailable: {0}")]
    KeysUnavailable(String),
    /// The circuit breaker is open after repeated failures: the AS was not called.
    #[error("authorization server circuit is open after repeated failures; not calling it")]
    CircuitOpen,
}

impl IntrospectError {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::ClientUnauthorized => "unauthorized",
            Self::Status(_) => "status",
            Self::TokenRejected(_) => "token_rejected",
            Self::Refused(_) => "refused",
            Self::InvalidResponse(_) => "invalid_response",
            Self::NoEndpoint => "no_endpoint",
            Self::KeysUnavailable(_) => "keys_unavailable",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

/// The transport error the `oauth2` crate sees from [`AsHttpClient`].
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Connect(String),
    #[error("HTTP {0}")]
    Status(u16),
    /// HTTP 400, with its RFC 6749 §5.2 `error` code when it is one we act on
    /// (see `known_error_code`); `None` for any other code or body.
    #[error("HTTP 400 ({})", .0.unwrap_or("no known error code"))]
    BadRequest(Option<&'static str>),
    #[error("response body: {0}")]
    Body(String),
    /// The keys to verify a signed answer are unavailable.
    #[error("{0}")]
    Keys(String),
}

/// The parsed introspection answer. Lenient where real servers disagree
/// (see `INTROSPECTION-SAMPLES.md`), strict where leniency would be unsafe:
/// `active` must be a JSON boolean, and a time claim that is present but not a
/// number fails the whole parse (treating it as absent would let the cache keep
/// the token for `max_ttl`). Also the fleet L2 wire format. The cache keeps
/// answers in their compact form, [`crate::introspection::answer::Answer`], which is what the
/// policy and the claims read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Introspection {
    pub active: bool,
    #[serde(
        default,
        deserialize_with = "de_scope",
        skip_serializing_if = "Option::is_none"
    )]
    pub scope: Option<Vec<Scope>>,
    #[serde(
        default,
        deserialize_with = "de_client_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_id: Option<ClientId>,
    #[serde(
        default,
        deserialize_with = "de_opt_stringish",
        skip_serializing_if = "Option::is_none"
    )]
    pub username: Option<String>,
    /// `token_type`, or Keycloak's `typ`; lower-cased; `null` means absent.
    #[serde(
        default,
        alias = "typ",
        deserialize_with = "de_token_type",
        skip_serializing_if = "Option::is_none"
    )]
    pub token_type: Option<BasicTokenType>,
    #[serde(
        default,
        deserialize_with = "de_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub exp: Option<i64>,
    #[serde(
        default,
        deserialize_with = "de_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub iat: Option<i64>,
    #[serde(
        default,
        deserialize_with = "de_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub nbf: Option<i64>,
    #[serde(
        default,
        deserialize_with = "de_opt_stringish",
        skip_serializing_if = "Option::is_none"
    )]
    pub sub: Option<String>,
    #[serde(
        default,
        deserialize_with = "de_string_or_seq",
        skip_serializing_if = "Option::is_none"
    )]
    pub aud: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "de_opt_stringish",
        skip_serializing_if = "Option::is_none"
    )]
    pub iss: Option<String>,
    #[serde(
        default,
        deserialize_with = "de_opt_stringish",
        skip_serializing_if = "Option::is_none"
    )]
    pub jti: Option<String>,
    /// Every other member, kept for policy checks (e.g. Hydra's `token_use`).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Introspection {
    pub fn inactive() -> Self {
        Self {
            active: false,
            scope: None,
            client_id: None,
            username: None,
            token_type: None,
            exp: None,
            iat: None,
            nbf: None,
            sub: None,
            aud: None,
            iss: None,
            jti: None,
            extra: serde_json::Map::new(),
        }
    }
}

/// A claim as header text, for `[identity.claims]` (see
/// [`crate::introspection::answer::Answer::claim_text`]), from `member`: one top-level member
/// as JSON. Strings as they are, numbers and booleans printed, arrays joined
/// with spaces, objects as JSON; `a.b` walks into nested objects when there is
/// no member literally named `a.b`. Only the asked-for member is converted, so
/// a cache hit does not re-serialise the whole answer.
pub(crate) fn claim_text_of(
    member: impl Fn(&str) -> Option<serde_json::Value>,
    name: &str,
) -> Option<String> {
    let value = claim_value(member, name)?;
    fn text(v: &serde_json::Value) -> Option<String> {
        match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(items) => {
                Some(items.iter().filter_map(text).collect::<Vec<_>>().join(" "))
            }
            other => Some(other.to_string()),
        }
    }
    text(&value)
}

/// A claim by name (`a.b` for nested), as [`claim_text_of`] finds it.
fn claim_value(
    member: impl Fn(&str) -> Option<serde_json::Value>,
    name: &str,
) -> Option<serde_json::Value> {
    match member(name) {
        Some(v) => Some(v),
        None => {
            let mut parts = name.split('.');
            let first = member(parts.next()?)?;
            parts.try_fold(first, |v, p| v.get(p).cloned())
        }
    }
}

/// Whether [`claim_text_of`] would join a list whose elements cannot be told
/// apart again: one that contains whitespace (the separator) or is empty.
/// `["staff admin"]` and `["staff", "admin"]` would both read `staff admin`.
pub(crate) fn claim_list_ambiguous_of(
    member: impl Fn(&str) -> Option<serde_json::Value>,
    name: &str,
) -> bool {
    fn ambiguous(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Array(items) => items.iter().any(|item| match item {
                serde_json::Value::Null => false,
                serde_json::Value::String(s) => s.is_empty() || s.contains(char::is_whitespace),
                serde_json::Value::Array(_) => true,
                other => other.to_string().contains(char::is_whitespace),
            }),
            _ => false,
        }
    }
    claim_value(member, name).is_some_and(|v| ambiguous(&v))
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    let v = Option::<serde_json::Value>::deserialize(d)?;
    let secs = match v {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(f64_secs)),
        Some(serde_json::Value::String(s)) => s.trim().parse::<i64>().ok().or_else(|| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(f64_secs)
        }),
        Some(_) => None,
    };
    secs.map(Some)
        .ok_or_else(|| D::Error::custom("a time claim must be a number of seconds"))
}

/// Floors a float timestamp. `exp = 100.9` means the token is dead at 100.9, so
/// flooring to 100 only ever shortens its life; never rounds up.
fn f64_secs(f: f64) -> i64 {
    // `as` saturates for out-of-range floats, which is what we want here.
    f.floor() as i64
}

fn de_scope<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Scope>>, D::Error> {
    Ok(de_string_or_seq(d)?.map(|items| {
        items
            .iter()
            .flat_map(|s| s.split_ascii_whitespace())
            .map(|s| Scope::new(s.to_owned()))
            .collect()
    }))
}

fn de_string_or_seq<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(s)) => Some(vec![s]),
        Some(OneOrMany::Many(v)) => Some(v),
    })
}

fn de_client_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ClientId>, D::Error> {
    Ok(de_opt_stringish(d)?.map(ClientId::new))
}

/// A string, or a number that some servers use for ids; `null` is absent.
fn de_opt_stringish<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(D::Error::custom("expected a string")),
    }
}

fn de_token_type<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BasicTokenType>, D::Error> {
    Ok(
        Option::<String>::deserialize(d)?.map(|s| match s.to_ascii_lowercase().as_str() {
            "bearer" => BasicTokenType::Bearer,
            "mac" => BasicTokenType::Mac,
            other => BasicTokenType::Extension(other.to_owned()),
        }),
    )
}

impl TokenIntrospectionResponse for Introspection {
    type TokenType = BasicTokenType;
    fn active(&self) -> bool {
        self.active
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scope.as_ref()
    }
    fn client_id(&self) -> Option<&ClientId> {
        self.client_id.as_ref()
    }
    fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }
    fn token_type(&self) -> Option<&BasicTokenType> {
        self.token_type.as_ref()
    }
    fn exp(&self) -> Option<DateTime<Utc>> {
        self.exp.and_then(|s| DateTime::from_timestamp(s, 0))
    }
    fn iat(&self) -> Option<DateTime<Utc>> {
        self.iat.and_then(|s| DateTime::from_timestamp(s, 0))
    }
    fn nbf(&self) -> Option<DateTime<Utc>> {
        self.nbf.and_then(|s| DateTime::from_timestamp(s, 0))
    }
    fn sub(&self) -> Option<&str> {
        self.sub.as_deref()
    }
    fn aud(&self) -> Option<&Vec<String>> {
        self.aud.as_ref()
    }
    fn iss(&self) -> Option<&str> {
        self.iss.as_deref()
    }
    fn jti(&self) -> Option<&str> {
        self.jti.as_deref()
    }
}

/// Adapts our connection pool to the `oauth2` crate's `AsyncHttpClient`.
/// Non-200 statuses become a [`TransportError::Status`] here, because the crate
/// would otherwise fold the status into an opaque parse error and we need to tell
/// "our credentials are wrong" (401) from other failures.
/// With `signed`, asks for an RFC 9701 answer and hands the oauth2 crate the
/// verified `token_introspection` member as the JSON body (anything else
/// that comes back with a 200 is a `Body` error: an AS failure, never an allow).
struct AsHttpClient<'a> {
    http: &'a super::connections::AsConnections,
    signed: Option<&'a dyn AnswerVerifier>,
}

impl<'c> oauth2::AsyncHttpClient<'c> for AsHttpClient<'_> {
    type Error = TransportError;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<oauth2::HttpResponse, TransportError>>
                + Send
                + 'c,
        >,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            // `[tracing]`: the introspection span's `traceparent` for the AS.
            crate::http::trace::inject(&mut parts.headers);
            if self.signed.is_some() {
                parts.headers.insert(
                    http::header::ACCEPT,
                    http::HeaderValue::from_static(INTROSPECTION_JWT),
                );
            }
            let pool = self.http.for_uri(&parts.uri).ok_or_else(|| {
                TransportError::Connect("the introspection URL names no scheme and host".into())
            })?;
            let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
            let response = pool
                .send(request)
                .await
                .map_err(|e| TransportError::Connect(crate::http::client::error_chain(&e)))?;
            let status = response.status();
            if status == http::StatusCode::BAD_REQUEST {
                // A 400's `error` code tells "this token is not acceptable"
                // from "your credentials are wrong" (RFC 6749 §5.2). A body we
                // cannot read is an unknown code.
                let code = Limited::new(response.into_body(), MAX_ERROR_BODY_BYTES)
                    .collect()
                    .await
                    .ok()
                    .and_then(|b| error_code(&b.to_bytes()));
                return Err(TransportError::BadRequest(code));
            }
            if status != http::StatusCode::OK {
                return Err(TransportError::Status(status.as_u16()));
            }
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| TransportError::Body(e.to_string()))?
                .to_bytes();
            match self.signed {
                None => Ok(http::Response::from_parts(parts, body.to_vec())),
                Some(signed) => {
                    let json = signed_answer(signed, &parts.headers, &body).await?;
                    let mut parts = parts;
                    parts.headers.insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok(http::Response::from_parts(parts, json))
                }
            }
        })
    }
}

/// The JSON answer inside an RFC 9701 response: the content type must say
/// `application/token-introspection+jwt` (an AS that ignored our `Accept`
/// and sent plain JSON is not trusted: the answer is unsigned), and the JWS
/// must verify ([`AnswerVerifier`]).
async fn signed_answer(
    signed: &dyn AnswerVerifier,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<Vec<u8>, TransportError> {
    let media_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if !media_type.eq_ignore_ascii_case(INTROSPECTION_JWT) {
        return Err(TransportError::Body(
            "the answer is not a signed introspection answer (content type is not application/token-introspection+jwt)".into(),
        ));
    }
    signed.verify_answer(body).await.map_err(|e| match e {
        AnswerRefused::KeysUnavailable(m) => TransportError::Keys(m),
        AnswerRefused::Invalid(why) => {
            TransportError::Body(format!("signed introspection answer refused: {why}"))
        }
    })
}

/// The media type of an RFC 9701 signed introspection answer.
pub const INTROSPECTION_JWT: &str = "application/token-introspection+jwt";

/// The check of an RFC 9701 signed answer (`introspection::jwt::SignedAnswers`
/// implements it). A trait here, so that the RFC 7662 client does not depend
/// on the JOSE code that depends on it.
pub trait AnswerVerifier: Send + Sync {
    /// The `token_introspection` member of a verified answer, as JSON.
    fn verify_answer<'a>(
        &'a self,
        jws: &'a [u8],
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<u8>, AnswerRefused>> + Send + 'a>,
    >;
}

/// Why a signed answer was not accepted (both are AS failures: 503).
#[derive(Debug)]
pub enum AnswerRefused {
    /// The issuer's keys cannot be fetched.
    KeysUnavailable(String),
    /// Anything else: a bad signature, `iss`, `aud`, `typ`, ...
    Invalid(String),
}

/// The `error` member of an OAuth error body, if it is a code we act on. Only
/// these fixed strings leave this function: whatever else the AS wrote (it may
/// echo the token) is never kept, logged or compared further.
fn error_code(body: &[u8]) -> Option<&'static str> {
    #[derive(Deserialize)]
    struct OAuthError {
        error: String,
    }
    known_error_code(&serde_json::from_slice::<OAuthError>(body).ok()?.error)
}

/// The RFC 6749 §5.2 / RFC 7009 §2.2.1 codes that decide how a 400 is read.
fn known_error_code(code: &str) -> Option<&'static str> {
    [
        "invalid_request",
        "invalid_token",
        "unsupported_token_type",
        "invalid_client",
        "unauthorized_client",
    ]
    .into_iter()
    .find(|known| *known == code)
}

type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    BasicTokenResponse,
    Introspection,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointNotSet,
    EndpointNotSet,
>;

/// Consecutive introspection 404s that make us re-run discovery: the AS has
/// probably moved its endpoint.
const REDISCOVER_AFTER_404S: u32 = 3;

/// The RFC 7662 client. The endpoint can be swapped at run time (discovery
/// refresh); everything else is fixed at start-up.
pub struct Introspector {
    oauth: std::sync::RwLock<Arc<OAuthClient>>,
    http: super::connections::AsConnections,
    timeout: Duration,
    not_found_streak: AtomicU32,
    /// `response_format = "jwt"`: the verifier of signed answers.
    signed: Option<Arc<dyn AnswerVerifier>>,
    /// Woken after repeated 404s; the discovery task listens.
    pub rediscover: Notify,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let oauth = self.client();
        f.debug_struct("Introspector")
            .field(
                "url",
                &oauth.introspection_url().map(|u| u.as_str().to_owned()),
            )
            .field("client_id", &oauth.client_id().as_str())
            .field("client_secret", &"[redacted]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Introspector {
    pub fn new(settings: &IntrospectionSettings) -> Self {
        let auth_type = match settings.auth_method {
            AuthMethod::ClientSecretBasic => AuthType::BasicAuth,
            AuthMethod::ClientSecretPost => AuthType::RequestBody,
        };
        let oauth = oauth2::Client::new(ClientId::new(settings.client_id.clone()))
            .set_client_secret(oauth2::ClientSecret::new(
                settings.client_secret.expose().to_owned(),
            ))
            .set_auth_type(auth_type)
            .set_introspection_url_option(settings.url.clone());
        Self {
            oauth: std::sync::RwLock::new(Arc::new(oauth)),
            http: super::connections::AsConnections::new(crate::http::client::connector(
                settings.timeout,
                &settings.tls,
                false,
            )),
            timeout: settings.timeout,
            not_found_streak: AtomicU32::new(0),
            signed: None,
            rediscover: Notify::new(),
        }
    }

    /// Asks for RFC 9701 signed answers and accepts only those that `signed`
    /// verifies (`introspection.response_format = "jwt"`).
    pub fn with_signed_answers(mut self, signed: Arc<dyn AnswerVerifier>) -> Self {
        self.signed = Some(signed);
        self
    }

    fn client(&self) -> Arc<OAuthClient> {
        // A poisoned lock only means a writer panicked mid-swap of an `Arc`,
        // which cannot leave it half-written: keep using it.
        self.oauth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Points the client at a new endpoint (discovery refresh).
    pub fn set_url(&self, url: oauth2::IntrospectionUrl) {
        let mut guard = self.oauth.write().unwrap_or_else(|e| e.into_inner());
        let updated = (**guard).clone().set_introspection_url_option(Some(url));
        *guard = Arc::new(updated);
    }

    pub fn url(&self) -> Option<String> {
        self.client()
            .introspection_url()
            .map(|u| u.as_str().to_owned())
    }

    /// One introspection call, bounded by the configured timeout as a whole
    /// (connect, TLS, request, and reading the body).
    pub async fn introspect(&self, token: &str) -> Result<Introspection, IntrospectError> {
        let token = AccessToken::new(token.to_owned());
        let http = AsHttpClient {
            http: &self.http,
            signed: self.signed.as_deref(),
        };
        let oauth = self.client();
        let request = oauth
            .introspect(&token)
            .map_err(|_| IntrospectError::NoEndpoint)?
            .set_token_type_hint("access_token");
        let span = crate::http::trace::child(crate::http::trace::Call::Introspection);
        let call = tokio::time::timeout(self.timeout, request.request_async(&http));
        let result = match crate::http::trace::within(span.as_ref(), call).await {
            Err(_) => Err(IntrospectError::Timeout(self.timeout)),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(map_oauth_error(e)),
        };
        crate::http::trace::record_outcome(
            span.as_ref(),
            result.is_ok().then_some(200),
            result.as_ref().err().map(IntrospectError::kind),
        );
        if matches!(result, Err(IntrospectError::Status(404))) {
            if self.not_found_streak.fetch_add(1, Ordering::Relaxed) + 1 >= REDISCOVER_AFTER_404S {
                self.not_found_streak.store(0, Ordering::Relaxed);
                self.rediscover.notify_one();
            }
        } else {
            self.not_found_streak.store(0, Ordering::Relaxed);
        }
        result
    }
}

impl Introspector {
    /// Asks the AS about a token that nobody has (random, opaque): `true` if
    /// it gives a well-formed answer (`active: false`, normally), i.e. the AS
    /// is up and introspecting. The circuit breaker asks this before a
    /// failure that one token may have caused opens it. Not counted in the
    /// introspection metrics (it is not a client's request).
    pub async fn canary(&self) -> bool {
        self.ask_throwaway().await.is_ok()
    }

    /// The start-up probe (`introspection.probe`): the canary's call, with the
    /// reason when it fails. A well-formed answer (normally `active: false`)
    /// proves the URL and the client credentials. So does a 400 about the
    /// *token* (`invalid_token` ...): the AS authenticated us and then refused
    /// the throwaway token, which the request path also reads as "inactive".
    /// Like the canary, it bypasses the breaker and the metrics.
    pub async fn probe(&self) -> Result<(), IntrospectError> {
        match self.ask_throwaway().await {
            Ok(_) | Err(IntrospectError::TokenRejected(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One introspection of a random token that nobody has.
    async fn ask_throwaway(&self) -> Result<Introspection, IntrospectError> {
        use sha2::Digest;
        static N: AtomicU32 = AtomicU32::new(0);
        let nonce = format!(
            "{:?}{}{:p}",
            crate::resilience::clock::Clock::now(&crate::resilience::clock::SystemClock),
            N.fetch_add(1, Ordering::Relaxed),
            self
        );
        let token = format!(
            "tokengate-canary-{}",
            hex::encode(sha2::Sha256::digest(nonce.as_bytes()))
        );
        self.introspect(&token).await
    }
}

/// What an operator should check when the start-up probe fails: names the keys.
pub fn probe_advice(e: &IntrospectError, url: Option<&str>) -> String {
    let url = url.unwrap_or("(none yet)");
    match e {
        IntrospectError::ClientUnauthorized => format!(
            "the authorization server at {url} rejected tokengate's client credentials: \
             check introspection.client_id and introspection.client_secret \
             (or client_secret_file / TOKENGATE_INTROSPECTION__CLIENT_SECRET), \
             and introspection.auth_method"
        ),
        IntrospectError::Connect(m) => {
            format!("cannot connect to introspection.url {url} ({m}): check the host and port")
        }
        IntrospectError::Timeout(t) => format!(
            "introspection.url {url} did not answer within introspection.timeout ({t:?})"
        ),
        IntrospectError::Status(404) => format!(
            "introspection.url {url} answers 404 Not Found: is it the introspection endpoint (RFC 7662)?"
        ),
        IntrospectError::Status(s) | IntrospectError::Refused(s) => {
            format!("introspection.url {url} answered HTTP {s}")
        }
        IntrospectError::InvalidResponse(m) => format!(
            "introspection.url {url} did not give an RFC 7662 answer ({m}): is it the introspection endpoint?"
        ),
        IntrospectError::NoEndpoint => {
            "no introspection endpoint known yet (discovery has not succeeded)".to_owned()
        }
        other => format!("introspection.url {url}: {other}"),
    }
}

fn map_oauth_error(e: RequestTokenError<TransportError, BasicErrorResponse>) -> IntrospectError {
    match e {
        // RFC 7662 §2.3: 401 is about the caller's credentials, never the
        // token (an unknown token is `200 {"active":false}`).
        RequestTokenError::Request(TransportError::Status(401)) => {
            IntrospectError::ClientUnauthorized
        }
        RequestTokenError::Request(TransportError::BadRequest(code)) => match code {
            Some(code @ ("invalid_request" | "invalid_token" | "unsupported_token_type")) => {
                IntrospectError::TokenRejected(code)
            }
            Some("invalid_client" | "unauthorized_client") => IntrospectError::ClientUnauthorized,
            _ => IntrospectError::Refused(400),
        },
        // 4xx that no token can cause: wrong endpoint or method, our client
        // forbidden, the AS asking us to slow down. They count as AS failures.
        RequestTokenError::Request(TransportError::Status(s @ (403 | 404 | 405 | 408 | 429))) => {
            IntrospectError::Status(s)
        }
        // Any other 4xx may come from what we sent, i.e. from the token (its
        // length: 413, 414, 431; its content: 422 ...).
        RequestTokenError::Request(TransportError::Status(s @ 400..=499)) => {
            IntrospectError::Refused(s)
        }
        RequestTokenError::Request(TransportError::Status(s)) => IntrospectError::Status(s),
        RequestTokenError::Request(TransportError::Connect(m)) => IntrospectError::Connect(m),
        RequestTokenError::Request(TransportError::Body(m)) => IntrospectError::InvalidResponse(m),
        RequestTokenError::Request(TransportError::Keys(m)) => IntrospectError::KeysUnavailable(m),
        // Only reached for non-200s, which `AsHttpClient` already turned into errors.
        RequestTokenError::ServerResponse(r) => {
            IntrospectError::InvalidResponse(format!("error response: {}", r.error()))
        }
        // Report where the body is wrong, never serde's message: it quotes the
        // offending value, and an AS that echoes the token (or any claim) back in
        // a mistyped member would put it in our logs.
        RequestTokenError::Parse(err, _body) => {
            let inner = err.inner();
            let what = match inner.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Io => "not JSON",
                serde_json::error::Category::Eof => "truncated JSON",
                serde_json::error::Category::Data => "a member is missing or has the wrong type",
            };
            IntrospectError::InvalidResponse(format!(
                "{what} at `{}` (line {}, column {})",
                err.path(),
                inner.line(),
                inner.column()
            ))
        }
        RequestTokenError::Other(m) => IntrospectError::InvalidResponse(m),
    }
}

impl IntrospectionSettings {
    /// Start-up step: fills `url` from `[discovery]` when it is empty. `main`
    /// and tests call this before `App::new`; an error must stop start-up.
    pub async fn resolve_endpoint(
        &mut self,
        discovery: Option<&crate::introspection::discovery::DiscoverySettings>,
    ) -> Result<(), crate::introspection::discovery::DiscoveryError> {
        if self.url.is_some() {
            return Ok(());
        }
        if let Some(d) = discovery {
            let url = crate::introspection::discovery::discover(&d.issuer, self.timeout, &self.tls)
                .await?;
            tracing::info!(issuer = %d.issuer, endpoint = %url.as_str(), "discovered introspection endpoint");
            self.url = Some(url);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::introspection::answer::Answer;

    fn parse(json: &str) -> Result<Introspection, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn real_server_shapes_parse() {
        // panva/oidc-provider: no sub, aud a string.
        let i = parse(r#"{"active":true,"client_id":"app","exp":1795793393,"iat":1795792793,"iss":"http://127.0.0.1:19000","aud":"urn:lab:api","scope":"read","token_type":"Bearer"}"#).unwrap();
        assert!(i.active);
        assert_eq!(i.aud, Some(vec!["urn:lab:api".to_owned()]));
        assert_eq!(i.token_type, Some(BasicTokenType::Bearer));
        assert_eq!(Answer::from(i.clone()).scope_string(), "read");
        // Keycloak: typ instead of token_type, nbf 0, nested objects kept.
        let i = parse(r#"{"active":true,"exp":1485492229,"nbf":0,"typ":"Bearer","aud":"proxy","sub":"e891","client_id":"proxy","realm_access":{"roles":["uma_authorization"]},"allowed-origins":[]}"#).unwrap();
        assert_eq!(i.token_type, Some(BasicTokenType::Bearer));
        assert_eq!(i.nbf, Some(0));
        assert!(i.extra.contains_key("realm_access"));
        // Hydra: aud array, token_use kept in extra.
        let i = parse(r#"{"active":true,"aud":["a","b"],"scope":"x y","token_use":"refresh_token","ext":{"k":1}}"#).unwrap();
        assert_eq!(i.aud.as_ref().map(Vec::len), Some(2));
        assert_eq!(
            i.extra.get("token_use").and_then(|v| v.as_str()),
            Some("refresh_token")
        );
    }

    #[test]
    fn defensive_parsing() {
        let i = parse(r#"{"active":true,"exp":1795793393.7,"iat":"1795792793","nbf":1.0e9,"scope":["read","write"],"token_type":null,"client_id":42}"#).unwrap();
        assert_eq!(
            i.exp,
            Some(1795793393),
            "float exp is floored, never rounded up"
        );
        assert_eq!(i.iat, Some(1795792793));
        assert_eq!(i.nbf, Some(1_000_000_000));
        assert_eq!(Answer::from(i.clone()).scope_string(), "read write");
        assert_eq!(i.token_type, None);
        assert_eq!(i.client_id.as_ref().map(|c| c.as_str()), Some("42"));
        assert!(!parse(r#"{"active":false}"#).unwrap().active);
    }

    #[test]
    fn error_answers_are_classified_by_who_could_cause_them() {
        use IntrospectError as E;
        let map = |t| map_oauth_error(RequestTokenError::Request(t));
        let bad = |body: &str| map(TransportError::BadRequest(error_code(body.as_bytes())));
        for code in ["invalid_request", "invalid_token", "unsupported_token_type"] {
            let body = format!(r#"{{"error":"{code}","error_description":"x"}}"#);
            assert!(
                matches!(bad(&body), E::TokenRejected(c) if c == code),
                "{code}"
            );
        }
        for body in [
            r#"{"error":"invalid_client"}"#,
            r#"{"error":"unauthorized_client"}"#,
        ] {
            assert!(matches!(bad(body), E::ClientUnauthorized), "{body}");
        }
        for body in [
            r#"{"error":"invalid_grant"}"#,
            r#"{"error":"INVALID_TOKEN"}"#,
            r#"{"error":["invalid_token"]}"#,
            r#"{"message":"invalid_token"}"#,
            "<html>400 Bad Request</html>",
            "",
        ] {
            assert!(matches!(bad(body), E::Refused(400)), "{body}");
        }
        assert!(matches!(
            map(TransportError::Status(401)),
            E::ClientUnauthorized
        ));
        for s in [403, 404, 405, 408, 429, 500, 502, 503, 302] {
            assert!(
                matches!(map(TransportError::Status(s)), E::Status(x) if x == s),
                "{s}"
            );
        }
        for s in [409, 413, 414, 422, 431] {
            assert!(
                matches!(map(TransportError::Status(s)), E::Refused(x) if x == s),
                "{s}"
            );
        }
    }

    #[test]
    fn unsafe_shapes_fail() {
        for (why, json) in [
            ("active is required", r#"{"scope":"x"}"#),
            (
                "active must be a boolean, not a string",
                r#"{"active":"true"}"#,
            ),
            (
                "a garbage exp must not be read as 'no exp'",
                r#"{"active":true,"exp":"soon"}"#,
            ),
            ("an object exp must fail", r#"{"active":true,"exp":{}}"#),
            ("not json at all", "<html>bad gateway</html>"),
        ] {
            assert!(parse(json).is_err(), "should fail because {why}");
        }
    }
}
