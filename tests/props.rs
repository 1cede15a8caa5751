//! Property tests (issue 4, "Bad input, proven"): token parsing, introspection
//! response parsing and header handling never panic and never let anything
//! malformed through; and, end to end over raw sockets, nothing malformed
//! reaches the upstream.
//!
//! The oracles here are written independently of `src` (e.g. [`is_b64token`]
//! is the RFC 6750 grammar re-stated, not the crate's private helper), so a
//! property cannot pass by agreeing with the bug it should catch.

mod common;

use common::*;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Number, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokengate::config::{IdentitySettings, RawConfig, Secret};
use tokengate::introspection::answer::{Answer, Interner};
use tokengate::introspection::Introspection;
use tokengate::policy::{normalize_path, Access, Principal, Requirements, Route, RouteTable};
use tokengate::token::{self, Source, TokenSources};
use tokengate::upstream::forward::{
    header_safe, rewrite_request_headers, strip_hop_by_hop, Hop, Peer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wiremock::{Mock, ResponseTemplate};

/// Enough cases to find the edge cases below in well under a second each.
fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are turned into named regression tests by hand, not files.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Oracles and generators shared by the properties
// ---------------------------------------------------------------------------

/// RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~+/".contains(&c))
}

const B64TOKEN: &str = "[A-Za-z0-9._~+/-]{1,48}={0,3}";

/// `word` in a random mix of upper and lower case.
fn any_case(word: &'static str) -> impl Strategy<Value = String> {
    vec(any::<bool>(), word.len()).prop_map(move |up| {
        word.chars()
            .zip(up)
            .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
            .collect()
    })
}

/// Strings that look like credentials, or almost do, or not at all.
fn authorization_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,40}",
        "(?i)bearer[ \t]{0,3}[ -~]{0,40}",
        (any_case("bearer"), " ", B64TOKEN).prop_map(|(s, sp, t)| format!("{s}{sp}{t}")),
        (
            any_case("bearer"),
            "[ \t,=\"]{0,2}",
            B64TOKEN,
            "[ \t,=\"]{0,2}",
            "[ -~]{0,4}"
        )
            .prop_map(|(s, a, t, b, c)| format!("{s} {a}{t}{b}{c}")),
    ]
}

/// Bytes a `HeaderValue` can hold (visible ASCII, SP, HTAB, obs-text).
fn header_value_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            8 => 0x20u8..0x7f,
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
        ],
        0..24,
    )
}

// ---------------------------------------------------------------------------
// 1. Token parsing
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(cfg(512))]

    #[test]
    fn parse_bearer_accepts_only_well_formed_tokens_within_the_limit(
        value in authorization_text(),
        max in 0usize..64,
    ) {
        if let Ok(Some(t)) = token::parse_bearer(&value, max) {
            let t = t.secret();
            prop_assert!(is_b64token(t), "accepted a non-b64token: {t:?}");
            prop_assert!(t.len() <= max, "accepted {} bytes over a limit of {max}", t.len());
            // The whole value is the scheme, one SP and the token: nothing dropped.
            prop_assert!(value.len() == 7 + t.len() && value[..6].eq_ignore_ascii_case("bearer"));
            prop_assert_eq!(&value[6..7], " ");
            prop_assert_eq!(&value[7..], t);
        }
    }

    #[test]
    fn parse_bearer_round_trips_every_valid_token_in_any_scheme_case(
        scheme in any_case("bearer"),
        tok in B64TOKEN,
    ) {
        let got = token::parse_bearer(&format!("{scheme} {tok}"), tok.len())
            .map(|t| t.map(|t| t.secret().to_owned()));
        prop_assert_eq!(got, Ok(Some(tok.clone())));
        // One byte under the limit is refused, never truncated.
        prop_assert_eq!(
            token::parse_bearer(&format!("{scheme} {tok}"), tok.len() - 1).map(|t| t.is_some()),
            Err(token::TokenError::TooLong)
        );
    }
}

