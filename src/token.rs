//! Credential extraction (RFC 6750 §2.1). Pure: headers in, a [`Token`] or a
//! [`TokenError`] out. A token value never reaches a log line: [`Token`]'s `Debug`
//! is redacted and the only printable form of it is [`Token::fingerprint`].

use http::header::AUTHORIZATION;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use std::fmt;

/// Default upper bound for a token, in bytes. Real access tokens (JWTs with a few
/// claims, opaque handles) are well under 2 KiB; the limit stops a client from
/// making us hash and ship megabytes to the AS.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 4096;

/// Why a request's credentials could not be used. Only malformed *Bearer*
/// credentials are errors; "no Bearer credentials at all" is `Ok(None)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("more than one Authorization header")]
    MultipleHeaders,
    #[error("Authorization header is not valid ASCII")]
    NotAscii,
    #[error("Bearer credentials are empty")]
    Empty,
    #[error("Bearer scheme must be followed by exactly one space and a token")]
    BadSeparator,
    #[error("Bearer token has characters outside the b64token syntax")]
    BadCharacters,
    #[error("Bearer token is longer than the configured maximum")]
    TooLong,
}

/// An access token. Holds the raw value only as long as a request needs it; the
/// cache stores [`Token::cache_key`] instead.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

/// SHA-256 of the token bytes: the only form of a token that is stored.
pub type TokenHash = [u8; 32];

impl Token {
    /// The raw value, for the introspection call and nothing else.
    pub fn secret(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// First 8 hex digits of SHA-256(token): enough to correlate log lines for one
    /// token, far too little to recover or confirm it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.hash())
    }
}

pub fn fingerprint(hash: &TokenHash) -> String {
    hex::encode(&hash[..4])
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(sha256:{}…)", self.fingerprint())
    }
}

/// Extracts a Bearer token from the `Authorization` header.
///
/// * `Ok(None)`: no `Authorization` header, or another scheme (`Basic ...`): the
///   request carries no Bearer credentials, so the challenge has no error code.
/// * `Err(_)`: Bearer credentials are present but malformed (400 invalid_request).
pub fn extract_bearer(headers: &HeaderMap, max_len: usize) -> Result<Option<Token>, TokenError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(TokenError::MultipleHeaders);
    }
    let value = value.to_str().map_err(|_| TokenError::NotAscii)?;
    parse_bearer(value, max_len)
}

/// Parses one `Authorization` value. Split out so it can be table-tested.
pub fn parse_bearer(value: &str, max_len: usize) -> Result<Option<Token>, TokenError> {
    const SCHEME: &str = "bearer";
    let bytes = value.as_bytes();
    // The scheme is a token68-style word; compare case-insensitively (RFC 9110 §11.1).
    let scheme_len = bytes
        .iter()
        .position(|b| *b == b' ' || *b == b'\t')
        .unwrap_or(bytes.len());
    if !value[..scheme_len].eq_ignore_ascii_case(SCHEME) {
        return Ok(None);
    }
    let rest = &value[scheme_len..];
    if rest.trim().is_empty() {
        return Err(TokenError::Empty);
    }
    // Exactly one SP between scheme and token (RFC 6750 §2.1 `"Bearer" 1*SP b64token`
    // allows more, but no real client sends them and a strict form keeps the
    // "two tokens" case unambiguous).
    let Some(token) = rest.strip_prefix(' ') else {
        return Err(TokenError::BadSeparator);
    };
    if token.is_empty() || token.starts_with([' ', '\t']) {
        return Err(TokenError::BadSeparator);
    }
    if token.len() > max_len {
        return Err(TokenError::TooLong);
    }
    if !is_b64token(token.as_bytes()) {
        return Err(TokenError::BadCharacters);
    }
    Ok(Some(Token(token.to_owned())))
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_b64token(b: &[u8]) -> bool {
    let body_end = b.iter().position(|c| *c == b'=').unwrap_or(b.len());
    body_end > 0
        && b[..body_end]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~+/".contains(c))
        && b[body_end..].iter().all(|c| *c == b'=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(v: &str) -> Result<Option<String>, TokenError> {
        parse_bearer(v, 16).map(|t| t.map(|t| t.secret().to_owned()))
    }

    #[test]
    fn parse_table() {
        use TokenError::*;
        let cases: &[(&str, &str, Result<Option<&str>, TokenError>)] = &[
            ("plain bearer token is accepted", "Bearer abc", Ok(Some("abc"))),
            ("scheme is case-insensitive", "bEaReR abc", Ok(Some("abc"))),
            ("all b64token characters pass", "Bearer aZ0-._~+/==", Ok(Some("aZ0-._~+/=="))),
            ("another scheme is no bearer credentials", "Basic dXNlcjpwdw==", Ok(None)),
            ("a scheme that only starts with bearer is another scheme", "Bearerx abc", Ok(None)),
            ("empty header value carries no scheme", "", Ok(None)),
            ("bare scheme must fail: empty token", "Bearer", Err(Empty)),
            ("scheme plus spaces must fail: empty token", "Bearer   ", Err(Empty)),
            ("two spaces must fail", "Bearer  abc", Err(BadSeparator)),
            ("tab separator must fail", "Bearer\tabc", Err(BadSeparator)),
            ("two tokens must fail", "Bearer abc def", Err(BadCharacters)),
            ("comma must fail", "Bearer abc,def", Err(BadCharacters)),
            ("padding in the middle must fail", "Bearer ab=c", Err(BadCharacters)),
            ("only padding must fail", "Bearer ===", Err(BadCharacters)),
            ("quote must fail", "Bearer \"abc\"", Err(BadCharacters)),
            ("exactly the limit passes", "Bearer 0123456789abcdef", Ok(Some("0123456789abcdef"))),
            ("one over the limit must fail", "Bearer 0123456789abcdefg", Err(TooLong)),
        ];
        for (name, input, want) in cases {
            let want = want.map(|o| o.map(str::to_owned));
            assert_eq!(parse(input), want, "{name}");
        }
    }

    #[test]
    fn header_level_rules() {
        let mut h = HeaderMap::new();
        assert_eq!(extract_bearer(&h, 64), Ok(None), "no header");
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        assert!(extract_bearer(&h, 64).unwrap().is_some());
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(extract_bearer(&h, 64), Err(TokenError::MultipleHeaders));
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_bytes(b"Bearer \xff").unwrap());
        assert_eq!(extract_bearer(&h, 64), Err(TokenError::NotAscii));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = parse_bearer("Bearer supersecretvalue", 64).unwrap().unwrap();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("supersecret"), "{dbg}");
        assert_eq!(t.fingerprint().len(), 8);
    }
}
