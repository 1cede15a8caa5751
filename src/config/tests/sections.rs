//! Loading and validation of `[mtls]`, `[tls]` client certificates, `[jwt]`,
//! `introspection.response_format`, `[dpop]`, `[ext_authz]` and `[tracing]`.

use super::*;

#[test]
fn mtls_and_client_certificate_keys_report_every_error() {
    let mut c = base();
    c.mtls.client_cert_header = "bad header".into();
    c.mtls.trusted_proxies = vec!["10.0.0.0/8".into(), "nope".into(), "10.0.0.300".into()];
    c.tls.client_auth = crate::http::tls::ClientAuth::Required;
    let text = c.validate().unwrap_err().to_string();
    assert!(text.starts_with("4 invalid settings:\n"), "{text}");
    for key in [
        "`mtls.client_cert_header`: \"bad header\" is not a valid header name",
        "`mtls.trusted_proxies`: \"nope\" is not an IP address or CIDR",
        "`mtls.trusted_proxies`: \"10.0.0.300\" is not an IP address or CIDR",
        "`tls.client_auth`: \"required\" needs tls.client_ca_file",
    ] {
        assert!(text.contains(key), "{key} missing from {text}");
    }

    // A CA file only means something when we terminate TLS.
    let mut c = base();
    c.tls.client_ca_file = "/etc/ca.pem".into();
    let err = c.validate().unwrap_err();
    assert!(
        matches!(
            &err,
            ConfigError::Invalid {
                key: "tls.client_ca_file",
                ..
            }
        ),
        "{err:?}"
    );
    // Proxies to trust, but no header to read from them.
    let mut c = base();
    c.mtls.trusted_proxies = vec!["10.0.0.1".into()];
    let err = c.validate().unwrap_err();
    assert!(
        matches!(
            &err,
            ConfigError::Invalid {
                key: "mtls.trusted_proxies",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn mtls_keys_parse_and_the_binding_header_is_stripped() {
    let mut c = base();
    c.mtls.client_cert_header = "X-SSL-Client-Cert".into();
    c.mtls.trusted_proxies = vec!["10.0.0.7".into(), "fd00::/8".into()];
    let s = c.validate().unwrap();
    assert_eq!(
        s.mtls.client_cert_header.as_ref().map(|h| h.as_str()),
        Some("x-ssl-client-cert")
    );
    assert!(s.mtls.trusts("10.0.0.7".parse().unwrap()));
    assert!(s.mtls.trusts("::ffff:10.0.0.7".parse().unwrap()));
    assert!(!s.mtls.trusts("10.0.0.8".parse().unwrap()));
    assert_eq!(s.identity.binding_header.as_str(), "x-auth-token-binding");
    assert!(s.identity.strip.iter().any(|h| h == "x-auth-token-binding"));
    // Defaults: nothing trusted, no header, no client certificates asked for.
    let s = base().validate().unwrap();
    assert_eq!(
        s.mtls,
        crate::policy::binding::mtls::MtlsSettings::default()
    );
}

#[test]
fn mtls_keys_come_from_the_environment_too() {
    Jail::expect_with(|jail| {
        minimal_env(jail);
        jail.set_env("TOKENGATE_MTLS__CLIENT_CERT_HEADER", "X-SSL-Client-Cert");
        jail.set_env("TOKENGATE_MTLS__TRUSTED_PROXIES", r#"["10.0.0.5"]"#);
        let s = load(None)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())?;
        assert!(s.mtls.trusts("10.0.0.5".parse().unwrap()));
        Ok(())
    });
}

#[test]
fn jwt_keys_load_from_the_environment_and_every_bad_one_is_reported() {
    Jail::expect_with(|jail| {
        minimal_env(jail);
        let s = load(None)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())?;
        assert!(s.jwt.is_none(), "off by default");
        assert_eq!(s.introspection.response_format, ResponseFormat::Json);
        jail.set_env("TOKENGATE_JWT__ENABLED", "true");
        jail.set_env("TOKENGATE_JWT__ISSUER", "https://as.test");
        jail.set_env("TOKENGATE_JWT__LEEWAY", "5s");
        jail.set_env("TOKENGATE_INTROSPECTION__RESPONSE_FORMAT", "jwt");
        let s = load(None)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())?;
        let jwt = s.jwt.ok_or("jwt settings")?;
        assert_eq!(jwt.leeway, Duration::from_secs(5));
        assert_eq!(
            jwt.jwks,
            crate::introspection::jwks::JwksSource::Issuer("https://as.test".into())
        );
        assert_eq!(s.introspection.response_format, ResponseFormat::Jwt);
        jail.set_env("TOKENGATE_JWT__ISSUR", "x");
        let err = load(None).unwrap_err().to_string();
        assert!(
            err.contains("issur"),
            "unknown [jwt] keys are errors: {err}"
        );
        Ok(())
    });
    let mut c = base();
    c.introspection.response_format = ResponseFormat::Jwt;
    c.jwt.algorithms = vec!["none".into(), "HS256".into()];
    c.jwt.jwks_url = "file:///etc/jwks".into();
    c.jwt.jwks_refetch_min_interval = Duration::ZERO;
    let text = c.validate().unwrap_err().to_string();
    for key in [
        "`jwt.jwks_refetch_min_interval`: must be greater than 0",
        "`jwt.algorithms`: \"none\"",
        "`jwt.algorithms`: \"HS256\"",
        "`jwt.jwks_url`",
        "`jwt.issuer`: is required with introspection.response_format",
    ] {
        assert!(text.contains(key), "{key} missing from {text}");
    }
}

#[test]
fn dpop_keys_load_validate_every_bad_one_and_strip_the_proof() {
    Jail::expect_with(|jail| {
        minimal_env(jail);
        jail.create_file(
            "t.toml",
            r#"
            [dpop]
            enabled = true
            algorithms = ["ES256", "EdDSA"]
            max_age = "30s"
            require_nonce = true
            forward_proof = true
            replay_cache_entries = 500
            [identity]
            binding_header = "X-Binding"
            "#,
        )?;
        let s = load(Some(Path::new("t.toml"))).unwrap().validate().unwrap();
        assert_eq!(&*s.dpop.challenge_algs, "ES256 EdDSA");
        assert_eq!(s.dpop.max_age, Duration::from_secs(30));
        assert!(s.dpop.require_nonce && s.dpop.forward_proof);
        assert_eq!(s.dpop.replay_cache_entries, 500);
        assert_eq!(s.identity.binding_header, "x-binding");
        assert!(s.identity.strip.iter().any(|h| h == "x-binding"));
        assert!(
            !s.identity.strip.iter().any(|h| h == "dpop"),
            "forward_proof keeps the DPoP header"
        );
        jail.create_file("u.toml", "[dpop]\nmax_ag = \"30s\"\n")?;
        assert!(load(Some(Path::new("u.toml"))).is_err(), "unknown key");
        Ok(())
    });
    // Defaults: on, five algorithms, 60s, no nonce, proof stripped.
    let s = base().validate().unwrap();
    assert!(s.dpop.enabled && !s.dpop.require_nonce && !s.dpop.forward_proof);
    assert_eq!(&*s.dpop.challenge_algs, "ES256 ES384 PS256 RS256 EdDSA");
    assert_eq!(s.identity.binding_header, "x-auth-token-binding");
    assert!(s.identity.strip.iter().any(|h| h == "dpop"));
    assert!(s.identity.strip.iter().any(|h| h == "x-auth-token-binding"));

    let mut c = base();
    c.dpop.algorithms = vec!["none".into(), "HS256".into(), "ES256".into()];
    c.dpop.max_age = Duration::ZERO;
    c.dpop.replay_cache_entries = 0;
    c.identity.binding_header = "bad header".into();
    let text = c.validate().unwrap_err().to_string();
    assert!(text.starts_with("5 invalid settings:\n"), "{text}");
    for part in [
        "`dpop.algorithms`: \"none\" is not an asymmetric JWS algorithm",
        "`dpop.algorithms`: \"HS256\" is not an asymmetric JWS algorithm",
        "`dpop.max_age`: must be between 1s and 1h",
        "`dpop.replay_cache_entries`: must be at least 1",
        "`identity.binding_header`: \"bad header\" is not a valid header name",
    ] {
        assert!(text.contains(part), "{part} missing from {text}");
    }
    let mut c = base();
    c.dpop.algorithms.clear();
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("dpop.algorithms"));
    c.dpop.enabled = false;
    c.validate().unwrap();
}

#[test]
fn ext_authz_keys() {
    let mut c = base();
    assert_eq!(
        c.validate().unwrap().ext_authz.listen,
        None,
        "off by default"
    );
    c.ext_authz.listen = "127.0.0.1:9191".into();
    let s = c.validate().unwrap();
    assert_eq!(s.ext_authz.listen, Some("127.0.0.1:9191".parse().unwrap()));
    assert!(!s.ext_authz.tls);

    // Every bad key of the section at once, each named.
    let mut c = base();
    c.listen = "127.0.0.1:8080".into();
    c.ext_authz.listen = "127.0.0.1:8080".into();
    c.ext_authz.tls = true;
    let text = c.validate().unwrap_err().to_string();
    assert!(text.starts_with("2 invalid settings:\n"), "{text}");
    assert!(
        text.contains("`ext_authz.listen`: must differ from listen"),
        "{text}"
    );
    assert!(
        text.contains("`ext_authz.tls`: uses the [tls] certificate"),
        "{text}"
    );

    let mut c = base();
    c.ext_authz.listen = "127.0.0.1:9090".into();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("must differ from admin.listen"), "{err}");
    c.ext_authz.listen = "localhost:9191".into();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.starts_with("`ext_authz.listen`"), "{err}");
    let mut c = base();
    c.ext_authz.tls = true;
    c.tls.cert_file = "/x".into();
    c.tls.key_file = "/y".into();
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("`ext_authz.tls`: needs ext_authz.listen"),
        "{err}"
    );
}