proptest! {
    #![proptest_config(cfg(256))]

    #[test]
    fn extract_never_panics_and_yields_only_well_formed_tokens(
        auth in vec(prop_oneof![
            authorization_text().prop_map(String::into_bytes),
            header_value_bytes(),
        ], 0..3),
        cookies in vec(prop_oneof![
            "(at|a|b|AT)=\"?[ -~]{0,20}\"?(; ?(at|x)=[ -:<-~]{0,10})?",
            "[ -~]{0,30}",
        ], 0..3),
        query in proptest::option::of(prop_oneof![
            "((access_token|a|access%5Ftoken)=[A-Za-z0-9%+._~=/ -]{0,20}&?){0,3}",
            any::<String>(),
        ]),
        max in 1usize..64,
    ) {
        let mut headers = HeaderMap::new();
        for a in &auth {
            if let Ok(v) = HeaderValue::from_bytes(a) {
                headers.append(http::header::AUTHORIZATION, v);
            }
        }
        for c in &cookies {
            if let Ok(v) = HeaderValue::from_str(c) {
                headers.append(http::header::COOKIE, v);
            }
        }
        let sources = TokenSources {
            query_param: Some("access_token".into()),
            cookie: Some("at".into()),
        };
        if let Ok(Some((t, source))) = token::extract(&headers, query.as_deref(), &sources, max) {
            prop_assert!(is_b64token(t.secret()), "{:?}", t.secret());
            prop_assert!(t.secret().len() <= max);
            if source == Source::Header {
                let all: Vec<_> = headers.get_all(http::header::AUTHORIZATION).iter().collect();
                prop_assert_eq!(all.len(), 1, "a header token needs exactly one header");
                let v = all[0].to_str().unwrap_or_default();
                prop_assert!(v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
                prop_assert_eq!(&v[7..], t.secret());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Introspection responses
// ---------------------------------------------------------------------------

/// JSON numbers and strings of every shape a time or flag claim shows up in.
fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0i64..4_000_000_000).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        (-1e12f64..1e12).prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        "[ ]?-?[0-9]{1,20}(\\.[0-9]{0,4})?([eE][+-]?[0-9]{1,3})?[ ]?".prop_map(Value::String),
        "(?i)(true|false|null|bearer|refresh_token|inf|nan|-inf|infinity)".prop_map(Value::String),
        "[ -~]{0,12}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("[a-z_]{1,6}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

const CLAIMS: &[&str] = &[
    "active",
    "exp",
    "iat",
    "nbf",
    "scope",
    "aud",
    "client_id",
    "sub",
    "iss",
    "jti",
    "username",
    "token_type",
    "typ",
];

/// An introspection document as `(member, value)` pairs, duplicates allowed
/// (they are written out as raw JSON, so `{"exp":1,"exp":2}` is possible).
fn introspection_members() -> impl Strategy<Value = Vec<(String, Value)>> {
    let key = prop_oneof![
        4 => proptest::sample::select(CLAIMS).prop_map(str::to_owned),
        1 => "[a-z_]{1,8}",
    ];
    let active = prop_oneof![
        3 => Just(Value::Bool(true)),
        1 => json_value(),
    ];
    (proptest::option::of(active), vec((key, json_value()), 0..8)).prop_map(|(active, mut rest)| {
        if let Some(a) = active {
            rest.insert(0, ("active".to_owned(), a));
        }
        rest
    })
}

fn to_json_bytes(members: &[(String, Value)]) -> Vec<u8> {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
        .collect();
    format!("{{{}}}", body.join(",")).into_bytes()
}

/// The numeric value a time claim had in the JSON, if it was a number or a
/// numeric string.
fn numeric(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

proptest! {
    #![proptest_config(cfg(1024))]

    #[test]
    fn introspection_parse_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<Introspection>(&bytes);
    }
}

proptest! {
    #![proptest_config(cfg(256))]

    #[test]
    fn introspection_is_active_only_for_boolean_true_and_never_extends_exp(
        members in introspection_members(),
    ) {
        let bytes = to_json_bytes(&members);
        let Ok(parsed) = serde_json::from_slice::<Introspection>(&bytes) else {
            return Ok(());
        };
        let values = |name: &'static str| members.iter().filter(move |(k, _)| k == name).map(|(_, v)| v);
        if parsed.active {
            prop_assert!(
                values("active").any(|v| *v == Value::Bool(true)),
                "active without a JSON `true`: {}", String::from_utf8_lossy(&bytes)
            );
        }
        for (claim, got) in [("exp", parsed.exp), ("iat", parsed.iat), ("nbf", parsed.nbf)] {
            let Some(got) = got else { continue };
            let original = values(claim)
                .filter_map(numeric)
                .fold(f64::NEG_INFINITY, f64::max);
            // Below i64::MIN the value saturates there: still the distant past.
            prop_assert!(
                (got as f64) <= original.max(i64::MIN as f64),
                "{claim} {got} exceeds the original {original}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        if let Some(scopes) = &parsed.scope {
            prop_assert!(scopes.iter().all(|s| !s.is_empty() && !s.contains(char::is_whitespace)));
        }
    }

    #[test]
    fn introspection_parse_never_panics_on_arbitrary_json_trees(v in json_value()) {
        let _ = serde_json::from_value::<Introspection>(v.clone());
        let _ = serde_json::from_slice::<Introspection>(v.to_string().as_bytes());
    }
}

/// Claim text as `[identity.claims]` documents it, read from a JSON view:
/// strings as they are, numbers and booleans printed, arrays joined with
/// spaces (null elements skipped), objects as JSON; `a.b` walks into nested
/// objects when there is no member literally named `a.b`.
fn claim_text_oracle(view: &Value, name: &str) -> Option<String> {
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => {
                Some(items.iter().filter_map(text).collect::<Vec<_>>().join(" "))
            }
            other => Some(other.to_string()),
        }
    }
    let v = match view.get(name).filter(|v| !v.is_null()) {
        Some(v) => v,
        None => {
            let mut parts = name.split('.');
            let first = view.get(parts.next()?)?;
            parts.try_fold(first, |v, p| v.get(p))?
        }
    };
    text(v)
}

/// A well-typed introspection answer: every modelled member present or not,
/// in each of the shapes the parser accepts, plus unknown members of any
/// shape (so nearly every case parses, unlike [`introspection_members`]).
fn valid_answer_members() -> impl Strategy<Value = Vec<(String, Value)>> {
    let time = prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        (0i64..4_000_000_000).prop_map(|n| Value::String(n.to_string())),
        Just(Value::Null),
    ];
    let word = "[!-~]{1,8}";
    let text = prop_oneof![
        "[ -~]{0,12}".prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        Just(Value::Null),
    ];
    let list = prop_oneof![
        vec(word, 0..4).prop_map(|w| Value::String(w.join(" "))),
        vec(word, 0..4).prop_map(Value::from),
        Just(Value::Null),
    ];
    let token_type = prop_oneof![
        "(?i)(bearer|mac|refresh_token|dpop|id)".prop_map(Value::String),
        Just(Value::Null),
    ];
    let opt = |name: &'static str, v: BoxedStrategy<Value>| {
        proptest::option::of(v).prop_map(move |v| v.map(|v| (name.to_owned(), v)))
    };
    let extra_key =
        "[a-z_.]{1,8}".prop_filter("not a modelled member", |k| !CLAIMS.contains(&k.as_str()));
    (
        (
            any::<bool>(),
            opt("exp", time.clone().boxed()),
            opt("iat", time.clone().boxed()),
            opt("nbf", time.boxed()),
            opt("scope", list.clone().boxed()),
            opt("aud", list.boxed()),
        ),
        (
            opt("client_id", text.clone().boxed()),
            opt("sub", text.clone().boxed()),
            opt("iss", text.clone().boxed()),
            opt("jti", text.clone().boxed()),
            opt("username", text.boxed()),
            // Keycloak's `typ` is read as `token_type`.
            proptest::option::of((
                proptest::sample::select(&["token_type", "typ"][..]),
                token_type,
            ))
            .prop_map(|kv| kv.map(|(k, v)| (k.to_owned(), v))),
        ),
        vec((extra_key, json_value()), 0..4),
    )
        .prop_map(|((active, a, b, c, d, e), (f, g, h, i, j, k), extra)| {
            let mut m = vec![("active".to_owned(), Value::Bool(active))];
            m.extend([a, b, c, d, e, f, g, h, i, j, k].into_iter().flatten());
            m.extend(extra);
            m
        })
}

/// One interner for all cases, small, so that cases also run past its bound.
fn shared_interner() -> &'static Interner {
    static INTERNER: std::sync::OnceLock<Interner> = std::sync::OnceLock::new();
    INTERNER.get_or_init(|| Interner::new(8))
}

