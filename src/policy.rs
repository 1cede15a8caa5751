//! The access decision. Pure: (introspection, now) → [`Principal`] or [`Deny`].
//! It runs on *every* request, cache hits included: the cache stores the
//! introspection, never the decision (the bug class of Oathkeeper's
//! GHSA-qvp4-rpmr-xwrr).

use crate::introspect::Introspection;

/// Who the caller is, as the upstream will see it in identity headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub`, else `client_id` (client-credentials tokens have no `sub`).
    pub subject: Option<String>,
    pub client_id: Option<String>,
    /// Space-separated scopes.
    pub scope: String,
}

/// Why an introspected token may not pass. All of these are 401 invalid_token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Deny {
    #[error("token is not active")]
    Inactive,
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
}

pub fn evaluate(i: &Introspection, now_unix: i64) -> Result<Principal, Deny> {
    if !i.active {
        return Err(Deny::Inactive);
    }
    // RFC 7662 §4: the AS said "active" at some point; the token's own times
    // still bind, so re-check them against our clock on every request.
    if i.exp.is_some_and(|exp| exp <= now_unix) {
        return Err(Deny::Expired);
    }
    if i.nbf.is_some_and(|nbf| nbf > now_unix) {
        return Err(Deny::NotYetValid);
    }
    let client_id = i.client_id.as_ref().map(|c| c.as_str().to_owned());
    Ok(Principal {
        subject: i.sub.clone().or_else(|| client_id.clone()),
        client_id,
        scope: i.scope_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(json: &str) -> Introspection {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn decision_table() {
        let now = 1_000;
        let cases: &[(&str, &str, Result<(), Deny>)] = &[
            ("active with no times passes", r#"{"active":true}"#, Ok(())),
            ("exp in the future passes", r#"{"active":true,"exp":1001}"#, Ok(())),
            ("should fail because inactive", r#"{"active":false,"exp":2000}"#, Err(Deny::Inactive)),
            ("should fail because exp == now", r#"{"active":true,"exp":1000}"#, Err(Deny::Expired)),
            ("should fail because exp in the past", r#"{"active":true,"exp":10}"#, Err(Deny::Expired)),
            ("should fail because nbf in the future", r#"{"active":true,"nbf":1001}"#, Err(Deny::NotYetValid)),
            ("nbf == now passes", r#"{"active":true,"nbf":1000}"#, Ok(())),
            ("nbf 0 (Keycloak) is no constraint", r#"{"active":true,"nbf":0}"#, Ok(())),
        ];
        for (name, json, want) in cases {
            assert_eq!(evaluate(&tok(json), now).map(|_| ()), *want, "{name}");
        }
    }

    #[test]
    fn subject_falls_back_to_client_id() {
        let p = evaluate(&tok(r#"{"active":true,"client_id":"app","scope":"a b"}"#), 0).unwrap();
        assert_eq!(p.subject.as_deref(), Some("app"));
        assert_eq!(p.scope, "a b");
        let p = evaluate(&tok(r#"{"active":true,"client_id":"app","sub":"alice"}"#), 0).unwrap();
        assert_eq!(p.subject.as_deref(), Some("alice"));
        assert_eq!(p.client_id.as_deref(), Some("app"));
    }
}
