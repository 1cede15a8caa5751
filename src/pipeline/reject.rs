//! Every way a request can fail, and the one place that turns a failure into a
//! status, an RFC 6750 challenge and a JSON body. The `match` in
//! [`ProxyError::rejection`] is exhaustive on purpose: a new variant does not
//! compile until someone decides its status, and `mapping_table` pins them.

use crate::http::Body;
use crate::introspection::client::IntrospectError;
use crate::pipeline::front_proxy::ForwardAuthError;
use crate::policy::binding::mtls::ClientCertError;
use crate::policy::binding::BindingError;
use crate::policy::{Deny, RouteError};
use crate::token::TokenError;
use crate::upstream::forward;
use crate::upstream::forward::{ForwardError, OverrideError};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No `Authorization: Bearer` at all (absent, or another scheme).
    #[error("no bearer credentials")]
    NoCredentials,
    #[error("malformed credentials: {0}")]
    Token(#[from] TokenError),
    #[error("access denied: {0}")]
    Denied(#[from] Deny),
    #[error("authorization server failure: {0}")]
    Introspection(#[from] IntrospectError),
    #[error(transparent)]
    Upstream(#[from] ForwardError),
    #[error("CONNECT is not supported")]
    ConnectMethod,
    /// The request body is longer than `limits.max_body_bytes`.
    #[error("request body too large")]
    BodyTooLarge,
    /// The request's path, method or host could be read as another route's.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// Forward-auth mode: the front proxy's description of the original request is unusable.
    #[error("bad forward-auth request: {0}")]
    ForwardAuth(#[from] ForwardAuthError),
    /// `forwarding.method_override = "route"`: the override cannot be routed on.
    #[error(transparent)]
    MethodOverride(#[from] OverrideError),
    /// The token is bound to a sender (DPoP key, client certificate) this
    /// request did not prove to be. The second field is the challenge's
    /// `algs` when DPoP is enabled (`None`: the challenge names Bearer only).
    #[error("sender binding: {0}")]
    Binding(BindingError, Option<std::sync::Arc<str>>),
    /// A trusted proxy's `mtls.client_cert_header` cannot be read.
    #[error("bad client certificate header: {0}")]
    ClientCert(#[from] ClientCertError),
    /// gRPC ext_authz: the `CheckRequest` does not describe an HTTP request.
    #[error("bad ext_authz check request: {0}")]
    ExtAuthz(#[from] CheckRequestError),
}

/// The RFC 6750 error code in the challenge, when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm="…"` with no error: the request carried no credentials.
    Bare,
    InvalidRequest,
    InvalidToken,
    /// 403 with `scope="…"` naming what the route requires (RFC 6750 §3.1).
    InsufficientScope,
    /// RFC 9449 §7.1: the DPoP proof is missing or invalid.
    InvalidDpopProof,
    /// RFC 9449 §9: retry with the nonce in `DPoP-Nonce`.
    UseDpopNonce,
}

/// The DPoP scheme's part of a challenge (RFC 9449 §7.1): `DPoP algs="…"`
/// instead of `Bearer`, and the nonce to retry with (`DPoP-Nonce`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopChallenge {
    pub algs: std::sync::Arc<str>,
    pub nonce: Option<String>,
}

/// What the client gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    /// JSON `error`.
    pub error: &'static str,
    /// JSON `error_description` (and the challenge's, when there is a challenge).
    pub description: String,
    pub challenge: Option<Challenge>,
    /// Sends `Retry-After`: the failure is ours or the AS's, and will pass.
    pub retry: bool,
    /// The challenge's `scope` attribute (insufficient_scope only).
    pub scope: Option<String>,
    /// `Some`: the challenge names the DPoP scheme (a binding failure).
    pub dpop: Option<DpopChallenge>,
}

impl ProxyError {
    pub fn rejection(&self) -> Rejection {
        use StatusCode as S;
        let r = |status, error, description: &str, challenge, retry| Rejection {
            status,
            error,
            description: description.to_owned(),
            challenge,
            retry,
            scope: None,
            dpop: None,
        };
        match self {
            Self::NoCredentials => r(
                S::UNAUTHORIZED,
                "unauthorized",
                "a bearer token is required",
                Some(Challenge::Bare),
                false,
            ),
            Self::Token(e) => match e {
                TokenError::MultipleHeaders
                | TokenError::NotAscii
                | TokenError::Empty
                | TokenError::BadSeparator
                | TokenError::BadCharacters
                | TokenError::TooLong
                | TokenError::MultipleSources => r(
                    S::BAD_REQUEST,
                    "invalid_request",
                    &e.to_string(),
                    Some(Challenge::InvalidRequest),
                    false,
                ),
            },
            Self::Denied(d) => {
                let invalid = |description| {
                    r(
                        S::UNAUTHORIZED,
                        "invalid_token",
                        description,
                        Some(Challenge::InvalidToken),
                        false,
                    )
                };
                match d {
                    Deny::Inactive => invalid("token is not active"),
                    Deny::Expired => invalid("token expired"),
                    Deny::NotYetValid => invalid("token is not valid yet"),
                    Deny::NotAccessToken => invalid("token is not an access token"),
                    Deny::UnsafeIdentity(_) => invalid("token's identity cannot be passed on"),
                    // One description for all three, so a probe cannot map out
                    // which of issuer, audience and client the policy checks.
                    Deny::WrongIssuer | Deny::WrongAudience | Deny::ClientNotAllowed => {
                        invalid("token is not valid for this resource")
                    }
                    Deny::InsufficientScope { required } => Rejection {
                        scope: Some(required.clone()),
                        ..r(
                            S::FORBIDDEN,
                            "insufficient_scope",
                            "token lacks a required scope",
                            Some(Challenge::InsufficientScope),
                            false,
                        )
                    },
                }
            }
            // The client did nothing wrong and its token may well be good: never
            // 401 (clients would throw the token away), never allow.
            Self::Introspection(e) => match e {
                // Except when the AS said that the token is not acceptable
                // (`server::authorize` turns this into an inactive answer
                // first; same text, so the two cannot be told apart).
                IntrospectError::TokenRejected(_) => r(
                    S::UNAUTHORIZED,
                    "invalid_token",
                    "token is not active",
                    Some(Challenge::InvalidToken),
                    false,
                ),
                IntrospectError::Timeout(_)
                | IntrospectError::Connect(_)
                | IntrospectError::ClientUnauthorized
                | IntrospectError::Status(_)
                | IntrospectError::Refused(_)
                | IntrospectError::InvalidResponse(_)
                | IntrospectError::NoEndpoint
                | IntrospectError::KeysUnavailable(_)
                | IntrospectError::CircuitOpen => r(
                    S::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the authorization server could not be reached; retry later",
                    None,
                    true,
                ),
            },
            Self::Upstream(e) => match e {
                // A 101 we did not ask for is the upstream misbehaving: 502,
                // and the client never sees the switch.
                ForwardError::Connect(_)
                | ForwardError::Failed(_)
                | ForwardError::UnexpectedUpgrade(_) => r(
                    S::BAD_GATEWAY,
                    "bad_gateway",
                    "the upstream service is unavailable",
                    None,
                    false,
                ),
                ForwardError::Timeout(_) => r(
                    S::GATEWAY_TIMEOUT,
                    "gateway_timeout",
                    "the upstream service did not answer in time",
                    None,
                    false,
                ),
                ForwardError::BadTarget => r(
                    S::BAD_REQUEST,
                    "invalid_request",
                    "the request target must be an absolute path",
                    None,
                    false,
                ),
                ForwardError::BadBody(_) => r(
                    S::BAD_REQUEST,
                    "invalid_request",
                    "the request body is malformed or was cut short",
                    None,
                    false,
                ),
            },
            Self::ConnectMethod => r(
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "CONNECT is not supported",
                None,
                false,
            ),
            Self::ForwardAuth(e) => match e {
                ForwardAuthError::BadUri(_)
                | ForwardAuthError::BadMethod(_)
                | ForwardAuthError::OutsidePrefix
                | ForwardAuthError::Missing(_)
                | ForwardAuthError::Repeated(_)
                | ForwardAuthError::TwoConventions(..) => r(
                    S::BAD_REQUEST,
                    "invalid_request",
                    &e.to_string(),
                    None,
                    false,
                ),
            },
            Self::ExtAuthz(e) => match e {
                CheckRequestError::NoHttpRequest
                | CheckRequestError::BadMethod
                | CheckRequestError::BadPath
                | CheckRequestError::BadHeader => r(
                    S::BAD_REQUEST,
                    "invalid_request",
                    &e.to_string(),
                    None,
                    false,
                ),
            },
            Self::MethodOverride(e) => match e {
                OverrideError::NotPost
                | OverrideError::Unclear
                | OverrideError::NotStrippable => r(
                    S::BAD_REQUEST,
                    "invalid_request",
                    &e.to_string(),
                    None,
                    false,
                ),
            },
            // The front proxy's fault, not the client's credentials: no challenge.
            Self::ClientCert(e) => match e {
                ClientCertError::Repeated
                | ClientCertError::NotText
                | ClientCertError::BadPercent
                | ClientCertError::BadPem
                | ClientCertError::BadXfcc(_)
                | ClientCertError::HashMismatch => r(
                    S::BAD_REQUEST,
                    "invalid_request",
                    &e.to_string(),
                    None,
                    false,
                ),
            },
            Self::BodyTooLarge => r(
                S::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request body is larger than this service accepts",
                None,
                false,
            ),
            Self::Binding(e, algs) => {
                let (status, error, challenge, retry) = match e {
                    BindingError::DpopRequired
                    | BindingError::NotDpopBound
                    | BindingError::Unsupported
                    | BindingError::CertificateMissing
                    | BindingError::CertificateMismatch => (
                        S::UNAUTHORIZED,
                        "invalid_token",
                        Some(Challenge::InvalidToken),
                        false,
                    ),
                    BindingError::Proof(_) => (
                        S::UNAUTHORIZED,
                        "invalid_dpop_proof",
                        Some(Challenge::InvalidDpopProof),
                        false,
                    ),
                    BindingError::UseNonce(_) => (
                        S::UNAUTHORIZED,
                        "use_dpop_nonce",
                        Some(Challenge::UseDpopNonce),
                        false,
                    ),
                    // Like an AS outage: never a 401 (the client would drop
                    // a good token), never an allow.
                    BindingError::ReplayCheckUnavailable => (
                        S::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        None,
                        true,
                    ),
                };
                let dpop = match (algs, e.is_dpop(), challenge) {
                    (Some(algs), true, Some(_)) => Some(DpopChallenge {
                        algs: algs.clone(),
                        nonce: match e {
                            BindingError::UseNonce(n) => Some(n.clone()),
                            _ => None,
                        },
                    }),
                    _ => None,
                };
                Rejection {
                    dpop,
                    ..r(status, error, &e.to_string(), challenge, retry)
                }
            }
            Self::Route(e) => r(
                S::BAD_REQUEST,
                "invalid_request",
                match e {
                    RouteError::AmbiguousPath => {
                        "the request path is ambiguous (its encoding, dot segments, ';' parameters, case or character forms change which rule applies)"
                    }
                    RouteError::MethodCase => {
                        "methods are case-sensitive: use the upper-case method name"
                    }
                    RouteError::InvalidHost => "the Host is not a valid host name",
                    RouteError::DuplicateHost => "the request has more than one Host",
                    RouteError::HostMismatch => {
                        "the Host differs from the authority of the request target"
                    }
                },
                None,
                false,
            ),
        }
    }
}

impl Rejection {
    /// The `WWW-Authenticate` value (RFC 6750 §3).
    pub fn www_authenticate(&self, realm: &str) -> Option<String> {
        let code = match self.challenge? {
            Challenge::Bare => return Some(format!("Bearer realm=\"{realm}\"")),
            Challenge::InvalidRequest => "invalid_request",
            Challenge::InvalidToken => "invalid_token",
            Challenge::InsufficientScope => "insufficient_scope",
            Challenge::InvalidDpopProof => "invalid_dpop_proof",
            Challenge::UseDpopNonce => "use_dpop_nonce",
        };
        // error_description must not contain '"' or '\' (RFC 6750 §3); ours are
        // fixed strings, but keep the guarantee local.
        let desc: String = self
            .description
            .chars()
            .filter(|c| *c != '"' && *c != '\\')
            .collect();
        let scheme = match &self.dpop {
            Some(d) => format!("DPoP realm=\"{realm}\", algs=\"{}\"", d.algs),
            None => format!("Bearer realm=\"{realm}\""),
        };
        let mut v = format!("{scheme}, error=\"{code}\", error_description=\"{desc}\"");
        if let Some(scope) = &self.scope {
            v.push_str(&format!(", scope=\"{scope}\""));
        }
        Some(v)
    }

    /// The gRPC status code for a gRPC client (grpc/doc/statuscodes.md),
    /// derived from the HTTP status so that every variant, present and future,
    /// has one: 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 503 UNAVAILABLE ...
    pub fn grpc_status(&self) -> u16 {
        match self.status.as_u16() {
            400 => 3,             // INVALID_ARGUMENT
            401 => 16,            // UNAUTHENTICATED
            403 => 7,             // PERMISSION_DENIED
            404 => 5,             // NOT_FOUND
            405 | 501 => 12,      // UNIMPLEMENTED
            408 | 504 => 4,       // DEADLINE_EXCEEDED
            413 | 429 | 431 => 8, // RESOURCE_EXHAUSTED
            502 | 503 => 14,      // UNAVAILABLE
            500..=599 => 13,      // INTERNAL
            _ => 2,               // UNKNOWN
        }
    }

    /// `grpc-message`: the description, percent-encoded as the gRPC spec
    /// requires (anything outside printable ASCII, and '%').
    pub fn grpc_message(&self) -> String {
        let mut out = String::with_capacity(self.description.len());
        for b in self.description.bytes() {
            if (0x20..=0x7e).contains(&b) && b != b'%' {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    pub fn json_body(&self) -> String {
        serde_json::json!({ "error": self.error, "error_description": self.description })
            .to_string()
    }
}

/// The `realm` in every challenge.
pub(crate) const REALM: &str = "tokengate";

/// `content-type: application/grpc` (and `+proto`, `+json`, ...).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// A rejection for a gRPC client: HTTP 200 "Trailers-Only" with `grpc-status`
/// and `grpc-message` (gRPC over HTTP/2 spec), so the client sees e.g.
/// UNAUTHENTICATED instead of a transport error. The challenge is kept.
pub fn grpc_rejection_response(err: &ProxyError) -> Response<Body> {
    let r = err.rejection();
    let mut resp = Response::new(
        http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(r.grpc_status()));
    h.insert("grpc-message", forward::header_safe(&r.grpc_message()));
    if let Some(www) = r.www_authenticate(REALM) {
        h.insert(header::WWW_AUTHENTICATE, forward::header_safe(&www));
    }
    insert_dpop_nonce(h, &r);
    resp
}

/// `DPoP-Nonce` with a `use_dpop_nonce` rejection (RFC 9449 §9).
fn insert_dpop_nonce(h: &mut http::HeaderMap, r: &Rejection) {
    if let Some(nonce) = r.dpop.as_ref().and_then(|d| d.nonce.as_deref()) {
        h.insert(
            crate::policy::binding::dpop::DPOP_NONCE.clone(),
            forward::header_safe(nonce),
        );
    }
}

/// Builds 4xx/5xx answers: JSON body, `Cache-Control: no-store`, the RFC 6750
/// challenge where there is one, and `Retry-After` on 503.
pub fn rejection_response(err: &ProxyError, retry_after_secs: u32) -> Response<Body> {
    let r = err.rejection();
    let mut resp = Response::new(
        Full::new(Bytes::from(r.json_body()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = r.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(www) = r.www_authenticate(REALM) {
        h.insert(header::WWW_AUTHENTICATE, forward::header_safe(&www));
    }
    insert_dpop_nonce(h, &r);
    if r.retry {
        h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    }
    resp
}

/// gRPC ext_authz (`pipeline::ext_authz`): what makes a `CheckRequest` unusable (400, INVALID_ARGUMENT). Envoy always
/// fills these in; anything else talking to the port is refused, never allowed.
#[derive(Debug, thiserror::Error)]
pub enum CheckRequestError {
    #[error("the check request has no attributes.request.http")]
    NoHttpRequest,
    #[error("attributes.request.http.method is not an HTTP method")]
    BadMethod,
    #[error("attributes.request.http.path is not an origin-form request target (it must start with '/')")]
    BadPath,
    #[error("attributes.request.http has a header that is not valid HTTP")]
    BadHeader,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::binding::dpop::ProofError;
    use std::time::Duration;

    #[test]
    fn mapping_table() {
        let cases: Vec<(ProxyError, u16, &str, Option<&str>, bool)> = vec![
            (
                ProxyError::NoCredentials,
                401,
                "unauthorized",
                Some(r#"Bearer realm="r""#),
                false,
            ),
            (
                TokenError::TooLong.into(),
                400,
                "invalid_request",
                Some(r#"Bearer realm="r", error="invalid_request""#),
                false,
            ),
            (
                TokenError::MultipleHeaders.into(),
                400,
                "invalid_request",
                Some("error=\"invalid_request\""),
                false,
            ),
            (
                Deny::Inactive.into(),
                401,
                "invalid_token",
                Some("error=\"invalid_token\""),
                false,
            ),
            (
                Deny::Expired.into(),
                401,
                "invalid_token",
                Some(r#"error_description="token expired""#),
                false,
            ),
            (
                Deny::NotYetValid.into(),
                401,
                "invalid_token",
                Some("error=\"invalid_token\""),
                false,
            ),
            (
                IntrospectError::Timeout(Duration::from_secs(2)).into(),
                503,
                "temporarily_unavailable",
                None,
                true,
            ),
            (
                IntrospectError::Connect("refused".into()).into(),
                503,
                "temporarily_unavailable",
                None,
                true,
            ),
            (
                IntrospectError::ClientUnauthorized.into(),
                503,
                "temporarily_unavailable",
                None,
                true,
            ),
            (
                IntrospectError::Status(500).into(),
                503,
                "temporarily_unavailable",
                None,
                true,
            ),
            (
                IntrospectError::TokenRejected("unsupported_token_type").into(),
                401,
                "invalid_token",
                Some(r#"error="invalid_token", error_description="token is not active""#),
                false,
            ),
            (
                IntrospectError::Refused(413).into(),
                503,
                "temporarily_unavailable",
                None,
                true,
            ),
            (
                IntrospectError::InvalidResponse("html".into()).into(),
                503,
                "temporarily_unavailable",
                None,
                true,
            ),
            (
                IntrospectError::NoEndpoint.into(),
                503,
                "temporarily_unavailable",
                None,
                true,
            ),
            (
                IntrospectError::KeysUnavailable("jwks down".into()).into(),
                503,
                "temporarily_unavailable",
                None,
                true,
            ),
            (
                IntrospectError::CircuitOpen.into(),
                503,
                "temporarily_unavailable",
                None,
                true,
            ),
            (
                ForwardError::Connect("refused".into()).into(),
                502,
                "bad_gateway",
                None,
                false,
            ),
            (
                ForwardError::Failed("reset".into()).into(),
                502,
                "bad_gateway",
                None,
                false,
            ),
            (
                ForwardError::UnexpectedUpgrade("h2c".into()).into(),
                502,
                "bad_gateway",
                None,
                false,
            ),
            (
                ForwardError::Timeout(Duration::from_secs(1)).into(),
                504,
                "gateway_timeout",
                None,
                false,
            ),
            (
                ForwardError::BadTarget.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                ForwardError::BadBody("bad chunk size line".into()).into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                OverrideError::NotPost.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                OverrideError::Unclear.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                OverrideError::NotStrippable.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                ProxyError::Binding(BindingError::CertificateMissing, Some("ES256".into())),
                401,
                "invalid_token",
                Some(
                    r#"error="invalid_token", error_description="the token is bound to a client certificate and the request presented none""#,
                ),
                false,
            ),
            (
                crate::policy::binding::mtls::ClientCertError::BadXfcc("no element").into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                CheckRequestError::NoHttpRequest.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                crate::policy::binding::mtls::ClientCertError::HashMismatch.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                CheckRequestError::BadMethod.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                CheckRequestError::BadPath.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                CheckRequestError::BadHeader.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                Deny::UnsafeIdentity("sub").into(),
                401,
                "invalid_token",
                Some(r#"error_description="token's identity cannot be passed on""#),
                false,
            ),
            (
                ProxyError::ConnectMethod,
                405,
                "method_not_allowed",
                None,
                false,
            ),
            (
                TokenError::MultipleSources.into(),
                400,
                "invalid_request",
                Some("error=\"invalid_request\""),
                false,
            ),
            (
                Deny::NotAccessToken.into(),
                401,
                "invalid_token",
                Some("error=\"invalid_token\""),
                false,
            ),
            (
                Deny::WrongIssuer.into(),
                401,
                "invalid_token",
                Some("not valid for this resource"),
                false,
            ),
            (
                Deny::WrongAudience.into(),
                401,
                "invalid_token",
                Some("not valid for this resource"),
                false,
            ),
            (
                Deny::ClientNotAllowed.into(),
                401,
                "invalid_token",
                Some("not valid for this resource"),
                false,
            ),
            (
                Deny::InsufficientScope {
                    required: "admin write".into(),
                }
                .into(),
                403,
                "insufficient_scope",
                Some(
                    r#"error="insufficient_scope", error_description="token lacks a required scope", scope="admin write""#,
                ),
                false,
            ),
            (
                RouteError::AmbiguousPath.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                RouteError::MethodCase.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                RouteError::InvalidHost.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                RouteError::DuplicateHost.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                RouteError::HostMismatch.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                ForwardAuthError::BadUri("X-Original-URI").into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                ForwardAuthError::BadMethod("X-Forwarded-Method").into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                ForwardAuthError::OutsidePrefix.into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                ForwardAuthError::Missing("X-Forwarded-Host").into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                ForwardAuthError::Repeated("X-Forwarded-Uri").into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                ForwardAuthError::TwoConventions("a", "b").into(),
                400,
                "invalid_request",
                None,
                false,
            ),
            (
                ProxyError::BodyTooLarge,
                413,
                "request_too_large",
                None,
                false,
            ),
            (
                ProxyError::Binding(BindingError::DpopRequired, Some("ES256".into())),
                401,
                "invalid_token",
                Some(r#"DPoP realm="r", algs="ES256", error="invalid_token""#),
                false,
            ),
            (
                // DPoP off: a DPoP-bound token cannot be used here at all.
                ProxyError::Binding(BindingError::DpopRequired, None),
                401,
                "invalid_token",
                Some(r#"Bearer realm="r", error="invalid_token""#),
                false,
            ),
            (
                ProxyError::Binding(BindingError::NotDpopBound, Some("ES256".into())),
                401,
                "invalid_token",
                Some(r#"DPoP realm="r", algs="ES256", error="invalid_token""#),
                false,
            ),
            (
                ProxyError::Binding(BindingError::Unsupported, Some("ES256".into())),
                401,
                "invalid_token",
                Some(r#"Bearer realm="r", error="invalid_token""#),
                false,
            ),
            (
                ProxyError::Binding(BindingError::CertificateMismatch, Some("ES256".into())),
                401,
                "invalid_token",
                Some(r#"Bearer realm="r", error="invalid_token""#),
                false,
            ),
            (
                ProxyError::Binding(
                    BindingError::Proof(ProofError::Replayed),
                    Some("ES256 EdDSA".into()),
                ),
                401,
                "invalid_dpop_proof",
                Some(
                    r#"DPoP realm="r", algs="ES256 EdDSA", error="invalid_dpop_proof", error_description="the DPoP proof has been used before""#,
                ),
                false,
            ),
            (
                ProxyError::Binding(BindingError::UseNonce("n1".into()), Some("ES256".into())),
                401,
                "use_dpop_nonce",
                Some(r#"DPoP realm="r", algs="ES256", error="use_dpop_nonce""#),
                false,
            ),
            (
                ProxyError::Binding(BindingError::ReplayCheckUnavailable, Some("ES256".into())),
                503,
                "temporarily_unavailable",
                None,
                true,
            ),
        ];
        for (err, status, code, challenge, retry) in cases {
            let r = err.rejection();
            assert_eq!(r.status.as_u16(), status, "{err:?}");
            assert_eq!(r.error, code, "{err:?}");
            assert_eq!(r.retry, retry, "{err:?}");
            let www = r.www_authenticate("r");
            match challenge {
                None => assert_eq!(www, None, "{err:?}"),
                Some(part) => {
                    let www = www.unwrap();
                    assert!(www.contains(part), "{err:?}: {www}");
                }
            }
        }
        let grpc: Vec<(ProxyError, u16)> = vec![
            (ProxyError::NoCredentials, 16),
            (Deny::Inactive.into(), 16),
            (Deny::Expired.into(), 16),
            (Deny::WrongAudience.into(), 16),
            (
                Deny::InsufficientScope {
                    required: "admin".into(),
                }
                .into(),
                7,
            ),
            (IntrospectError::Timeout(Duration::from_secs(2)).into(), 14),
            (IntrospectError::Status(500).into(), 14),
            (ForwardError::Connect("refused".into()).into(), 14),
            (ForwardError::Timeout(Duration::from_secs(1)).into(), 4),
            (TokenError::TooLong.into(), 3),
            (ProxyError::ConnectMethod, 12),
            (ForwardAuthError::OutsidePrefix.into(), 3),
        ];
        for (err, code) in grpc {
            assert_eq!(err.rejection().grpc_status(), code, "{err:?}");
        }
        let nonce = rejection_response(
            &ProxyError::Binding(BindingError::UseNonce("n-1".into()), Some("ES256".into())),
            5,
        );
        assert_eq!(nonce.headers()["dpop-nonce"], "n-1");
        let proof = rejection_response(
            &ProxyError::Binding(BindingError::Proof(ProofError::Uri), Some("ES256".into())),
            5,
        );
        assert!(!proof.headers().contains_key("dpop-nonce"));
        let mut r = ProxyError::NoCredentials.rejection();
        r.description = "100% sure\n€".into();
        assert_eq!(r.grpc_message(), "100%25 sure%0A%E2%82%AC");

        let bare = ProxyError::NoCredentials
            .rejection()
            .www_authenticate("r")
            .unwrap();
        assert!(
            !bare.contains("error"),
            "no error code without credentials: {bare}"
        );
    }
}