proptest! {
    #![proptest_config(cfg(512))]

    /// The cache keeps answers in their compact form (`Answer`): converting
    /// any parsed answer gives back exactly what was parsed, and every claim
    /// (top-level, nested, unknown) reads the same as from the parsed answer's
    /// JSON view.
    #[test]
    fn cached_form_round_trips_and_reads_the_same_claims(
        members in valid_answer_members(),
    ) {
        let bytes = to_json_bytes(&members);
        let parsed = serde_json::from_slice::<Introspection>(&bytes);
        prop_assert!(parsed.is_ok(), "{}: {:?}", String::from_utf8_lossy(&bytes), parsed.err());
        let parsed = parsed.unwrap();
        let answer = Answer::new(parsed.clone(), shared_interner());
        prop_assert_eq!(&answer.to_introspection(), &parsed);
        prop_assert_eq!(answer.exp, parsed.exp);
        let view = serde_json::to_value(&parsed).unwrap();
        let mut names: Vec<String> = CLAIMS.iter().map(|c| c.to_string()).collect();
        for (k, v) in &members {
            names.push(k.clone());
            if let Value::Object(o) = v {
                names.extend(o.keys().map(|sub| format!("{k}.{sub}")));
            }
        }
        for name in &names {
            prop_assert_eq!(
                answer.claim_text(name),
                claim_text_oracle(&view, name),
                "claim {} of {}", name, String::from_utf8_lossy(&bytes)
            );
        }
        prop_assert!(shared_interner().len() <= 8);
    }
}

