//! Micro-benchmarks of the per-request hot path, piece by piece:
//! `cargo bench --bench hot_path` (release). `cargo test --all-targets` runs
//! each once as a smoke test. Results and the command live in BENCHMARKS.md.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};
use std::sync::Arc;
use tokengate::cache::TokenCache;
use tokengate::clock::SystemClock;
use tokengate::config::{RawConfig, Secret, Settings};
use tokengate::introspection::answer::Answer;
use tokengate::introspection::Introspection;
use tokengate::policy::{self, Access, Requirements};
use tokengate::token::{self, TokenSources};
use tokengate::upstream::forward::{self, Hop, Peer};

/// A 43-character opaque token, the common size (32 random bytes, base64url).
const OPAQUE: &str = "Bearer 4f3c2a1b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2";

fn settings() -> Settings {
    let mut c = RawConfig::default();
    c.introspection.url = "http://as.example/introspect".into();
    c.introspection.client_id = "tokengate".into();
    c.introspection.client_secret = Secret::new("s");
    c.validate().expect("bench config is valid")
}

fn introspection() -> Introspection {
    serde_json::from_str(
        r#"{"active":true,"client_id":"bench-client","sub":"user-1234","scope":"read write","token_type":"Bearer","iss":"https://auth.example.com","aud":"bench-api","iat":1700000000,"exp":4102444800}"#,
    )
    .expect("sample parses")
}

fn jwt_header() -> String {
    // A JWT-sized token (~800 bytes), the other common shape.
    format!("Bearer eyJhbGciOiJSUzI1NiJ9.{}.sig", "a".repeat(760))
}

fn request_headers(auth: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.example.com"));
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert("authorization", HeaderValue::from_str(auth).expect("ascii"));
    h
}

fn token_parsing(c: &mut Criterion) {
    let sources = TokenSources::default();
    let opaque = request_headers(OPAQUE);
    let jwt = request_headers(&jwt_header());
    c.bench_function("token/extract opaque", |b| {
        b.iter(|| token::extract(black_box(&opaque), None, &sources, 4096))
    });
    c.bench_function("token/extract jwt 800B", |b| {
        b.iter(|| token::extract(black_box(&jwt), None, &sources, 4096))
    });
}

fn hashing(c: &mut Criterion) {
    let tok = token::parse_bearer(OPAQUE, 4096).unwrap().unwrap();
    let jwt = token::parse_bearer(&jwt_header(), 4096).unwrap().unwrap();
    c.bench_function("hash/sha256 opaque", |b| b.iter(|| black_box(&tok).hash()));
    c.bench_function("hash/sha256 jwt 800B", |b| {
        b.iter(|| black_box(&jwt).hash())
    });
    let key = tok.hash();
    c.bench_function("hash/fingerprint", |b| {
        b.iter(|| token::fingerprint(black_box(&key)))
    });
}

fn cache_lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = settings();
    let cache = TokenCache::new(&s.cache, Arc::new(SystemClock));
    let i = introspection();
    // 10 000 entries, so the lookup is not into an almost empty table.
    let keys: Vec<_> = (0..10_000u32)
        .map(|n| {
            token::parse_bearer(&format!("Bearer tok{n}"), 4096)
                .unwrap()
                .unwrap()
                .hash()
        })
        .collect();
    rt.block_on(async {
        for k in &keys {
            let i = i.clone();
            let _ = cache.get_or_load(*k, || async { Ok(i) }).await;
        }
    });
    let mut n = 0;
    c.bench_function("cache/get_or_load hit", |b| {
        b.iter(|| {
            n = (n + 7919) % keys.len();
            rt.block_on(
                cache.get_or_load(keys[n], || async { unreachable!("every key is cached") }),
            )
        })
    });
    // A new token whose answer is at hand (what a locally checked JWT pays
    // after its check): the lookup that misses, the single flight and moka's
    // insert.
    let mut m = 0u64;
    c.bench_function("cache/get_or_load miss, insert", |b| {
        b.iter(|| {
            m += 1;
            let i = i.clone();
            let key = token::hash(&format!("new-{m}"));
            rt.block_on(cache.get_or_load(key, || async { Ok(i) }))
        })
    });
}