#[test]
fn ext_authz_unknown_key_is_an_error() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "t.toml",
            "[ext_authz]\nlisten = \"127.0.0.1:9191\"\nlissen = \"x\"\n",
        )?;
        let err = load(Some(Path::new("t.toml"))).unwrap_err().to_string();
        assert!(err.contains("lissen"), "{err}");
        Ok(())
    });
}

#[test]
fn tracing_keys_and_otel_variables() {
    let c = base();
    assert_eq!(c.validate().unwrap().tracing, None, "off by default");

    // Every bad key of the section at once, with the rest of the config's.
    let mut c = base();
    c.listen = "nowhere".into();
    c.tracing.otlp_endpoint = Some("collector:4317".into());
    c.tracing.sample_ratio = Some(2.0);
    let text = c.validate().unwrap_err().to_string();
    assert!(text.starts_with("3 invalid settings:\n"), "{text}");
    assert!(text.contains("`tracing.otlp_endpoint`: "), "{text}");
    assert!(
        text.contains("`tracing.sample_ratio`: 2 is not between 0.0 and 1.0"),
        "{text}"
    );

    // An unknown key is an error, like everywhere else.
    let err = toml::from_str::<RawConfig>("[tracing]\notlp_endpont = \"http://c:4317\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("otlp_endpont"), "{err}");

    // `load` reads the OTEL_* variables; TOKENGATE_TRACING__* wins over them.
    figment::Jail::expect_with(|jail| {
        jail.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-otel:4317");
        jail.set_env("OTEL_SERVICE_NAME", "from-otel");
        jail.set_env("TOKENGATE_TRACING__SERVICE_NAME", "from-tokengate");
        jail.set_env(
            "TOKENGATE_INTROSPECTION__URL",
            "http://as.example/introspect",
        );
        jail.set_env("TOKENGATE_INTROSPECTION__CLIENT_ID", "tg");
        jail.set_env("TOKENGATE_INTROSPECTION__CLIENT_SECRET", "s");
        let tracing = crate::config::load(None)
            .unwrap()
            .validate()
            .unwrap()
            .tracing
            .expect("the OTEL endpoint alone turns tracing on");
        assert_eq!(tracing.endpoint, "http://from-otel:4317");
        assert_eq!(tracing.service_name, "from-tokengate");
        jail.set_env("TOKENGATE_TRACING__OTLP_ENDPOINT", "");
        assert_eq!(
            crate::config::load(None)
                .unwrap()
                .validate()
                .unwrap()
                .tracing,
            None,
            "an empty key turns it off whatever the environment says"
        );
        Ok(())
    });
}
