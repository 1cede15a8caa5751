//! The configuration's unit tests: loading, every validation rule, redaction.

use super::error::*;
use super::raw::*;
use super::validate::*;
use super::*;
use crate::secret::Secret;
use figment::Jail;
use std::path::Path;
use std::time::Duration;

// The sections of sender binding, JWT and ext_authz.
mod sections;

fn minimal_env(jail: &mut Jail) {
    jail.set_env("TOKENGATE_INTROSPECTION__URL", "http://as.test/introspect");
    jail.set_env("TOKENGATE_INTROSPECTION__CLIENT_ID", "tokengate");
    jail.set_env("TOKENGATE_INTROSPECTION__CLIENT_SECRET", "000123");
}

#[test]
fn env_overrides_defaults_and_numeric_secret_stays_a_string() {
    Jail::expect_with(|jail| {
        minimal_env(jail);
        jail.set_env("TOKENGATE_CONFIG", "ignored-here.toml");
        // Kubernetes service links for a Service named "tokengate".
        jail.set_env("TOKENGATE_PORT", "tcp://10.0.0.1:8080");
        jail.set_env("TOKENGATE_PORT_8080_TCP_ADDR", "10.0.0.1");
        jail.set_env("TOKENGATE_SERVICE_HOST", "10.0.0.1");
        let raw = load(None).map_err(|e| e.to_string())?;
        assert_eq!(raw.introspection.client_secret.expose(), "000123");
        let s = raw.validate().map_err(|e| e.to_string())?;
        assert_eq!(s.cache.max_ttl, Duration::from_secs(300));
        assert!(
            !format!("{s:?}").contains("000123"),
            "secret leaked in Debug"
        );
        assert!(
            !format!("{raw:?}").contains("000123"),
            "secret leaked in Debug"
        );
        assert!(
            !raw.to_redacted_toml().contains("000123"),
            "secret leaked in --check-config"
        );
        Ok(())
    });
}

#[test]
fn file_then_env_precedence_and_durations() {
    Jail::expect_with(|jail| {
        minimal_env(jail);
        jail.create_file(
            "t.toml",
            r#"
            listen = "127.0.0.1:9999"
            [cache]
            max_ttl = "90s"
            negative_ttl = "250ms"
            "#,
        )?;
        jail.set_env("TOKENGATE_CACHE__MAX_TTL", "2m");
        let raw = load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(raw.listen, "127.0.0.1:9999");
        assert_eq!(
            raw.cache.max_ttl,
            Duration::from_secs(120),
            "env wins over file"
        );
        assert_eq!(raw.cache.negative_ttl, Duration::from_millis(250));
        Ok(())
    });
}

#[test]
fn errors_name_the_key_and_the_source() {
    Jail::expect_with(|jail| {
        minimal_env(jail);
        jail.create_file("t.toml", "[cache]\nmax_tll = \"5m\"\n")?;
        let err = load(Some(Path::new("t.toml"))).unwrap_err().to_string();
        assert!(err.contains("max_tll") && err.contains("t.toml"), "{err}");

        let err = load(Some(Path::new("nope.toml"))).unwrap_err().to_string();
        assert!(
            err.contains("nope.toml") && err.contains("does not exist"),
            "{err}"
        );

        jail.set_env("TOKENGATE_CACHE__MAX_TTL", "soon");
        let err = load(None).unwrap_err().to_string();
        assert!(
            err.contains("`cache.max_ttl`") && err.contains("TOKENGATE_CACHE__MAX_TTL"),
            "{err}"
        );
        Ok(())
    });
}

fn base() -> RawConfig {
    let mut c = RawConfig::default();
    c.introspection.url = "http://as.test/introspect".into();
    c.introspection.client_id = "tokengate".into();
    c.introspection.client_secret = Secret::new("s");
    c
}

