//! Introspection answer parsing and the decision on hostile JSON.
//!
//! Never a panic; an answer that passes the policy was `active: true`, is
//! within its `exp`/`nbf`, and yields identity values without line breaks at
//! their edges or inside (they become header values).
#![no_main]

use http::HeaderName;
use libfuzzer_sys::fuzz_target;
use tokengate::introspection::answer::Answer;
use tokengate::introspection::Introspection;
use tokengate::policy::{evaluate, Requirements};

const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(i) = serde_json::from_slice::<Introspection>(data) else {
        return;
    };
    let answer = Answer::from(i);
    let claims = [
        (HeaderName::from_static("x-auth-email"), "email".to_owned()),
        (HeaderName::from_static("x-auth-roles"), "realm_access.roles".to_owned()),
    ];
    let reqs = Requirements {
        scopes: vec!["read".into()],
        ..Requirements::default()
    };
    if let Ok(p) = evaluate(&answer, &reqs, NOW, &claims) {
        assert!(answer.active());
        assert!(answer.exp.is_none_or(|exp| exp > NOW));
        let values = p
            .subject
            .iter()
            .chain(p.client_id.iter())
            .chain(p.claims.iter().map(|(_, v)| v));
        for v in values {
            let edge = |c: char| c.is_whitespace() || c.is_control();
            assert!(!v.starts_with(edge) && !v.ends_with(edge), "padded identity {v:?}");
            let hv = tokengate::upstream::forward::header_safe(v);
            assert!(!hv.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | 0)));
        }
    }
});
