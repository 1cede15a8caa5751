//! TLS: termination on `listen` (ALPN h2 / http/1.1, X-Forwarded-Proto, reload
//! without dropping connections, bad files stop start-up), and outbound TLS
//! with a private CA (`[upstream_tls] ca_file`) and a client certificate for the
//! AS (mTLS). Every certificate comes from a CA made at test time (rcgen).
#![expect(
    clippy::disallowed_methods,
    reason = "file modification times are real time"
)]

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokengate::clock::Clock;
use tokio::net::TcpListener;

/// Writes a leaf's PEM files into `dir` as `<name>.crt` / `<name>.key`.
fn write_pair(dir: &Path, name: &str, leaf: &Issued) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, &leaf.cert_pem).unwrap();
    std::fs::write(&k, &leaf.key_pem).unwrap();
    (c, k)
}

/// Sets both files' mtime to `t`, so the change is visible whatever the
/// filesystem's timestamp granularity.
fn touch(paths: &[&Path], t: SystemTime) {
    for p in paths {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}

async fn tls_env(ca: &TestCa, dir: &Path) -> Env {
    let leaf = ca.issue(&["localhost", "127.0.0.1"]);
    let (cert, key) = write_pair(dir, "server", &leaf);
    Env::start_with(|raw| {
        raw.tls.cert_file = cert.display().to_string();
        raw.tls.key_file = key.display().to_string();
    })
    .await
}

#[tokio::test]
async fn should_terminate_tls_and_negotiate_h2_by_alpn() {
    let ca = TestCa::new("test CA");
    let dir = temp_dir("tls");
    let env = tls_env(&ca, &dir).await;
    env.allow("tok", 1).await;
    let url = format!("https://127.0.0.1:{}/over/tls", env.gate.addr.port());

    for (offer_h2, version) in [
        (true, http::Version::HTTP_2),
        (false, http::Version::HTTP_11),
    ] {
        let client = https_client(tls_client_config(&[ca.der()]), offer_h2);
        let req = request(Method::GET, &url)
            .header("authorization", "Bearer tok")
            .body(empty())
            .unwrap();
        let r = send(&client, req).await;
        assert_eq!(r.version, version, "ALPN h2 offered: {offer_h2}");
        let echo = r.echo();
        assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
        assert_eq!(echo.header("x-auth-subject"), Some("alice"));
    }

    // A client that does not trust our CA fails the handshake: no response at all.
    let stranger = https_client(tls_client_config(&[TestCa::new("other").der()]), true);
    let req = request(Method::GET, &url).body(empty()).unwrap();
    assert!(stranger.request(req).await.is_err());

    // Plain HTTP on the TLS port gets no HTTP answer.
    let raw = raw_exchange(env.gate.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        !raw.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Connects with TLS and returns the leaf certificate the server presented and
/// an HTTP/1.1 sender on that connection.
async fn tls_connect(
    addr: SocketAddr,
    roots: &[CertificateDer<'static>],
) -> (
    CertificateDer<'static>,
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
) {
    let mut config = tls_client_config(roots);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    (leaf, sender)
}

async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
) -> http::StatusCode {
    let req = Request::builder()
        .uri("/still/open")
        .header("host", "localhost")
        .header("authorization", "Bearer tok")
        .body(Full::new(Bytes::new()))
        .unwrap();
    sender.send_request(req).await.unwrap().status()
}

#[tokio::test]
async fn should_reload_the_certificate_without_dropping_connections() {
    tokengate::install_crypto_provider();
    let ca = TestCa::new("test CA");
    let dir = temp_dir("tls-reload");
    let first = ca.issue(&["localhost"]);
    let (cert, key) = write_pair(&dir, "server", &first);

    let auth = wiremock::MockServer::start().await;
    let upstream = Upstream::start().await;
    let mut raw = base_config(&auth, &upstream.url());
    raw.tls.cert_file = cert.display().to_string();
    raw.tls.key_file = key.display().to_string();
    let settings = raw.validate().unwrap();
    let app = tokengate::App::new(settings.clone());
    let reloader = app.tls_reloader().expect("TLS is configured");
    // The gate runs from the same settings, so it shares the reloader's certificate slot.
    drop(app);
    let gate = Gate::start_settings(settings).await;
    let env_allow = serde_json::json!({
        "active": true, "sub": "alice", "exp": gate.clock.unix_secs() + 3600,
    });
    introspection_of("tok")
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(env_allow))
        .mount(&auth)
        .await;

    let (leaf, mut open_conn) = tls_connect(gate.addr, &[ca.der()]).await;
    assert_eq!(leaf, first.cert_der);
    assert_eq!(get_on(&mut open_conn).await, 200);

    // Nothing changed on disk: the watcher's check does nothing.
    assert!(!reloader.reload_if_changed().unwrap());

    // cert-manager style: new files in place. The watcher's check picks them up.
    let second = ca.issue(&["localhost"]);
    write_pair(&dir, "server", &second);
    touch(&[&cert, &key], SystemTime::now() + Duration::from_secs(5));
    assert!(reloader.reload_if_changed().unwrap());
    let (leaf, _) = tls_connect(gate.addr, &[ca.der()]).await;
    assert_eq!(
        leaf, second.cert_der,
        "new handshakes get the new certificate"
    );
    assert_eq!(
        get_on(&mut open_conn).await,
        200,
        "the connection opened before the reload keeps working"
    );

    // SIGHUP with a broken key: an error, and the current certificate stays.
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    assert!(reloader.reload().is_err());
    let (leaf, _) = tls_connect(gate.addr, &[ca.der()]).await;
    assert_eq!(leaf, second.cert_der);

    // SIGHUP after the fix: the third certificate.
    let third = ca.issue(&["localhost"]);
    write_pair(&dir, "server", &third);
    reloader.reload().unwrap();
    let (leaf, _) = tls_connect(gate.addr, &[ca.der()]).await;
    assert_eq!(leaf, third.cert_der);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn should_refuse_to_start_with_a_bad_certificate_or_key() {
    let ca = TestCa::new("test CA");
    let dir = temp_dir("tls-bad");
    let (cert, key) = write_pair(&dir, "good", &ca.issue(&["localhost"]));
    let (_, other_key) = write_pair(&dir, "other", &ca.issue(&["localhost"]));
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let missing = dir.join("missing.pem");
    let s = |p: &Path| p.display().to_string();

    // (cert_file, key_file, key named in the error, words in the error)
    let cases = [
        (s(&garbage), s(&key), "tls.cert_file", "no certificate"),
        (s(&missing), s(&key), "tls.cert_file", "missing.pem"),
        (s(&cert), s(&garbage), "tls.key_file", "garbage.pem"),
        (s(&cert), s(&other_key), "tls.key_file", "does not match"),
        (s(&cert), String::new(), "tls.key_file", "both"),
    ];
    for (c, k, key_name, words) in cases {
        let mut raw = tokengate::config::RawConfig::default();
        raw.introspection.url = "http://as/i".into();
        raw.introspection.client_id = "c".into();
        raw.introspection.client_secret = tokengate::config::Secret::new("s");
        raw.tls.cert_file = c;
        raw.tls.key_file = k;
        let err = raw.validate().unwrap_err().to_string();
        assert!(
            err.contains(key_name) && err.contains(words),
            "want {key_name} / {words}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------
// Outbound: private CA and client certificates
// ---------------------------------------------------------------------------

/// An https server (TLS 1.2+, ALPN http/1.1) answering every request with
/// `answer`; with `client_ca`, it requires a client certificate from that CA.
async fn https_server(
    leaf: &Issued,
    client_ca: Option<CertificateDer<'static>>,
    answer: &'static str,
) -> SocketAddr {
    https_server_alpn(leaf, client_ca, answer, &[b"http/1.1"]).await
}

/// Like [`https_server`], offering the given ALPN protocols. The answer carries
/// `x-request-version` and ends with a `grpc-status: 0` trailer (HTTP/1.1
/// clients that did not ask for trailers never see it).
async fn https_server_alpn(
    leaf: &Issued,
    client_ca: Option<CertificateDer<'static>>,
    answer: &'static str,
    alpn: &[&[u8]],
) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = builder
        .with_single_cert(vec![leaf.cert_der.clone()], key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let version = format!("{:?}", req.version());
                    let _ = req.into_body().collect().await;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    let frames = futures_util::stream::iter(vec![
                        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(
                            answer.as_bytes(),
                        ))),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ]);
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .header("x-request-version", version)
                            .body(http_body_util::StreamBody::new(frames))
                            .unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn should_trust_a_private_ca_for_an_https_upstream_only_with_ca_file() {
    let ca = TestCa::new("private CA");
    let dir = temp_dir("ca-file");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    // SNI and verification use the URL's host name.
    let up = https_server(
        &ca.issue(&["localhost"]),
        None,
        r#"{"from":"https upstream"}"#,
    )
    .await;
    let url = format!("https://localhost:{}", up.port());

    let trusting = Env::start_with(|raw| {
        raw.upstream = url.clone();
        raw.upstream_tls.ca_file = ca_file.display().to_string();
    })
    .await;
    trusting.allow("tok", 1).await;
    let r = trusting.get("/x", "tok").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["from"], "https upstream");

    let default_roots = Env::start_with(|raw| raw.upstream = url.clone()).await;
    default_roots.allow("tok", 1).await;
    let r = default_roots.get("/x", "tok").await;
    assert_rejection(&r, 502, "bad_gateway");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn should_present_a_client_certificate_to_an_mtls_as() {
    let ca = TestCa::new("AS CA");
    let dir = temp_dir("mtls");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (client_cert, client_key) = write_pair(&dir, "client", &ca.issue(&["tokengate"]));
    let as_addr = https_server(
        &ca.issue(&["localhost"]),
        Some(ca.der()),
        r#"{"active":true,"sub":"mtls-alice","scope":"read"}"#,
    )
    .await;
    let as_url = format!("https://localhost:{}/introspect", as_addr.port());

    let with_cert = Env::start_with(|raw| {
        raw.introspection.url = as_url.clone();
        raw.upstream_tls.ca_file = ca_file.display().to_string();
        raw.introspection.client_cert_file = client_cert.display().to_string();
        raw.introspection.client_key_file = client_key.display().to_string();
    })
    .await;
    let r = with_cert.get("/x", "tok").await;
    assert_eq!(r.echo().header("x-auth-subject"), Some("mtls-alice"));

    // Without the client certificate the AS refuses the handshake: 503, never 401.
    let without = Env::start_with(|raw| {
        raw.introspection.url = as_url.clone();
        raw.upstream_tls.ca_file = ca_file.display().to_string();
    })
    .await;
    let r = without.get("/x", "tok").await;
    assert_rejection(&r, 503, "temporarily_unavailable");
    assert_eq!(without.upstream.hits(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn should_name_the_key_of_a_bad_ca_or_client_certificate() {
    let dir = temp_dir("tls-client-bad");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "nothing here").unwrap();
    let g = garbage.display().to_string();
    let base = || {
        let mut raw = tokengate::config::RawConfig::default();
        raw.introspection.url = "http://as/i".into();
        raw.introspection.client_id = "c".into();
        raw.introspection.client_secret = tokengate::config::Secret::new("s");
        raw
    };
    let mut raw = base();
    raw.upstream_tls.ca_file = g.clone();
    assert!(raw
        .validate()
        .unwrap_err()
        .to_string()
        .contains("upstream_tls.ca_file"));
    let mut raw = base();
    raw.introspection.client_cert_file = g.clone();
    let err = raw.validate().unwrap_err().to_string();
    assert!(err.contains("introspection.client_key_file"), "{err}");
    let mut raw = base();
    raw.introspection.client_cert_file = g.clone();
    raw.introspection.client_key_file = g;
    let err = raw.validate().unwrap_err().to_string();
    assert!(err.contains("introspection.client_cert_file"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn should_carry_grpc_over_tls_on_both_sides_with_h2_by_alpn() {
    let ca = TestCa::new("test CA");
    let dir = temp_dir("h2-tls");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let up = https_server_alpn(&ca.issue(&["localhost"]), None, "msg", &[b"h2"]).await;
    let leaf = ca.issue(&["localhost", "127.0.0.1"]);
    let (cert, key) = write_pair(&dir, "server", &leaf);
    let env = Env::start_with(|raw| {
        raw.upstream = format!("https://localhost:{}", up.port());
        raw.upstream_http2 = true;
        raw.upstream_tls.ca_file = ca_file.display().to_string();
        raw.tls.cert_file = cert.display().to_string();
        raw.tls.key_file = key.display().to_string();
    })
    .await;
    env.allow("tok", 1).await;

    let client = https_client(tls_client_config(&[ca.der()]), true);
    let req = request(
        Method::POST,
        &format!("https://127.0.0.1:{}/svc.Echo/Unary", env.gate.addr.port()),
    )
    .header("authorization", "Bearer tok")
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(full(grpc_frame(b"ping")))
    .unwrap();
    let r = send_keep_trailers(&client, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2, "client side: h2 by ALPN");
    assert_eq!(
        r.headers["x-request-version"], "HTTP/2.0",
        "upstream side: h2 by ALPN"
    );
    assert_eq!(r.body, "msg");
    assert_eq!(r.trailers.expect("trailers")["grpc-status"], "0");
    let _ = std::fs::remove_dir_all(dir);
}