#[test]
fn validation_failures() {
    type Mutation = Box<dyn Fn(&mut RawConfig)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "introspection.url",
            Box::new(|c| c.introspection.url.clear()),
        ),
        (
            "introspection.url",
            Box::new(|c| c.introspection.url = "ftp://as/x".into()),
        ),
        (
            "introspection.client_id",
            Box::new(|c| c.introspection.client_id.clear()),
        ),
        (
            "introspection.client_secret",
            Box::new(|c| c.introspection.client_secret = Secret::default()),
        ),
        (
            "introspection.client_secret_file",
            Box::new(|c| c.introspection.client_secret_file = "/x".into()),
        ),
        ("upstream", Box::new(|c| c.upstream = "ftp://x".into())),
        (
            "upstream",
            Box::new(|c| c.upstream = "127.0.0.1:3000".into()),
        ),
        ("listen", Box::new(|c| c.listen = "nowhere".into())),
        (
            "upstream",
            Box::new(|c| c.upstream = "unix:relative.sock".into()),
        ),
        (
            "forward_auth.path_prefix",
            Box::new(|c| c.forward_auth.path_prefix = "ext_authz".into()),
        ),
        (
            "forward_auth.path_prefix",
            Box::new(|c| {
                c.forward_auth.convention = ConventionSetting::Traefik;
                c.forward_auth.path_prefix = "/ext_authz".into();
            }),
        ),
        (
            "tls.key_file",
            Box::new(|c| c.tls.cert_file = "/etc/tls.crt".into()),
        ),
        (
            "upstream_tls.ca_file",
            Box::new(|c| c.upstream_tls.ca_file = "/nonexistent/ca.pem".into()),
        ),
        (
            "identity.scope_header",
            Box::new(|c| c.identity.scope_header = "bad header".into()),
        ),
        ("cache.max_entries", Box::new(|c| c.cache.max_entries = 0)),
        ("admin.listen", Box::new(|c| c.admin.listen = "9090".into())),
        (
            "admin.listen",
            Box::new(|c| {
                c.listen = "127.0.0.1:8080".into();
                c.admin.listen = "127.0.0.1:8080".into();
            }),
        ),
        (
            "admin.purge_secret_file",
            Box::new(|c| c.admin.listen = "0.0.0.0:9090".into()),
        ),
        (
            "admin.purge_secret_file",
            Box::new(|c| c.admin.purge_secret_file = "/nonexistent/secret".into()),
        ),
        (
            "limits.max_header_bytes",
            Box::new(|c| c.limits.max_header_bytes = 4096),
        ),
        (
            "limits.idle_timeout",
            Box::new(|c| c.limits.idle_timeout = Duration::ZERO),
        ),
        (
            "limits.tunnel_idle_timeout",
            Box::new(|c| c.limits.tunnel_idle_timeout = Duration::ZERO),
        ),
        (
            "upgrade_protocols",
            Box::new(|c| c.upgrade_protocols = vec!["websocket".into(), "h2c".into()]),
        ),
        (
            "upgrade_protocols",
            Box::new(|c| c.upgrade_protocols = vec!["web socket".into()]),
        ),
        (
            "resilience.breaker_open_for",
            Box::new(|c| c.resilience.breaker_open_for = Duration::ZERO),
        ),
        (
            "discovery.issuer",
            Box::new(|c| c.discovery.issuer = "https://as.example".into()),
        ),
        (
            "routes.host",
            Box::new(|c| {
                c.routes = vec![RawRoute {
                    host: "api.example.com:8080".into(),
                    ..RawRoute::public("/")
                }]
            }),
        ),
        (
            "routes.host",
            Box::new(|c| {
                c.routes = vec![RawRoute {
                    host: "bücher.example".into(),
                    ..RawRoute::public("/")
                }]
            }),
        ),
        (
            "routes.host",
            Box::new(|c| {
                c.routes = vec![RawRoute {
                    host: "api..example.com".into(),
                    ..RawRoute::public("/")
                }]
            }),
        ),
    ];
    for (key, mutate) in cases {
        let mut c = base();
        mutate(&mut c);
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains(key),
            "expected an error naming {key}, got {err}"
        );
    }
}