/// serde_json's recursion limit turns a deep document into an error, not a
/// stack overflow.
#[test]
fn introspection_parse_rejects_deep_nesting_without_overflowing() {
    let deep = format!(
        "{{\"active\":true,\"x\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(serde_json::from_str::<Introspection>(&deep).is_err());
}

// ---------------------------------------------------------------------------
// 3. Header handling
// ---------------------------------------------------------------------------

const IDENTITY: &[&str] = &[
    "x-auth-subject",
    "x-auth-client-id",
    "x-auth-scope",
    "x-forwarded-user",
    "x-remote-user",
    "x-user",
    "x-auth-email",
];
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
const OTHER: &[&str] = &[
    "accept",
    "authorization",
    "content-length",
    "host",
    "via",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-a",
    "x-b",
];

fn header_name_text() -> impl Strategy<Value = String> {
    let pool: Vec<&'static str> = IDENTITY.iter().chain(HOP).chain(OTHER).copied().collect();
    prop_oneof![
        4 => proptest::sample::select(pool).prop_flat_map(|n| {
            vec(any::<bool>(), n.len()).prop_map(move |up| {
                n.chars()
                    .zip(up)
                    .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
                    .collect()
            })
        }),
        1 => "[a-zA-Z][a-zA-Z0-9-]{0,10}",
    ]
}

/// A `Connection` value: a list of names (pool or made up), sometimes with
/// junk, empty elements or obs-text in it.
fn connection_value() -> impl Strategy<Value = Vec<u8>> {
    (
        vec(header_name_text(), 0..4),
        "[ \t,]{0,2}",
        proptest::option::of(header_value_bytes()),
    )
        .prop_map(|(names, sep, junk)| {
            let mut v = names.join(&format!(",{sep}")).into_bytes();
            if let Some(j) = junk {
                v.extend_from_slice(b", ");
                v.extend(j);
            }
            v
        })
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    vec(
        prop_oneof![
            (header_name_text(), header_value_bytes()),
            (
                "[cC][oO][nN][nN][eE][cC][tT][iI][oO][nN]",
                connection_value()
            ),
        ],
        0..12,
    )
    .prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_bytes(&v),
            ) {
                h.append(k, v);
            }
        }
        h
    })
}

