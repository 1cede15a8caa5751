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
    #[error("credentials sent by more than one method (RFC 6750 §2)")]
    MultipleSources,
}

/// Opt-in places besides the `Authorization` header (`[token_sources]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSources {
    /// RFC 6750 §2.3 URI query parameter; removed before forwarding.
    pub query_param: Option<String>,
    /// Cookie name; the cookie is removed before forwarding.
    pub cookie: Option<String>,
}

/// Where a request's token came from, so the forwarder can remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Header,
    Query,
    Cookie,
}

/// Extracts the one token a request carries from the header and any enabled
/// source. Two sources at once, or the same parameter/cookie twice, is a 400:
/// RFC 6750 §2 says a client MUST NOT use more than one method, and picking one
/// would let a proxy and an upstream disagree about who the caller is.
pub fn extract(
    headers: &HeaderMap,
    query: Option<&str>,
    sources: &TokenSources,
    max_len: usize,
) -> Result<Option<(Token, Source)>, TokenError> {
    Ok(extract_with_scheme(headers, query, sources, max_len, false)?.map(|(t, s, _)| (t, s)))
}

/// How the token was presented: the `Authorization` scheme. A token from the
/// query or a cookie counts as Bearer (RFC 6750 §2.2, §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    /// `Authorization: DPoP <token>` (RFC 9449 §7.1), only with `dpop = true`.
    Dpop,
}

/// [`extract`], also accepting the `DPoP` scheme when `dpop` is on, and
/// saying which scheme the token came with.
pub fn extract_with_scheme(
    headers: &HeaderMap,
    query: Option<&str>,
    sources: &TokenSources,
    max_len: usize,
    dpop: bool,
) -> Result<Option<(Token, Source, Scheme)>, TokenError> {
    let mut found =
        extract_authorization(headers, max_len, dpop)?.map(|(t, s)| (t, Source::Header, s));
    let mut add = |t: Token, src: Source| match found {
        Some(_) => Err(TokenError::MultipleSources),
        None => {
            found = Some((t, src, Scheme::Bearer));
            Ok(())
        }
    };
    if let (Some(name), Some(q)) = (&sources.query_param, query) {
        let mut values = url::form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k == name);
        if let Some((_, v)) = values.next() {
            if values.next().is_some() {
                return Err(TokenError::MultipleSources);
            }
            add(check_token(&v, max_len)?, Source::Query)?;
        }
    }
    if let Some(name) = &sources.cookie {
        let mut values = cookie_values(headers, name);
        if let Some(v) = values.next() {
            if values.next().is_some() {
                return Err(TokenError::MultipleSources);
            }
            add(check_token(v, max_len)?, Source::Cookie)?;
        }
    }
    Ok(found)
}

fn check_token(v: &str, max_len: usize) -> Result<Token, TokenError> {
    // A value wrapped in quotes is a legal cookie-value; the token is inside.
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    if v.is_empty() {
        return Err(TokenError::Empty);
    }
    if v.len() > max_len {
        return Err(TokenError::TooLong);
    }
    if !is_b64token(v.as_bytes()) {
        return Err(TokenError::BadCharacters);
    }
    Ok(Token(v.to_owned()))
}

/// Values of cookie `name` across all `Cookie` headers.
fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
}

/// The query string without parameter `name` (every other byte unchanged);
/// `None` when nothing is left.
pub fn strip_query_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            let decoded: String = url::form_urlencoded::parse(key.as_bytes())
                .map(|(k, _)| k.into_owned())
                .collect();
            decoded != name
        })
        .collect();
    let joined = kept.join("&");
    (!joined.is_empty()).then_some(joined)
}

/// Removes cookie `name` from every `Cookie` header, keeping the others.
pub fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    // Most requests carry no such cookie: leave their Cookie fields untouched.
    if cookie_values(headers, name).next().is_none() {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter(|pair| pair.split_once('=').map_or(pair.trim(), |(k, _)| k.trim()) != name)
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    headers.remove(http::header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = http::HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(http::header::COOKIE, v);
        }
    }
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
        hash(&self.0)
    }

    /// First 8 hex digits of SHA-256(token): enough to correlate log lines for one
    /// token, far too little to recover or confirm it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.hash())
    }
}

/// SHA-256 of a token's bytes: the key of every cache entry. Purge, which gets
/// the token in a body rather than a header, uses this too.
pub fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