/// A route's host is spelt as requests are compared (issue 12 item 7):
/// lower case, without the trailing dot of a fully qualified name.
#[test]
fn route_host_is_normalised_like_a_request_host() {
    let mut c = base();
    c.routes = vec![RawRoute {
        host: "Admin.Example.COM.".into(),
        ..RawRoute::public("/")
    }];
    let s = c.validate().unwrap();
    assert_eq!(
        s.routes.routes[0].host.as_deref(),
        Some("admin.example.com")
    );
}

#[test]
fn resilience_and_limit_keys_defaults_and_zero_means_off() {
    Jail::expect_with(|jail| {
        minimal_env(jail);
        let s = load(None)
            .and_then(|r| r.validate())
            .map_err(|e| e.to_string())?;
        assert_eq!(s.stale_if_error, Duration::from_secs(30));
        assert_eq!(s.breaker_failures, 5);
        assert_eq!(s.breaker_open_for, Duration::from_secs(10));
        assert_eq!(s.limits.max_header_bytes, 65536);
        assert_eq!(s.limits.max_connections, Some(10_000));
        assert_eq!(s.limits.max_body_bytes, None);
        assert_eq!(s.limits.idle_timeout, Duration::from_secs(75));
        assert_eq!(s.limits.tunnel_idle_timeout, Duration::from_secs(3600));
        assert_eq!(
            s.upgrade_protocols,
            crate::upstream::upgrade::UpgradeProtocols::default()
        );

        jail.set_env("TOKENGATE_RESILIENCE__STALE_IF_ERROR", "0s");
        jail.set_env("TOKENGATE_RESILIENCE__BREAKER_FAILURES", "0");
        jail.set_env("TOKENGATE_LIMITS__MAX_CONNECTIONS", "0");
        jail.set_env("TOKENGATE_LIMITS__MAX_BODY_BYTES", "1048576");
        jail.set_env("TOKENGATE_LIMITS__IDLE_TIMEOUT", "5s");
        jail.set_env("TOKENGATE_LIMITS__TUNNEL_IDLE_TIMEOUT", "10m");
        jail.set_env(
            "TOKENGATE_UPGRADE_PROTOCOLS",
            "[\"WebSocket\", \"example/1\"]",
        );
        let s = load(None)
            .and_then(|r| r.validate())
            .map_err(|e| e.to_string())?;
        assert_eq!(s.stale_if_error, Duration::ZERO);
        assert_eq!(s.breaker_failures, 0);
        assert_eq!(s.limits.max_connections, None);
        assert_eq!(s.limits.max_body_bytes, Some(1_048_576));
        assert_eq!(s.limits.idle_timeout, Duration::from_secs(5));
        assert_eq!(s.limits.tunnel_idle_timeout, Duration::from_secs(600));
        assert!(s.upgrade_protocols.allows(b"websocket"));
        assert!(s.upgrade_protocols.allows(b"Example/1"));
        assert!(!s.upgrade_protocols.allows(b"example/2"));
        Ok(())
    });
}