/// Names a `Connection` header lists, read as a recipient must: split on
/// commas, optional whitespace trimmed, case-insensitive.
fn connection_listed(h: &HeaderMap) -> HashSet<String> {
    h.get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|n| {
            String::from_utf8_lossy(n)
                .trim_matches([' ', '\t'])
                .to_ascii_lowercase()
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// Built once: validating a config per case would be most of the run time.
fn identity_settings() -> &'static IdentitySettings {
    static ID: std::sync::OnceLock<IdentitySettings> = std::sync::OnceLock::new();
    ID.get_or_init(build_identity_settings)
}

fn build_identity_settings() -> IdentitySettings {
    let mut raw = RawConfig::default();
    raw.introspection.url = "http://as.test/introspect".into();
    raw.introspection.client_id = "c".into();
    raw.introspection.client_secret = Secret::new("s");
    raw.identity
        .claims
        .insert("X-Auth-Email".into(), "email".into());
    raw.validate().expect("identity test config").identity
}

fn principal() -> impl Strategy<Value = Option<Principal>> {
    proptest::option::of(
        (
            proptest::option::of(any::<String>()),
            proptest::option::of("[ -~]{0,10}"),
            any::<String>(),
            proptest::option::of(any::<String>()),
        )
            .prop_map(|(subject, client_id, scope, email)| Principal {
                subject,
                client_id,
                scope,
                claims: email
                    .map(|e| vec![(HeaderName::from_static("x-auth-email"), e)])
                    .unwrap_or_default(),
            }),
    )
}

proptest! {
    #![proptest_config(cfg(256))]

    #[test]
    fn rewrite_leaves_no_hop_by_hop_or_spoofed_identity_header(
        mut headers in header_map(),
        principal in principal(),
        h2 in any::<bool>(),
    ) {
        let id = identity_settings();
        let peer = Peer::new("192.0.2.7:4000".parse().unwrap(), "http");
        let hop = Hop {
            peer: &peer,
            identity: id,
            trusted: false,
            method_override: tokengate::config::MethodOverride::Strip,
        };
        let listed = connection_listed(&headers);
        let host = headers.get(http::header::HOST).cloned();
        let version = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
        rewrite_request_headers(&mut headers, version, host.clone(), principal.as_ref(), &hop);

        // What we set, and the only values those names may carry now.
        let mut ours: Vec<(&str, HeaderValue)> = Vec::new();
        if let Some(p) = &principal {
            if let Some(s) = &p.subject { ours.push(("x-auth-subject", header_safe(s))); }
            if let Some(c) = &p.client_id { ours.push(("x-auth-client-id", header_safe(c))); }
            ours.push(("x-auth-scope", header_safe(&p.scope)));
            for (n, v) in &p.claims { ours.push((n.as_str(), header_safe(v))); }
        }
        let set_by_us = |name: &str| {
            ours.iter().any(|(n, _)| *n == name)
                || ["x-forwarded-for", "x-forwarded-proto", "via", "forwarded", "x-real-ip"]
                    .contains(&name)
                || (name == "x-forwarded-host" && host.is_some())
        };
        for name in HOP {
            prop_assert!(headers.get(*name).is_none(), "hop-by-hop {name} survived");
        }
        for name in &listed {
            prop_assert!(
                set_by_us(name) || headers.get(name.as_str()).is_none(),
                "{name} is listed in Connection but was forwarded: {headers:?}"
            );
        }
        for name in IDENTITY {
            let got: Vec<_> = headers.get_all(*name).iter().cloned().collect();
            match ours.iter().find(|(n, _)| n == name) {
                Some((_, v)) => prop_assert_eq!(got, vec![v.clone()], "{}", name),
                None => prop_assert!(got.is_empty(), "spoofed {name} survived: {got:?}"),
            }
        }
        prop_assert!(headers.get(http::header::CONTENT_LENGTH).is_none());
        prop_assert!(headers.get(http::header::HOST).is_none());
        let xff: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
        prop_assert_eq!(xff.len(), 1);
        // Not a trusted proxy: the chain starts at the peer, whatever it said.
        prop_assert_eq!(xff[0].as_bytes(), b"192.0.2.7");
        let via = headers.get_all(http::header::VIA).iter().next_back().cloned();
        prop_assert_eq!(via, Some(HeaderValue::from_static(if h2 { "2 tokengate" } else { "1.1 tokengate" })));
    }

    #[test]
    fn strip_hop_by_hop_removes_every_listed_and_fixed_field(mut headers in header_map()) {
        let listed = connection_listed(&headers);
        strip_hop_by_hop(&mut headers);
        for name in HOP.iter().map(|s| s.to_string()).chain(listed) {
            prop_assert!(headers.get(name.as_str()).is_none(), "{name} survived: {headers:?}");
        }
    }

    #[test]
    fn header_safe_yields_a_valid_value_without_line_breaks_or_nul(s in any::<String>()) {
        let v = header_safe(&s);
        prop_assert!(!v.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | b'\0')));
        // It must survive a round trip through the header parser unchanged.
        prop_assert_eq!(HeaderValue::from_bytes(v.as_bytes()).ok(), Some(v.clone()));
        if !s.chars().any(|c| c.is_control() && c != '\t') {
            prop_assert_eq!(v.as_bytes(), s.as_bytes(), "a value without controls is kept as is");
        }
    }

    #[test]
    fn header_safe_keeps_distinct_identities_distinct(
        a in "[^\\p{Cc}]{0,12}",
        b in "[^\\p{Cc}]{0,12}",
    ) {
        prop_assume!(a != b);
        prop_assert_ne!(header_safe(&a), header_safe(&b));
    }
}