fn header_rewrite(c: &mut Criterion) {
    let s = settings();
    let i = introspection();
    let Access::Token(req) = &s.routes.default.access else {
        panic!("default route needs a token")
    };
    let i = Answer::from(i);
    let principal = policy::evaluate(&i, req, 1_800_000_000, &s.identity.claims).unwrap();
    let peer = Peer::new("10.1.2.3:40000".parse().unwrap(), "http");
    let hop = Hop {
        peer: &peer,
        identity: &s.identity,
        trusted: false,
        method_override: s.forwarding.method_override,
    };
    let headers = request_headers(OPAQUE);
    let host = headers.get("host").cloned();
    c.bench_function("forward/rewrite_request_headers", |b| {
        b.iter_batched(
            || headers.clone(),
            |mut h| {
                forward::rewrite_request_headers(
                    &mut h,
                    Version::HTTP_11,
                    host.clone(),
                    Some(&principal),
                    &hop,
                );
                h
            },
            BatchSize::SmallInput,
        )
    });
    // A crafted request at hyper's HTTP/1 limit of 100 fields: 49 kept, 50
    // named by `Connection`, and `Connection`. Its cost must stay in the
    // order of an ordinary request's (the stripping must not be quadratic).
    let mut crafted = HeaderMap::new();
    for i in 0..49 {
        let name = HeaderName::from_bytes(format!("x-keep-{i}").as_bytes()).unwrap();
        crafted.insert(name, HeaderValue::from_static("v"));
    }
    let named: Vec<String> = (0..50).map(|i| format!("x-drop-{i}")).collect();
    for n in &named {
        crafted.insert(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_static("v"),
        );
    }
    crafted.insert(
        "connection",
        HeaderValue::from_str(&named.join(", ")).unwrap(),
    );
    c.bench_function(
        "forward/strip_hop_by_hop 100 fields, 50 named by Connection",
        |b| {
            b.iter_batched(
                || crafted.clone(),
                |mut h| {
                    forward::strip_hop_by_hop(&mut h);
                    assert_eq!(h.len(), 49);
                    h
                },
                BatchSize::SmallInput,
            )
        },
    );
}

fn policy_decision(c: &mut Criterion) {
    let s = settings();
    // In its cached form, as a cache hit hands it to the policy.
    let i = Answer::from(introspection());
    let open = Requirements::default();
    let strict = Requirements {
        audience: vec!["bench-api".into()],
        issuer: Some("https://auth.example.com".into()),
        scopes: vec!["read".into()],
        clients: vec!["bench-client".into()],
        ..Requirements::default()
    };
    let claims = vec![(HeaderName::from_static("x-auth-iss"), "iss".to_owned())];
    c.bench_function("policy/evaluate no requirements", |b| {
        b.iter(|| policy::evaluate(black_box(&i), &open, 1_800_000_000, &[]))
    });
    c.bench_function("policy/evaluate aud+iss+scope+client", |b| {
        b.iter(|| policy::evaluate(black_box(&i), &strict, 1_800_000_000, &[]))
    });
    c.bench_function("policy/evaluate with a claim header", |b| {
        b.iter(|| policy::evaluate(black_box(&i), &open, 1_800_000_000, &claims))
    });
    c.bench_function("policy/route select", |b| {
        b.iter(|| {
            s.routes
                .select(
                    &Method::GET,
                    Some("api.example.com"),
                    black_box("/v1/orders/123"),
                )
                .map(|r| r.name.len())
        })
    });
}

/// A PEM file's DER bytes.
fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("bench key is PEM")
}

