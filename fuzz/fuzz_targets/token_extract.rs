//! Token extraction (RFC 6750 header, query parameter, cookie) on hostile
//! header values and query strings.
//!
//! Input: `authorization \n cookie \n query`, each line possibly empty (absent).
//! Never a panic; a token that comes out is within the length bound, is made
//! of RFC 6750 b64token characters, and came from exactly one place.
#![no_main]

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE};
use libfuzzer_sys::fuzz_target;
use tokengate::token::{extract, TokenSources};

const MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let (auth, cookie, query) = (parts.next(), parts.next(), parts.next());
    let mut headers = HeaderMap::new();
    for (name, value) in [(AUTHORIZATION, auth), (COOKIE, cookie)] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            // Only what hyper would accept as a field value.
            let Ok(v) = HeaderValue::from_bytes(v) else {
                return;
            };
            headers.append(name, v);
        }
    }
    let query = match query.map(std::str::from_utf8) {
        Some(Ok(q)) if !q.is_empty() => Some(q),
        Some(Err(_)) => return,
        _ => None,
    };
    let sources = TokenSources {
        query_param: Some("access_token".into()),
        cookie: Some("at".into()),
    };
    if let Ok(Some((token, _source))) = extract(&headers, query, &sources, MAX) {
        let t = token.secret();
        assert!(!t.is_empty() && t.len() <= MAX, "token length {}", t.len());
        assert!(
            t.bytes().enumerate().all(|(i, b)| b.is_ascii_alphanumeric()
                || b"-._~+/".contains(&b)
                || (b == b'=' && t.as_bytes()[i..].iter().all(|c| *c == b'='))),
            "token with characters outside b64token"
        );
    }
});