// Paths: random text, and text made of the pieces that traversal and decoding
// tricks are built from.
fn raw_path() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), path_from_pieces()]
}

fn path_from_pieces() -> impl Strategy<Value = String> {
    vec(
        proptest::sample::select(vec![
            "/",
            "//",
            "\\",
            ".",
            "..",
            "%2e",
            "%2E%2e",
            "%2f",
            "%2F",
            "%5c",
            "%5C",
            "%",
            "%%",
            "%g0",
            "%c0%af",
            "%00",
            "admin",
            "ADMIN",
            "%61dmin",
            "public",
            "a",
            "é",
            ";",
            "?",
            "#",
            // Issue 12 item 3: parameters, case, trailing dots, double encoding,
            // full-width forms.
            ";x",
            "..;",
            "%3B",
            "Admin",
            "admin.",
            "%20",
            "%2561",
            "%252e",
            "%EF%BC%8F",
            "%EF%BD%81",
            "%EF%BC%8E",
        ]),
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

fn route_table() -> RouteTable {
    let token = |scopes: &[&str]| {
        Access::Token(Arc::new(Requirements {
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Requirements::default()
        }))
    };
    let route = |name: &str, prefix: &str, host: Option<&str>, access: Access| Route {
        name: name.into(),
        path_prefix: prefix.into(),
        methods: Vec::new(),
        host: host.map(str::to_owned),
        access,
    };
    RouteTable {
        routes: vec![
            route("routes[0]", "/admin", None, token(&["admin"])),
            route("routes[1]", "/public", None, Access::Public),
            route("routes[2]", "/a/b", Some("api.test"), Access::Public),
        ],
        default: route("default", "/", None, token(&[])),
    }
}

proptest! {
    #![proptest_config(cfg(512))]

    #[test]
    fn normalize_path_is_rooted_dot_free_slash_collapsed_and_idempotent(p in raw_path()) {
        let n = normalize_path(&p);
        prop_assert!(n.starts_with('/'), "{n:?}");
        prop_assert!(!n.contains("//") && !n.contains('\\'), "{n:?}");
        prop_assert!(n.split('/').all(|s| s != "." && s != ".."), "{n:?}");
        prop_assert_eq!(normalize_path(&n), n.clone());
    }

    #[test]
    fn select_never_panics_and_never_lets_admin_paths_through_as_public(
        p in raw_path(),
        host in proptest::option::of(prop_oneof![
            Just("api.test".to_owned()), Just("API.test:8443".to_owned()), any::<String>(),
        ]),
    ) {
        let table = route_table();
        if let Ok(route) = table.select(&Method::GET, host.as_deref(), &p) {
            if matches!(route.access, Access::Public) {
                // Every reading a server might give the path must be outside
                // /admin: decoded once or twice, then as written, without
                // `;params` (Servlet containers), lower-cased (IIS), and
                // without trailing dots and spaces (Windows names).
                let once = percent_decode_all(&p);
                let twice = percent_decode_all(&once);
                for decoded in [p.clone(), once, twice] {
                    for reading in [
                        decoded.clone(),
                        per_segment(&decoded, |s| s.split(';').next().unwrap_or(s)),
                        decoded.to_lowercase(),
                        per_segment(&decoded, |s| if s == ".." { s } else { s.trim_end_matches(['.', ' ']) }),
                    ] {
                        let n = normalize_path(&reading);
                        prop_assert!(
                            !(n == "/admin" || n.starts_with("/admin/")),
                            "{p:?} reads as {n:?} but was routed public"
                        );
                    }
                }
            }
        }
    }
}

/// `path` with `f` applied to each `/`- or `\\`-separated segment.
fn per_segment(path: &str, f: impl Fn(&str) -> &str) -> String {
    path.split(['/', '\\']).map(f).collect::<Vec<_>>().join("/")
}

/// Plain percent-decoding (every `%XX`), lossy UTF-8: the most a server decodes.
fn percent_decode_all(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// 4. End to end: nothing malformed reaches the upstream
// ---------------------------------------------------------------------------

/// Tokens the fake AS calls active; every other token is inactive.
const APPROVED: &[&str] = &["good-token", "Z2Vu.dWlu~+/e==", "a"];

/// The `Authorization` lines of one request: none, one or two, each either a
/// well-formed approved credential or something near or far from it. CR and
/// LF are left out: they end the line in the raw request, and the header
/// injection cases are pinned one by one in `tests/proxy.rs`.
fn authorization_lines() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let approved = || {
        (any_case("bearer"), proptest::sample::select(APPROVED))
            .prop_map(|(s, t)| format!("{s} {t}").into_bytes())
    };
    let line = prop_oneof![
        3 => approved(),
        2 => (approved(), "[ \t,;=\"\\\\x]{1,2}", any::<bool>()).prop_map(|(a, junk, front)| {
            let mut a = String::from_utf8(a).unwrap_or_default();
            if front { a.insert_str(7, &junk) } else { a.push_str(&junk) }
            a.into_bytes()
        }),
        2 => authorization_text().prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..24),
    ];
    let line = line.prop_map(|l| -> Vec<u8> {
        l.into_iter()
            .filter(|b| *b != b'\r' && *b != b'\n')
            .collect()
    });
    prop_oneof![
        1 => Just(Vec::new()),
        4 => vec(line.clone(), 1..=1),
        1 => vec(line, 2..=2),
    ]
}

fn request_target() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => path_from_pieces().prop_map(|p| format!("/{p}").into_bytes()),
        1 => any::<String>().prop_map(|p| format!("/{p}").into_bytes()),
        1 => vec(any::<u8>(), 0..24),
        1 => Just(b"http://evil.test/x".to_vec()),
        1 => Just(b"*".to_vec()),
    ]
    .prop_map(|t| {
        t.into_iter()
            .filter(|b| *b != b'\r' && *b != b'\n')
            .collect()
    })
}