#[test]
fn shared_cache_keys_validate_and_the_url_password_never_prints() {
    Jail::expect_with(|jail| {
        minimal_env(jail);
        jail.create_file("short", "tooshort\n")?;
        jail.create_file("key", "4e9b1f07c3a85d26e0f7b4a19c3d82e5\n")?;
        jail.create_file(
            "t.toml",
            "[cache.shared]\nurl = \"rediss://tg:pw-123@redis.example:6380/2\"\nkey_secret_file = \"key\"\ntimeout = \"150ms\"\n",
        )?;
        let raw = load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
        let s = raw.validate().map_err(|e| e.to_string())?;
        let shared = s.shared_cache.as_ref().expect("on");
        assert_eq!(shared.timeout, Duration::from_millis(150));
        assert!(shared.single_flight);
        for shown in [format!("{raw:?}"), format!("{s:?}"), raw.to_redacted_toml()] {
            assert!(!shown.contains("pw-123"), "password leaked: {shown}");
            assert!(!shown.contains("4e9b1f07c3a85d26"), "key leaked");
        }
        assert!(raw.to_redacted_toml().contains("redis.example:6380"));
        assert!(shared.ca_roots.is_empty(), "no upstream_tls.ca_file");

        // rediss:// gets [upstream_tls] ca_file; Debug shows a count, not the DER.
        let ca = rcgen::CertificateParams::new(vec!["redis.example".to_owned()])
            .and_then(|p| p.self_signed(&rcgen::KeyPair::generate()?))
            .map_err(|e| e.to_string())?;
        jail.create_file("ca.pem", &ca.pem())?;
        jail.set_env("TOKENGATE_UPSTREAM_TLS__CA_FILE", "ca.pem");
        let raw = load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
        let s = raw.validate().map_err(|e| e.to_string())?;
        let shared = s.shared_cache.as_ref().expect("on");
        assert_eq!(shared.ca_roots.len(), 1);
        assert_eq!(shared.ca_roots[0].as_ref(), ca.der().as_ref());
        let shown = format!("{shared:?}");
        assert!(
            shown.contains("ca_roots: 1") && !shown.contains("pw-123"),
            "{shown}"
        );
        jail.set_env("TOKENGATE_UPSTREAM_TLS__CA_FILE", "");

        jail.create_file("typo.toml", "[cache.shared]\nurll = \"redis://r\"\n")?;
        let err = load(Some(Path::new("typo.toml"))).unwrap_err().to_string();
        assert!(err.contains("urll"), "{err}");

        let cases: [(&str, &str, &str); 4] = [
            ("http://redis:6379", "key", "cache.shared.url"),
            ("redis://redis:6379", "", "cache.shared.key_secret_file"),
            (
                "redis://redis:6379",
                "short",
                "cache.shared.key_secret_file",
            ),
            (
                "redis://redis:6379",
                "missing",
                "cache.shared.key_secret_file",
            ),
        ];
        for (url, file, key) in cases {
            let mut c = base();
            c.cache.shared.url = RedisUrl(url.into());
            c.cache.shared.key_secret_file = file.into();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{url} {file}: {err}");
        }
        assert!(
            base().validate().unwrap().shared_cache.is_none(),
            "off by default"
        );
        Ok(())
    });
}

/// The placeholder HMAC key that deploy/kubernetes/fleet.yaml shipped was
/// accepted (it is 42 bytes long); it and every other weak key is now
/// refused with a message that names the key and says what to do, and
/// never shows the key itself.
#[test]
fn weak_shared_cache_keys_are_refused() {
    let refused = [
        "replace-me-with-openssl-rand-hex-32-output", // fleet.yaml, before
        "REPLACE_ME_REPLACE_ME",
        "change-me-change-me-change-me",
        "my-fleet-secret-2026-v1",
        "example-key-0123456789",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "0000000000000000",
        "1111222233334444",
        "abababababababababab",
        "k3Y9q!Zpk3Y9q!Zp",
        "abcdefghijklmnopqrstuvwxyz",
        "0123456789012345678901234567890123456789",
        "ZYXWVUTSRQPONMLKJIHGFEDCBA",
    ];
    for key in refused {
        assert!(weak_key(key).is_some(), "{key:?} accepted");
    }
    let accepted = [
        // `openssl rand -hex 32`, `openssl rand -base64 32`, and a 16-byte
        // hex key that happens to miss several digits.
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "q3Jd0b5Xh2v8mZ6pW1cN4tKsR9yLfAe7Gu+oHi/TlE0=",
        "deadbeefc0ffee1234567890abcdef0f",
    ];
    for key in accepted {
        assert_eq!(weak_key(key), None, "{key:?} refused");
    }

    Jail::expect_with(|jail| {
        let key = "replace-me-with-openssl-rand-hex-32-output";
        jail.create_file("fleet-key", &format!("{key}\n"))?;
        let mut c = base();
        c.cache.shared.url = RedisUrl("redis://redis:6379/0".into());
        c.cache.shared.key_secret_file = jail.directory().join("fleet-key").display().to_string();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("cache.shared.key_secret_file")
                && err.contains("placeholder")
                && err.contains("openssl rand -hex 32"),
            "{err}"
        );
        assert!(!err.contains(key), "the key is in the message: {err}");
        // A generated key passes.
        jail.create_file("fleet-key", &format!("{}\n", accepted[0]))?;
        assert!(c
            .validate()
            .map_err(|e| e.to_string())?
            .shared_cache
            .is_some());
        Ok(())
    });
}