/// One local check of a new JWT access token (signature, iss, times; the
/// claims become the answer): what a token's first request costs with
/// `[jwt] enabled`, instead of an introspection call. Keys are bench-only
/// (`benches/keys/`).
fn jwt_validation(c: &mut Criterion) {
    use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
    use tokengate::introspection::jwks::{parse_jwks, Jwks};
    use tokengate::introspection::jwt::JwtVerifier;
    const ISS: &str = "https://auth.example.com";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut raw = RawConfig::default();
    raw.introspection.url = "http://as.example/introspect".into();
    raw.introspection.client_id = "tokengate".into();
    raw.introspection.client_secret = Secret::new("s");
    raw.jwt.enabled = true;
    raw.jwt.issuer = ISS.into();
    raw.jwt.jwks_url = "http://127.0.0.1:9/jwks".into();
    let s = raw.validate().expect("bench config is valid");
    let j = s.jwt.clone().expect("[jwt] is on");
    let clock = Arc::new(SystemClock);
    let jwks = Arc::new(Jwks::new(
        j.jwks.clone(),
        j.jwks_refetch_min_interval,
        std::time::Duration::from_secs(1),
        &s.introspection.tls,
        clock.clone(),
    ));
    let rsa = EncodingKey::from_rsa_der(&pem_der(include_str!("keys/rs256.pem")));
    let ec = EncodingKey::from_ec_der(&pem_der(include_str!("keys/es256.pem")));
    let jwk = |key: &EncodingKey, alg, kid: &str| {
        let mut jwk = Jwk::from_encoding_key(key, alg).expect("public JWK of the bench key");
        jwk.common.key_id = Some(kid.into());
        jwk
    };
    let set = serde_json::json!({"keys": [jwk(&rsa, Algorithm::RS256, "rs"), jwk(&ec, Algorithm::ES256, "es")]});
    jwks.set_keys(parse_jwks(set.to_string().as_bytes()).expect("bench JWKS"));
    let verifier = JwtVerifier::new(j, jwks.clone(), clock);
    let claims = serde_json::json!({"iss": ISS, "sub": "user-1234", "client_id": "bench-client",
        "aud": "bench-api", "scope": "read write", "iat": 1_700_000_000, "exp": 4_102_444_800i64,
        "jti": "6f1c2a8e-bench"});
    let token = |key: &EncodingKey, alg, kid: &str| {
        let mut h = Header::new(alg);
        h.typ = Some("at+jwt".into());
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims, key).expect("bench token")
    };
    for (alg, token, kid, public) in [
        (
            "RS256",
            token(&rsa, Algorithm::RS256, "rs"),
            "rs",
            jwk(&rsa, Algorithm::RS256, "rs"),
        ),
        (
            "ES256",
            token(&ec, Algorithm::ES256, "es"),
            "es",
            jwk(&ec, Algorithm::ES256, "es"),
        ),
    ] {
        let a: Algorithm = alg.parse().expect("bench alg");
        // The whole local check: peek, key lookup, signature, claims.
        assert!(rt.block_on(verifier.verify(&token)).is_ok(), "{alg}");
        c.bench_function(&format!("jwt/verify {alg}"), |b| {
            b.iter(|| rt.block_on(verifier.verify(black_box(&token))))
        });
        // The signature alone, with the key parsed at JWKS fetch time
        // (`jwks::Key`, aws-lc-rs `ParsedPublicKey`)...
        let key = rt.block_on(jwks.key_for(Some(kid), a)).expect("bench key");
        let (input, sig) = token.rsplit_once('.').expect("three parts");
        let sig = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig)
            .expect("bench signature");
        assert!(key.verify(a, input.as_bytes(), &sig));
        c.bench_function(&format!("jwt/signature {alg} parsed key"), |b| {
            b.iter(|| key.verify(a, black_box(input.as_bytes()), black_box(&sig)))
        });
        // ...and as jsonwebtoken's `decode` does it (what tokengate did
        // before): the header and claims decoded again, and the key parsed
        // from its bytes on every call (`DecodingKey` → `UnparsedPublicKey`).
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&public).expect("bench key");
        let mut v = jsonwebtoken::Validation::new(a);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_aud = false;
        assert!(jsonwebtoken::decode::<serde::de::IgnoredAny>(&token, &decoding, &v).is_ok());
        c.bench_function(&format!("jwt/signature {alg} jsonwebtoken decode"), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde::de::IgnoredAny>(black_box(&token), &decoding, &v)
                    .is_ok()
            })
        });
        // What a route admitting several issuers adds to every request,
        // cache hits included: the unverified `typ` and `iss`.
        c.bench_function(&format!("jwt/peek iss {alg}"), |b| {
            b.iter(|| tokengate::introspection::jwt::peek_iss(black_box(&token)))
        });
    }
}

/// One DPoP proof check (RFC 9449): parse, the jwk, an ES256 signature,
/// htm/htu/iat/ath, the RFC 7638 thumbprint. Target: < 60 µs on one core.
/// The replay-cache insert and the `cnf.jkt` comparison around it are a moka
/// `entry().or_insert` and a string compare (see `cache_lookup` for moka's cost).
fn dpop_proof(c: &mut Criterion) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey};
    use std::time::{Duration, UNIX_EPOCH};
    use tokengate::policy::binding::dpop::{self, DpopSettings, ProofContext, RequestUri};

    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p-256 key");
    let enc = EncodingKey::from_ec_der(&kp.serialize_der());
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&enc, Algorithm::ES256).expect("jwk"))
            .expect("jwk json");
    if let Some(o) = jwk.as_object_mut() {
        o.retain(|k, _| ["kty", "crv", "x", "y"].contains(&k.as_str()));
    }
    let token = &OPAQUE["Bearer ".len()..];
    let iat = 1_800_000_000u64;
    let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
    let claims = serde_json::json!({
        "jti": "e1j3V_bKic8-LAEB", "htm": "GET", "htu": "https://api.example.com/v1/orders",
        "iat": iat, "ath": dpop::token_hash(token),
    });
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &enc, Algorithm::ES256).expect("sign");
    let proof = format!("{msg}.{sig}");
    let settings = DpopSettings::default();
    let ctx = ProofContext {
        method: "GET",
        uri: RequestUri {
            scheme: "https",
            host: Some("api.example.com"),
            path: "/v1/orders",
        },
        token,
        now: UNIX_EPOCH + Duration::from_secs(iat + 1),
    };
    assert!(dpop::verify(&proof, &ctx, &settings).is_ok());
    c.bench_function("dpop/verify ES256 proof", |b| {
        b.iter(|| dpop::verify(black_box(&proof), &ctx, &settings).map(|v| v.remaining))
    });
}

criterion_group!(
    benches,
    token_parsing,
    hashing,
    cache_lookup,
    header_rewrite,
    policy_decision,
    jwt_validation,
    dpop_proof
);
criterion_main!(benches);
