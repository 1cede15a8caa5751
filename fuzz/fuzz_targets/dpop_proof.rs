//! DPoP proof verification (RFC 9449) on hostile `DPoP` header values.
//!
//! Input: the proof, as the header would carry it. Never a panic; a proof
//! that passes (it cannot without a signature by its own `jwk`, which the
//! fuzzer will not find) names a key thumbprint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, UNIX_EPOCH};
use tokengate::policy::binding::dpop::{verify, DpopSettings, ProofContext, RequestUri};

fuzz_target!(|data: &[u8]| {
    let Ok(proof) = std::str::from_utf8(data) else {
        return;
    };
    let ctx = ProofContext {
        method: "GET",
        uri: RequestUri {
            scheme: "https",
            host: Some("api.example.com"),
            path: "/v1/things",
        },
        token: "tok",
        now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    };
    if let Ok(v) = verify(proof, &ctx, &DpopSettings::default()) {
        assert!(!v.jkt.is_empty());
    }
});
