//! The binding stage: a sender-constrained token (RFC 7800 `cnf` in the
//! introspection answer) passes only with the proof of possession it is bound
//! to. Checked after the policy decision on every request, cache hits
//! included, in both modes, and **always on**: with nothing configured a bound
//! token has no way to prove its binding, so it is refused rather than
//! accepted as a plain bearer token.
//!
//! `mtls` (RFC 8705 §3, `cnf["x5t#S256"]`): the client certificate, from
//! tokengate's own TLS handshake or from a trusted proxy's header.

pub mod mtls;

use crate::introspection::answer::Answer;

/// What the request brings to prove a binding.
#[derive(Debug, Clone, Copy, Default)]
pub struct BindingInput {
    /// SHA-256 of the DER of the client's end-entity certificate, if any
    /// (see [`mtls::client_certificate`]).
    pub client_cert_sha256: Option<[u8; 32]>,
}

/// How the token was bound (the value of `identity.binding_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// A plain bearer token: no `cnf`.
    None,
    /// Bound to the client certificate, and the request presented it.
    Mtls,
}

impl Binding {
    /// As the upstream sees it in `identity.binding_header`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Mtls => "mtls",
        }
    }
}

/// Why a bound token was refused: 401 `invalid_token` (`pipeline::reject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("token is bound to a client certificate and the request presented none")]
    CertificateMissing,
    #[error("token is bound to another client certificate")]
    CertificateMismatch,
    /// `cnf` is not an object, or `x5t#S256` is not the base64url of 32 bytes:
    /// a binding we cannot read is not treated as no binding.
    #[error("token's confirmation claim (cnf) cannot be read")]
    UnreadableConfirmation,
    /// `cnf` names no confirmation method this build checks (e.g. `jwk`,
    /// `jkt` on a build without DPoP): refused, because the token is
    /// sender-constrained and the constraint would go unchecked.
    #[error("token is bound by a confirmation method this service does not check")]
    UnsupportedConfirmation,
}

impl BindingError {
    /// The `reason` label of `tokengate_binding_refusals_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::CertificateMissing => "certificate_missing",
            Self::CertificateMismatch => "certificate_mismatch",
            Self::UnreadableConfirmation => "cnf_unreadable",
            Self::UnsupportedConfirmation => "cnf_unsupported",
        }
    }

    /// Every reason, for the metric's series that exist from the start.
    pub const REASONS: [&'static str; 4] = [
        "certificate_missing",
        "certificate_mismatch",
        "cnf_unreadable",
        "cnf_unsupported",
    ];
}

/// Is the request allowed to use this token, given how it is bound?
pub fn check(answer: &Answer, input: &BindingInput) -> Result<Binding, BindingError> {
    let Some(cnf) = answer.extra("cnf") else {
        return Ok(Binding::None);
    };
    let cnf = cnf
        .as_object()
        .ok_or(BindingError::UnreadableConfirmation)?;
    if let Some(x5t) = cnf.get(mtls::CNF_MEMBER) {
        mtls::check(x5t, input.client_cert_sha256)?;
        return Ok(Binding::Mtls);
    }
    // A `cnf` with members we do not know is a binding we cannot check. An
    // empty object binds nothing.
    if cnf.is_empty() {
        Ok(Binding::None)
    } else {
        Err(BindingError::UnsupportedConfirmation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::introspection::client::Introspection;
    use base64::Engine;

    fn answer(extra: serde_json::Value) -> Answer {
        let mut body = serde_json::json!({"active": true, "sub": "alice"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let i: Introspection = serde_json::from_value(body).unwrap();
        Answer::from(i)
    }

    fn x5t(thumb: &[u8; 32]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(thumb)
    }

    #[test]
    fn unbound_tokens_pass_with_or_without_a_certificate() {
        let a = answer(serde_json::json!({}));
        assert_eq!(check(&a, &BindingInput::default()), Ok(Binding::None));
        let with = BindingInput {
            client_cert_sha256: Some([7; 32]),
        };
        assert_eq!(check(&a, &with), Ok(Binding::None));
        assert_eq!(
            check(&answer(serde_json::json!({"cnf": {}})), &with),
            Ok(Binding::None)
        );
    }

    #[test]
    fn certificate_bound_tokens_need_that_certificate() {
        let a = answer(serde_json::json!({"cnf": {"x5t#S256": x5t(&[7; 32])}}));
        let input = |c| BindingInput {
            client_cert_sha256: c,
        };
        assert_eq!(check(&a, &input(Some([7; 32]))), Ok(Binding::Mtls));
        assert_eq!(
            check(&a, &input(Some([8; 32]))),
            Err(BindingError::CertificateMismatch)
        );
        assert_eq!(
            check(&a, &input(None)),
            Err(BindingError::CertificateMissing)
        );
    }

    #[test]
    fn unreadable_or_unknown_confirmations_are_refused() {
        let with = BindingInput {
            client_cert_sha256: Some([7; 32]),
        };
        for cnf in [
            serde_json::json!("x"),
            serde_json::json!({"x5t#S256": 5}),
            serde_json::json!({"x5t#S256": "not base64url!"}),
            serde_json::json!({"x5t#S256": x5t(&[7; 32])[..20]}),
        ] {
            assert_eq!(
                check(&answer(serde_json::json!({ "cnf": cnf })), &with),
                Err(BindingError::UnreadableConfirmation),
                "{cnf}"
            );
        }
        let jwk = answer(serde_json::json!({"cnf": {"jwk": {"kty": "EC"}}}));
        assert_eq!(
            check(&jwk, &with),
            Err(BindingError::UnsupportedConfirmation)
        );
    }
}