/// `value` is exactly `<bearer in any case> SP <approved token>`, give or take
/// the leading and trailing whitespace that is not part of a field value
/// (RFC 9110 §5.5) and that the parser drops.
fn well_formed_and_approved(value: &[u8]) -> bool {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    let value = &value[start..end.max(start)];
    value.len() > 7
        && value[..7].eq_ignore_ascii_case(b"bearer ")
        && APPROVED.iter().any(|t| t.as_bytes() == &value[7..])
}

/// Sends one request; the answer's status, or why there was none.
async fn exchange(addr: std::net::SocketAddr, req: &[u8]) -> Result<u16, String> {
    let io = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(req).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        // A reset after the answer (hyper closing on a request it refused) is fine.
        let _ = s.read_to_end(&mut out).await;
        Ok::<_, String>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| "no answer within 5s".to_owned())??;
    let head = String::from_utf8_lossy(&out[..out.len().min(64)]).into_owned();
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {head:?}"))
}

#[test]
fn malformed_requests_never_reach_the_upstream() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = rt.block_on(async {
        let env = Env::start().await;
        for t in APPROVED {
            introspection_of(t)
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                    "active": true, "sub": "alice", "scope": "read", "exp": env.now() + 3600,
                })))
                .mount(&env.auth)
                .await;
        }
        Mock::given(wiremock::matchers::any())
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"active": false})))
            .with_priority(10)
            .mount(&env.auth)
            .await;
        env
    });

    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(
        &(authorization_lines(), request_target()),
        |(auth, target)| {
            let mut req = b"GET ".to_vec();
            req.extend_from_slice(&target);
            req.extend_from_slice(b" HTTP/1.1\r\nHost: gate\r\n");
            for a in &auth {
                req.extend_from_slice(b"Authorization: ");
                req.extend_from_slice(a);
                req.extend_from_slice(b"\r\n");
            }
            req.extend_from_slice(b"Connection: close\r\n\r\n");
            let shown = String::from_utf8_lossy(&req).into_owned();

            let before = env.upstream.hits();
            let status = rt
                .block_on(exchange(env.gate.addr, &req))
                .map_err(|e| TestCaseError::fail(format!("{e}: {shown:?}")))?;
            let seen = env.upstream.seen();
            let new = &seen[before..];

            let credential_ok = auth.len() == 1 && well_formed_and_approved(&auth[0]);
            if !credential_ok {
                prop_assert!(
                    new.is_empty(),
                    "malformed request reached the upstream: {shown:?}"
                );
            }
            for e in new {
                let a = e.header_all("authorization");
                prop_assert!(
                    a.len() == 1 && well_formed_and_approved(a[0].as_bytes()),
                    "the upstream got {a:?} for {shown:?}"
                );
                prop_assert!(e.target.starts_with('/'), "{:?}", e.target);
                prop_assert!(
                    !e.target.bytes().any(|b| b <= b' ' || b == 0x7f),
                    "control or space in the forwarded target {:?}",
                    e.target
                );
                prop_assert_eq!(e.header_all("x-auth-subject"), vec!["alice"]);
            }
            if new.is_empty() {
                prop_assert!((400..500).contains(&status), "{status} for {shown:?}");
            } else {
                prop_assert_eq!(status, 200, "{}", shown);
            }
            Ok(())
        },
    );

    // Nothing malformed reached the AS either.
    let asked = rt.block_on(env.introspections());
    rt.block_on(async move { drop(env) });
    if let Err(e) = result {
        panic!("{e}");
    }
    for r in asked {
        let t = form_value(&r.body, "token").unwrap_or_default();
        assert!(is_b64token(&t), "the AS was asked about {t:?}");
    }
}