#[test]
fn secret_file_is_read_and_trimmed() {
    Jail::expect_with(|jail| {
        jail.create_file("secret", "s3cr3t\n")?;
        let mut c = base();
        c.introspection.client_secret = Secret::default();
        c.introspection.client_secret_file = jail.directory().join("secret").display().to_string();
        let s = c.validate().map_err(|e| e.to_string())?;
        assert_eq!(s.introspection.client_secret.expose(), "s3cr3t");
        Ok(())
    });
}

#[test]
fn admin_defaults_loopback_and_secret() {
    let s = base().validate().unwrap();
    assert_eq!(s.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
    assert!(s.admin.purge_secret.is_none());
    let mut c = base();
    c.admin.listen = String::new();
    assert!(c.validate().unwrap().admin.listen.is_none(), "empty: off");
    Jail::expect_with(|jail| {
        jail.create_file("purge", "p-secret\n")?;
        let mut c = base();
        c.admin.listen = "0.0.0.0:9090".into();
        c.admin.purge_secret_file = jail.directory().join("purge").display().to_string();
        let s = c.validate().map_err(|e| e.to_string())?;
        let secret = s.admin.purge_secret.as_ref().map(Secret::expose);
        assert_eq!(secret, Some("p-secret"));
        assert!(!format!("{s:?}").contains("p-secret"), "secret in Debug");
        Ok(())
    });
}

#[test]
fn upstream_base_path_and_identity_strip_list() {
    let mut c = base();
    c.upstream = "https://api.internal:8443/v1/".into();
    let s = c.validate().unwrap();
    assert_eq!(s.upstream.base_path, "/v1");
    assert_eq!(s.upstream.authority.as_str(), "api.internal:8443");
    assert!(s.identity.strip.iter().any(|h| h == "x-auth-subject"));
    assert!(s.identity.strip.iter().any(|h| h == "x-remote-user"));
}

/// The README's sample: `client_secret_file` in the file, the secret in
/// `TOKENGATE_INTROSPECTION__CLIENT_SECRET`. The env var wins (used to fail
/// with "set either ... not both"); the choice is reported.
#[test]
fn an_env_secret_replaces_the_files_secret_file() {
    Jail::expect_with(|jail| {
        minimal_env(jail);
        jail.create_file(
            "t.toml",
            "[introspection]\nclient_secret_file = \"/run/secrets/tokengate\"\n",
        )?;
        let raw = load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(raw.introspection.client_secret.expose(), "000123");
        assert!(raw.introspection.client_secret_file.is_empty());
        let s = raw.validate().map_err(|e| e.to_string())?;
        assert_eq!(s.introspection.client_secret.expose(), "000123");
        assert_eq!(raw.notices.len(), 1, "{:?}", raw.notices);
        assert!(
            raw.notices[0].contains("TOKENGATE_INTROSPECTION__CLIENT_SECRET")
                && raw.notices[0].contains("client_secret_file")
                && !raw.notices[0].contains("000123"),
            "{:?}",
            raw.notices
        );
        Ok(())
    });
}

/// The other way round: a secret file named in the environment replaces a
/// `client_secret` written in the file.
#[test]
fn an_env_secret_file_replaces_the_files_secret() {
    Jail::expect_with(|jail| {
        jail.set_env("TOKENGATE_INTROSPECTION__URL", "http://as.test/introspect");
        jail.set_env("TOKENGATE_INTROSPECTION__CLIENT_ID", "tokengate");
        jail.create_file("secret", "from-file\n")?;
        let secret = jail.directory().join("secret");
        jail.set_env(
            "TOKENGATE_INTROSPECTION__CLIENT_SECRET_FILE",
            secret.display(),
        );
        jail.create_file("t.toml", "[introspection]\nclient_secret = \"baked\"\n")?;
        let raw = load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
        let s = raw.validate().map_err(|e| e.to_string())?;
        assert_eq!(s.introspection.client_secret.expose(), "from-file");
        assert_eq!(raw.notices.len(), 1, "{:?}", raw.notices);
        Ok(())
    });
}

/// Both forms from one source is still ambiguous: refused, and the
/// message says what the environment can do instead.
#[test]
fn both_secret_forms_in_one_source_are_refused() {
    Jail::expect_with(|jail| {
        minimal_env(jail);
        jail.set_env("TOKENGATE_INTROSPECTION__CLIENT_SECRET_FILE", "/x");
        let err = load(None)
            .map_err(|e| e.to_string())?
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not both"), "{err}");
        jail.clear_env();
        jail.set_env("TOKENGATE_INTROSPECTION__URL", "http://as.test/introspect");
        jail.set_env("TOKENGATE_INTROSPECTION__CLIENT_ID", "tokengate");
        jail.create_file(
            "t.toml",
            "[introspection]\nclient_secret = \"a\"\nclient_secret_file = \"/x\"\n",
        )?;
        let raw = load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
        let err = raw.validate().unwrap_err().to_string();
        assert!(
            err.contains("not both") && err.contains("TOKENGATE_INTROSPECTION__CLIENT_SECRET"),
            "{err}"
        );
        assert!(raw.notices.is_empty());
        Ok(())
    });
}

#[test]
fn an_unknown_key_reads_cleanly_and_suggests_the_near_one() {
    Jail::expect_with(|jail| {
        minimal_env(jail);
        jail.create_file("t.toml", "[introspection]\nclientid = \"x\"\n")?;
        let err = load(Some(Path::new("t.toml"))).unwrap_err().to_string();
        assert!(
            err.contains("`introspection.clientid` from file")
                && err.contains("unknown key `clientid`; did you mean `client_id`?"),
            "{err}"
        );
        assert!(err.contains("known keys here: `url`, `client_id`"), "{err}");
        assert!(!err.contains("``") && !err.contains("`one of"), "{err}");
        // Nothing near: no guess.
        jail.create_file("t.toml", "[cache]\nbanana = 1\n")?;
        let err = load(Some(Path::new("t.toml"))).unwrap_err().to_string();
        assert!(
            err.contains("unknown key `banana`") && !err.contains("did you mean"),
            "{err}"
        );
        // In the environment too (top level).
        jail.set_env("TOKENGATE_LISTNE", "127.0.0.1:1");
        let err = load(None).unwrap_err().to_string();
        assert!(err.contains("did you mean `listen`?"), "{err}");
        Ok(())
    });
}

#[test]
fn edit_distance_and_suggestions() {
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(
        closest("clientid", &["url", "client_id"]),
        Some("client_id")
    );
    assert_eq!(
        closest("MAX_TLL", &["max_ttl", "max_entries"]),
        Some("max_ttl")
    );
    assert_eq!(closest("zzz", &["url", "client_id"]), None);
}

#[test]
fn a_number_where_a_duration_goes_says_durations_are_strings() {
    Jail::expect_with(|jail| {
        minimal_env(jail);
        jail.create_file("t.toml", "[cache]\nmax_ttl = 300\n")?;
        let err = load(Some(Path::new("t.toml"))).unwrap_err().to_string();
        assert!(
            err.contains("`cache.max_ttl`") && err.contains("\"300s\""),
            "{err}"
        );
        jail.create_file("t.toml", "[cache]\nmax_ttl = 1.5\n")?;
        let err = load(Some(Path::new("t.toml"))).unwrap_err().to_string();
        assert!(err.contains("\"1.5s\""), "{err}");
        jail.create_file("t.toml", "")?;
        jail.set_env("TOKENGATE_CACHE__MAX_TTL", "300");
        let err = load(Some(Path::new("t.toml"))).unwrap_err().to_string();
        assert!(
            err.contains("TOKENGATE_CACHE__MAX_TTL") && err.contains("\"300s\""),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn a_host_name_listen_address_says_how_to_write_it() {
    let mut c = base();
    c.listen = "localhost:8080".into();
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.starts_with("`listen`")
            && err.contains("not a host name")
            && err.contains("\"127.0.0.1:8080\"")
            && err.contains("\"0.0.0.0:8080\""),
        "{err}"
    );
    let mut c = base();
    c.admin.listen = "localhost:9090".into();
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.starts_with("`admin.listen`") && err.contains("\"127.0.0.1:9090\""),
        "{err}"
    );
    let mut c = base();
    c.listen = " [::1]:8080 ".into();
    assert_eq!(c.validate().unwrap().listen, "[::1]:8080".parse().unwrap());
}

#[test]
fn probe_mode_parses_and_defaults_to_require() {
    Jail::expect_with(|jail| {
        minimal_env(jail);
        let raw = load(None).map_err(|e| e.to_string())?;
        assert_eq!(raw.introspection.probe, ProbeMode::Require);
        jail.set_env("TOKENGATE_INTROSPECTION__PROBE", "warn");
        let s = load(None)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())?;
        assert_eq!(s.introspection.probe, ProbeMode::Warn);
        jail.set_env("TOKENGATE_INTROSPECTION__PROBE", "sometimes");
        let err = load(None).unwrap_err().to_string();
        assert!(
            err.contains("`introspection.probe`") && err.contains("require"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn validate_reports_every_invalid_key_at_once() {
    let mut c = base();
    c.limits.idle_timeout = Duration::ZERO;
    c.identity.scope_header = "not a header".into();
    c.token_sources.cookie = "bad cookie".into();
    let err = c.validate().unwrap_err();
    assert!(
        matches!(&err, ConfigError::Several(all) if all.len() == 3),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.starts_with("3 invalid settings:\n"), "{text}");
    for key in [
        "`limits.idle_timeout`: must be greater than 0",
        "`identity.scope_header`: \"not a header\" is not a valid header name",
        "`token_sources.cookie`: \"bad cookie\" is not a valid cookie name",
    ] {
        assert!(text.contains(key), "{key} missing from {text}");
    }
    assert_eq!(text.lines().count(), 4, "{text}");
}

#[test]
fn one_invalid_key_is_reported_as_itself() {
    let mut c = base();
    c.limits.idle_timeout = Duration::ZERO;
    let err = c.validate().unwrap_err();
    assert!(
        matches!(
            &err,
            ConfigError::Invalid {
                key: "limits.idle_timeout",
                ..
            }
        ),
        "{err:?}"
    );
}

/// Inside one section too: each bad key of each route, every bad CIDR, and
/// both halves of the admin and TLS settings, in one report.
#[test]
fn validate_reports_every_invalid_key_inside_a_section() {
    let mut c = base();
    let mut bad = RawRoute::public("no-slash");
    bad.methods = vec!["G ET".into()];
    bad.host = "api.example.com:8443".into();
    let mut also_bad = RawRoute::public("/ok");
    also_bad.methods = vec!["P(ST".into()];
    c.routes = vec![bad, also_bad];
    c.forwarding.trusted_proxies = vec!["10.0.0.0/8".into(), "nope".into(), "also-nope".into()];
    c.admin.listen = c.listen.clone();
    c.admin.purge_secret_file = "/nonexistent/purge".into();
    c.tls.cert_file = "/nonexistent/cert.pem".into();
    c.introspection.client_key_file = "/nonexistent/key.pem".into();
    let err = c.validate().unwrap_err();
    let text = err.to_string();
    for needle in [
        "`routes.path_prefix`: routes[0]: \"no-slash\"",
        "`routes.methods`: routes[0]: \"G ET\"",
        "`routes.host`: routes[0]: \"api.example.com:8443\"",
        "`routes.methods`: routes[1]: \"P(ST\"",
        "`forwarding.trusted_proxies`: \"nope\"",
        "`forwarding.trusted_proxies`: \"also-nope\"",
        "`admin.listen`: must differ from listen",
        "`admin.purge_secret_file`",
        "`tls.key_file`: set both",
        "`introspection.client_cert_file`: set both",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    assert!(text.starts_with("10 invalid settings:\n"), "{text}");
}