pub fn fingerprint(hash: &TokenHash) -> String {
    // Into a stack buffer: `hex::encode` collects chars one by one, and this
    // runs on every request (the access log names the token by it).
    let mut out = [0u8; 8];
    // 4 bytes in, 8 hex digits out: the lengths match, so neither call fails.
    let _ = hex::encode_to_slice(&hash[..4], &mut out);
    std::str::from_utf8(&out).unwrap_or_default().to_owned()
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
    Ok(extract_authorization(headers, max_len, false)?.map(|(t, _)| t))
}

/// The `Authorization` header's token: Bearer, or also DPoP when `dpop` is on.
fn extract_authorization(
    headers: &HeaderMap,
    max_len: usize,
    dpop: bool,
) -> Result<Option<(Token, Scheme)>, TokenError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(TokenError::MultipleHeaders);
    }
    let value = value.to_str().map_err(|_| TokenError::NotAscii)?;
    parse_authorization(value, max_len, dpop)
}

/// Parses one `Authorization` value. Split out so it can be table-tested.
pub fn parse_bearer(value: &str, max_len: usize) -> Result<Option<Token>, TokenError> {
    Ok(parse_authorization(value, max_len, false)?.map(|(t, _)| t))
}

/// [`parse_bearer`], also accepting the `DPoP` scheme (same token syntax,
/// RFC 9449 §7.1) when `dpop` is on.
pub fn parse_authorization(
    value: &str,
    max_len: usize,
    dpop: bool,
) -> Result<Option<(Token, Scheme)>, TokenError> {
    let bytes = value.as_bytes();
    // The scheme is a token68-style word; compare case-insensitively (RFC 9110 §11.1).
    let scheme_len = bytes
        .iter()
        .position(|b| *b == b' ' || *b == b'\t')
        .unwrap_or(bytes.len());
    let word = &value[..scheme_len];
    let scheme = if word.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if dpop && word.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Ok(None);
    };
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
    Ok(Some((Token(token.to_owned()), scheme)))
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
#[expect(clippy::type_complexity, reason = "table tests of boxed closures")]
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
            (
                "plain bearer token is accepted",
                "Bearer abc",
                Ok(Some("abc")),
            ),
            ("scheme is case-insensitive", "bEaReR abc", Ok(Some("abc"))),
            (
                "all b64token characters pass",
                "Bearer aZ0-._~+/==",
                Ok(Some("aZ0-._~+/==")),
            ),
            (
                "another scheme is no bearer credentials",
                "Basic dXNlcjpwdw==",
                Ok(None),
            ),
            (
                "a scheme that only starts with bearer is another scheme",
                "Bearerx abc",
                Ok(None),
            ),
            ("empty header value carries no scheme", "", Ok(None)),
            ("bare scheme must fail: empty token", "Bearer", Err(Empty)),
            (
                "scheme plus spaces must fail: empty token",
                "Bearer   ",
                Err(Empty),
            ),
            ("two spaces must fail", "Bearer  abc", Err(BadSeparator)),
            ("tab separator must fail", "Bearer\tabc", Err(BadSeparator)),
            ("two tokens must fail", "Bearer abc def", Err(BadCharacters)),
            ("comma must fail", "Bearer abc,def", Err(BadCharacters)),
            (
                "padding in the middle must fail",
                "Bearer ab=c",
                Err(BadCharacters),
            ),
            ("only padding must fail", "Bearer ===", Err(BadCharacters)),
            ("quote must fail", "Bearer \"abc\"", Err(BadCharacters)),
            (
                "exactly the limit passes",
                "Bearer 0123456789abcdef",
                Ok(Some("0123456789abcdef")),
            ),
            (
                "one over the limit must fail",
                "Bearer 0123456789abcdefg",
                Err(TooLong),
            ),
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
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert_eq!(extract_bearer(&h, 64), Err(TokenError::NotAscii));
    }

    #[test]
    fn the_dpop_scheme_only_when_enabled() {
        let dpop = |v: &str, on: bool| parse_authorization(v, 64, on);
        assert_eq!(
            dpop("DPoP abc", true).map(|o| o.map(|(t, s)| (t.secret().to_owned(), s))),
            Ok(Some(("abc".into(), Scheme::Dpop)))
        );
        assert_eq!(
            dpop("dpop abc", true).map(|o| o.map(|(_, s)| s)),
            Ok(Some(Scheme::Dpop))
        );
        assert_eq!(
            dpop("Bearer abc", true).map(|o| o.map(|(_, s)| s)),
            Ok(Some(Scheme::Bearer))
        );
        assert_eq!(dpop("DPoP abc", false), Ok(None), "another scheme when off");
        assert_eq!(parse_bearer("DPoP abc", 64), Ok(None));
        assert_eq!(
            dpop("DPoP  abc", true).map(|_| ()),
            Err(TokenError::BadSeparator)
        );
        assert_eq!(
            dpop("DPoP a b", true).map(|_| ()),
            Err(TokenError::BadCharacters)
        );
        assert_eq!(dpop("DPoPx abc", true), Ok(None));
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("DPoP tok"));
        let sources = TokenSources {
            query_param: Some("access_token".into()),
            cookie: None,
        };
        let got = extract_with_scheme(&h, None, &sources, 64, true)
            .unwrap()
            .unwrap();
        assert_eq!((got.1, got.2), (Source::Header, Scheme::Dpop));
        assert_eq!(extract(&h, None, &sources, 64), Ok(None));
        // A query token is Bearer, and one next to a DPoP header is two sources.
        let q = extract_with_scheme(
            &HeaderMap::new(),
            Some("access_token=t"),
            &sources,
            64,
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(q.2, Scheme::Bearer);
        assert_eq!(
            extract_with_scheme(&h, Some("access_token=t"), &sources, 64, true).map(|_| ()),
            Err(TokenError::MultipleSources)
        );
    }

    #[test]
    fn sources_table() {
        use TokenError::*;
        let sources = TokenSources {
            query_param: Some("access_token".into()),
            cookie: Some("at".into()),
        };
        let none = TokenSources::default();
        let cases: &[(
            &str,
            Option<&str>,
            Option<&str>,
            &TokenSources,
            Result<Option<(&str, Source)>, TokenError>,
        )] = &[
            (
                "header only",
                Some("Bearer h"),
                None,
                &sources,
                Ok(Some(("h", Source::Header))),
            ),
            (
                "query only",
                None,
                Some("a=1&access_token=q%2B1"),
                &sources,
                Ok(Some(("q+1", Source::Query))),
            ),
            ("cookie only", None, None, &sources, Ok(None)),
            (
                "query ignored when not enabled",
                None,
                Some("access_token=q"),
                &none,
                Ok(None),
            ),
            (
                "should fail because header and query both carry a token",
                Some("Bearer h"),
                Some("access_token=q"),
                &sources,
                Err(MultipleSources),
            ),
            (
                "should fail because the parameter is repeated",
                None,
                Some("access_token=a&access_token=b"),
                &sources,
                Err(MultipleSources),
            ),
            (
                "should fail because a query token has bad characters",
                None,
                Some("access_token=a%20b"),
                &sources,
                Err(BadCharacters),
            ),
            (
                "should fail because a query token is empty",
                None,
                Some("access_token="),
                &sources,
                Err(Empty),
            ),
            (
                "Basic header plus query token is one bearer source",
                Some("Basic eDp5"),
                Some("access_token=q"),
                &sources,
                Ok(Some(("q", Source::Query))),
            ),
        ];
        for (name, auth, query, src, want) in cases {
            let mut h = HeaderMap::new();
            if let Some(a) = auth {
                h.insert(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
            }
            let got =
                extract(&h, *query, src, 64).map(|o| o.map(|(t, s)| (t.secret().to_owned(), s)));
            let want = want.map(|o| o.map(|(t, s)| (t.to_owned(), s)));
            assert_eq!(got, want, "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; at=\"tok\"; b=2"),
        );
        let got = extract(&h, None, &sources, 64).unwrap().unwrap();
        assert_eq!((got.0.secret(), got.1), ("tok", Source::Cookie));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(
            extract(&h, None, &sources, 64).unwrap_err(),
            MultipleSources,
            "cookie + header"
        );
    }

    #[test]
    fn stripping_sources() {
        assert_eq!(
            strip_query_param("a=1&access_token=x&b=%20", "access_token").as_deref(),
            Some("a=1&b=%20")
        );
        assert_eq!(strip_query_param("access_token=x", "access_token"), None);
        assert_eq!(
            strip_query_param("access%5Ftoken=x&c", "access_token").as_deref(),
            Some("c")
        );
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; at=tok"),
        );
        h.append(http::header::COOKIE, HeaderValue::from_static("b=2"));
        strip_cookie(&mut h, "at");
        assert_eq!(
            h.get_all(http::header::COOKIE).iter().collect::<Vec<_>>(),
            vec!["a=1; b=2"]
        );
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, HeaderValue::from_static("at=tok"));
        strip_cookie(&mut h, "at");
        assert!(h.get(http::header::COOKIE).is_none());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = parse_bearer("Bearer supersecretvalue", 64)
            .unwrap()
            .unwrap();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("supersecret"), "{dbg}");
        assert_eq!(t.fingerprint().len(), 8);
    }
}
