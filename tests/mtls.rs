//! Certificate-bound access tokens (RFC 8705 §3), end to end over real
//! sockets: tokengate terminating TLS and asking for client certificates
//! (`[tls] client_ca_file`, `client_auth`), the certificate from a trusted
//! proxy's header (`[mtls]`: nginx's URL-encoded PEM, Envoy's XFCC), proxy and
//! forward-auth mode, a real oidc-provider issuing bound tokens, and a real
//! nginx terminating TLS in front of tokengate (deploy/nginx/mtls.conf).

mod common;

use base64::Engine as _;
use common::*;
use http::Method;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use tokengate::config::{ClientAuth, ConventionSetting, Mode, RawConfig};

/// An active answer for a token bound to `der` (none: an unbound token).
fn answer(env: &Env, bound_to: Option<&CertificateDer<'_>>) -> serde_json::Value {
    let mut a = json!({
        "active": true, "sub": "alice", "client_id": "app", "scope": "read",
        "exp": env.now() + 3600, "token_type": "Bearer",
    });
    if let Some(der) = bound_to {
        a["cnf"] = json!({ "x5t#S256": x5t_s256(der) });
    }
    a
}

/// A server certificate and a client CA file, written to `dir`.
struct Pki {
    ca: TestCa,
    dir: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Self {
        Self {
            ca: TestCa::new("mtls test CA"),
            dir: temp_dir(tag),
        }
    }

    /// `[tls]` with the CA as `client_ca_file` and `client_auth = mode`.
    fn terminate_tls(&self, raw: &mut RawConfig, mode: ClientAuth) {
        let server = self.ca.issue(&["localhost", "127.0.0.1"]);
        let write = |name: &str, text: &str| {
            let p = self.dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        raw.tls.cert_file = write("server.crt", &server.cert_pem);
        raw.tls.key_file = write("server.key", &server.key_pem);
        raw.tls.client_ca_file = write("clients.pem", &self.ca.pem());
        raw.tls.client_auth = mode;
    }

    /// An https client trusting our CA, presenting `cert` if given.
    fn client(&self, cert: Option<&Issued>, h2: bool) -> TestHttpsClient {
        https_client(client_config(&[self.ca.der()], cert), h2)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type TestHttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    ClientBody,
>;

fn client_config(roots: &[CertificateDer<'static>], cert: Option<&Issued>) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store);
    match cert {
        None => b.with_no_client_auth(),
        Some(c) => {
            use rustls::pki_types::pem::PemObject;
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
            b.with_client_auth_cert(vec![c.cert_der.clone()], key)
                .unwrap()
        }
    }
}

fn https_url(env: &Env, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", env.gate.addr.port())
}

/// GET `url` with `Bearer token` and any extra headers, over `client`.
async fn get_via<C>(
    client: &hyper_util::client::legacy::Client<C, ClientBody>,
    url: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Resp
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let mut b = request(Method::GET, url).header("authorization", format!("Bearer {token}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(client, b.body(empty()).unwrap()).await
}

/// A 401 invalid_token whose challenge says `why`; the upstream saw nothing.
fn assert_binding_refused(r: &Resp, why: &str) {
    assert_rejection(r, 401, "invalid_token");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains("error=\"invalid_token\"") && challenge.contains(why),
        "challenge {challenge:?} should say {why:?}"
    );
    assert!(r.json()["error_description"]
        .as_str()
        .is_some_and(|d| d.contains(why)));
}

const MISSING: &str = "the request presented none";
const MISMATCH: &str = "bound to another client certificate";

#[tokio::test]
async fn should_refuse_a_handshake_without_a_certificate_when_required() {
    let pki = Pki::new("mtls-required");
    let env = Env::start_with(|raw| pki.terminate_tls(raw, ClientAuth::Required)).await;
    let alice = pki.ca.issue(&["alice"]);
    env.answer("bound", answer(&env, Some(&alice.cert_der)), 1)
        .await;
    let url = https_url(&env, "/orders");

    // h2 and HTTP/1.1: every request on the connection carries its certificate.
    for (h2, version) in [
        (true, http::Version::HTTP_2),
        (false, http::Version::HTTP_11),
    ] {
        let client = pki.client(Some(&alice), h2);
        // A client's own copy of the binding header is replaced, never passed on.
        let r = get_via(&client, &url, "bound", &[("x-auth-token-binding", "none")]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.version, version);
        let echo = r.echo();
        assert_eq!(echo.header_all("x-auth-token-binding"), vec!["mtls"]);
        assert_eq!(echo.header("x-auth-subject"), Some("alice"));
    }

    // No certificate, or one from another CA: the handshake fails, no HTTP at all.
    let stranger = TestCa::new("another CA").issue(&["mallory"]);
    for client in [pki.client(None, true), pki.client(Some(&stranger), false)] {
        let req = request(Method::GET, &url)
            .header("authorization", "Bearer bound")
            .body(empty())
            .unwrap();
        assert!(client.request(req).await.is_err());
    }
    assert_eq!(env.upstream.hits(), 2);
}

#[tokio::test]
async fn should_let_anonymous_clients_in_when_optional_but_never_with_a_bound_token() {
    let pki = Pki::new("mtls-optional");
    let env = Env::start_with(|raw| pki.terminate_tls(raw, ClientAuth::Optional)).await;
    let (alice, bob) = (pki.ca.issue(&["alice"]), pki.ca.issue(&["bob"]));
    // One introspection each: every later request is a cache hit, and the
    // binding is checked on hits too.
    env.answer("bound", answer(&env, Some(&alice.cert_der)), 1)
        .await;
    env.answer("plain", answer(&env, None), 1).await;
    let url = https_url(&env, "/x");
    let (anon, as_alice, as_bob) = (
        pki.client(None, true),
        pki.client(Some(&alice), true),
        pki.client(Some(&bob), false),
    );

    let r = get_via(&anon, &url, "plain", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header("x-auth-token-binding"), Some("none"));
    // An unbound token does not care which certificate comes with it.
    let r = get_via(&as_bob, &url, "plain", &[]).await;
    assert_eq!(r.echo().header("x-auth-token-binding"), Some("none"));

    let r = get_via(&as_alice, &url, "bound", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header("x-auth-token-binding"), Some("mtls"));
    assert_binding_refused(&get_via(&anon, &url, "bound", &[]).await, MISSING);
    assert_binding_refused(&get_via(&as_bob, &url, "bound", &[]).await, MISMATCH);
    // Still good for its holder after the refusals.
    assert_eq!(get_via(&as_alice, &url, "bound", &[]).await.status, 200);
    assert_eq!(env.upstream.hits(), 4);

    let m = env.scrape().await;
    let refusals = |reason| m.sum("tokengate_binding_refusals_total", &[("reason", reason)]);
    assert_eq!(refusals("certificate_missing"), 1.0);
    assert_eq!(refusals("certificate_mismatch"), 1.0);
    assert_eq!(refusals("cnf_unreadable"), 0.0);
}

#[tokio::test]
async fn should_refuse_a_bound_token_with_nothing_configured() {
    let env = Env::start().await;
    let cert = TestCa::new("somewhere").issue(&["alice"]).cert_der;
    env.answer("bound", answer(&env, Some(&cert)), 1).await;
    env.answer(
        "odd",
        json!({"active": true, "sub": "a", "cnf": {"jwk": {"kty": "EC"}}}),
        1,
    )
    .await;
    // Over HTTP/1.1 and h2c, introspected and then from the cache.
    assert_binding_refused(&env.get("/x", "bound").await, MISSING);
    let r = get_via(&env.h2c, &env.url("/x"), "bound", &[]).await;
    assert_binding_refused(&r, MISSING);
    // A confirmation method nobody checks is not a plain bearer token either.
    assert_binding_refused(&env.get("/x", "odd").await, "cannot check");
    assert_eq!(env.upstream.hits(), 0);
}

/// tokengate behind a TLS-terminating proxy on 127.0.0.1 that passes the
/// client certificate in `header` (trusted unless `trusted` says otherwise).
async fn behind_proxy(header: &str, trusted: &str) -> Env {
    let (header, trusted) = (header.to_owned(), trusted.to_owned());
    Env::start_with(move |raw| {
        raw.mtls.client_cert_header = header;
        raw.mtls.trusted_proxies = vec![trusted];
    })
    .await
}

#[tokio::test]
async fn should_read_nginx_escaped_pem_from_a_trusted_proxy() {
    let env = behind_proxy("X-SSL-Client-Cert", "127.0.0.1").await;
    let ca = TestCa::new("front CA");
    let (alice, bob) = (ca.issue(&["alice"]), ca.issue(&["bob"]));
    env.answer("bound", answer(&env, Some(&alice.cert_der)), 1)
        .await;
    let url = env.url("/x");
    let pem = escaped_pem(&alice.cert_pem);
    let r = get_via(&env.http1, &url, "bound", &[("x-ssl-client-cert", &pem)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.echo();
    assert_eq!(echo.header("x-auth-token-binding"), Some("mtls"));
    // From a trusted proxy the header is genuine: the upstream may use it too.
    assert_eq!(echo.header("x-ssl-client-cert"), Some(pem.as_str()));
    // h2c from the proxy: the same.
    let r = get_via(&env.h2c, &url, "bound", &[("x-ssl-client-cert", &pem)]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let bob_pem = escaped_pem(&bob.cert_pem);
    let r = get_via(
        &env.http1,
        &url,
        "bound",
        &[("x-ssl-client-cert", &bob_pem)],
    )
    .await;
    assert_binding_refused(&r, MISMATCH);
    // nginx sends an empty value when the client presented no certificate.
    let r = get_via(&env.http1, &url, "bound", &[("x-ssl-client-cert", "")]).await;
    assert_binding_refused(&r, MISSING);
    assert_binding_refused(&get_via(&env.http1, &url, "bound", &[]).await, MISSING);

    // A header the trusted proxy mangled: 400, before any upstream call.
    for bad in [
        "-----BEGIN%20CERTIFICATE-----%0Anot-base64%0A",
        "-----BEGIN%zz",
    ] {
        let r = get_via(&env.http1, &url, "bound", &[("x-ssl-client-cert", bad)]).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_request");
    }
    assert_eq!(env.upstream.hits(), 2);
}

#[tokio::test]
async fn should_read_envoy_xfcc_from_a_trusted_proxy_taking_the_last_element() {
    let env = behind_proxy("x-forwarded-client-cert", "127.0.0.0/8").await;
    let ca = TestCa::new("mesh CA");
    let (alice, bob) = (ca.issue(&["alice"]), ca.issue(&["bob"]));
    env.answer("bound", answer(&env, Some(&alice.cert_der)), 1)
        .await;
    let hash = |c: &Issued| hex::encode(Sha256::digest(&c.cert_der));
    let url = env.url("/x");
    let (env, url) = (&env, url.as_str());
    let xfcc = |v: String| async move {
        get_via(&env.http1, url, "bound", &[("x-forwarded-client-cert", &v)]).await
    };
    // Envoy's SANITIZE_SET: one element with By, Hash, Subject (quoted), URI.
    let r = xfcc(format!(
        "By=spiffe://cluster.local/ns/api/sa/gate;Hash={};Subject=\"CN=alice,O=Example\";URI=spiffe://cluster.local/ns/a/sa/alice",
        hash(&alice)
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header("x-auth-token-binding"), Some("mtls"));
    // Cert= (URL-encoded PEM) works alone, and must agree with Hash= when both are sent.
    let r = xfcc(format!("Cert=\"{}\"", escaped_pem(&alice.cert_pem))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = xfcc(format!(
        "Hash={};Cert={}",
        hash(&bob),
        escaped_pem(&alice.cert_pem)
    ))
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // APPEND_FORWARD: earlier hops first, the closest proxy's client last.
    let r = xfcc(format!("Hash={},Hash={}", hash(&alice), hash(&bob))).await;
    assert_binding_refused(&r, MISMATCH);
    let r = xfcc(format!("Hash={},Hash={}", hash(&bob), hash(&alice))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = xfcc("Hash=12345".to_owned()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(env.upstream.hits(), 3);
}

#[tokio::test]
async fn should_strip_and_ignore_the_header_from_an_untrusted_peer() {
    // The proxies are on 10/8; our client on 127.0.0.1 is not one of them.
    let env = behind_proxy("X-SSL-Client-Cert", "10.0.0.0/8").await;
    let alice = TestCa::new("front CA").issue(&["alice"]);
    env.answer("bound", answer(&env, Some(&alice.cert_der)), 1)
        .await;
    env.answer("plain", answer(&env, None), 1).await;
    let url = env.url("/x");
    let pem = escaped_pem(&alice.cert_pem);
    let r = get_via(&env.http1, &url, "bound", &[("x-ssl-client-cert", &pem)]).await;
    assert_binding_refused(&r, MISSING);
    // An unbound token passes, and the upstream never sees the forged header
    // (nor gets a 400 for garbage in it: it is not read at all).
    for value in [pem.as_str(), "garbage%zz"] {
        let r = get_via(&env.http1, &url, "plain", &[("X-SSL-Client-Cert", value)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.echo();
        assert!(!echo.has("x-ssl-client-cert"), "{:?}", echo.headers);
        assert_eq!(echo.header("x-auth-token-binding"), Some("none"));
    }
}

#[tokio::test]
async fn should_check_the_binding_in_forward_auth_mode_with_the_header() {
    let env = Env::start_with(|raw| {
        raw.mode = Mode::ForwardAuth;
        raw.forward_auth.convention = ConventionSetting::Nginx;
        raw.mtls.client_cert_header = "X-SSL-Client-Cert".into();
        raw.mtls.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let ca = TestCa::new("front CA");
    let (alice, bob) = (ca.issue(&["alice"]), ca.issue(&["bob"]));
    env.answer("bound", answer(&env, Some(&alice.cert_der)), 1)
        .await;
    let env = &env;
    let ask = |cert: Option<String>| async move {
        let mut b = request(Method::GET, &env.url("/_tokengate"))
            .header("authorization", "Bearer bound")
            .header("x-original-method", "GET")
            .header("x-original-uri", "/orders/7")
            .header("x-forwarded-host", "api.example");
        if let Some(c) = cert {
            b = b.header("x-ssl-client-cert", c);
        }
        send(&env.http1, b.body(empty()).unwrap()).await
    };
    let r = ask(Some(escaped_pem(&alice.cert_pem))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-auth-token-binding"), Some("mtls"));
    assert_eq!(r.header("x-auth-subject"), Some("alice"));
    assert_binding_refused(&ask(Some(escaped_pem(&bob.cert_pem))).await, MISMATCH);
    assert_binding_refused(&ask(None).await, MISSING);
}

// ---------------------------------------------------------------------------
// A real oidc-provider issuing certificate-bound tokens (tests/oidc/mtls.mjs)
// ---------------------------------------------------------------------------

const OIDC_SECRET: &str = "tokengate-mtls-secret-0123456789";

/// `node tests/oidc/mtls.mjs`; killed when dropped.
struct BoundTokenAs {
    child: tokio::process::Child,
    port: u16,
}

impl BoundTokenAs {
    /// `None` (after the skip line, or a CI failure) when node or the npm
    /// package is missing.
    async fn start() -> Option<Self> {
        let (child, port) = start_node_script(&current_test(), "mtls.mjs", &[OIDC_SECRET]).await?;
        Some(Self { child, port })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A token for `bound-app`, bound to `cert` (client_credentials; the AS
    /// reads the certificate from the test header, see mtls.mjs).
    async fn bound_token(&self, cert: &Issued) -> String {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("bound-app:{OIDC_SECRET}"));
        let req = request(Method::POST, &self.url("/token"))
            .header("authorization", format!("Basic {basic}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-test-client-cert", escaped_pem(&cert.cert_pem))
            .body(full("grant_type=client_credentials&scope=read"))
            .unwrap();
        let r = send(&http1_client(), req).await;
        assert_eq!(r.status, 200, "token endpoint: {}", r.text());
        r.json()["access_token"]
            .as_str()
            .expect("access_token in the token response")
            .to_owned()
    }

    /// The AS's own introspection answer for `token` (as `tokengate`).
    async fn introspect(&self, token: &str) -> serde_json::Value {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("tokengate:{OIDC_SECRET}"));
        let req = request(Method::POST, &self.url("/token/introspection"))
            .header("authorization", format!("Basic {basic}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(format!("token={token}")))
            .unwrap();
        send(&http1_client(), req).await.json()
    }
}

impl Drop for BoundTokenAs {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn should_enforce_a_real_oidc_provider_certificate_bound_token() {
    let Some(issuer) = BoundTokenAs::start().await else {
        return;
    };
    let pki = Pki::new("mtls-real-as");
    let (alice, bob) = (pki.ca.issue(&["alice"]), pki.ca.issue(&["bob"]));
    let token = issuer.bound_token(&alice).await;
    // The AS bound it: its introspection answer names alice's certificate.
    let answer = issuer.introspect(&token).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(
        answer["cnf"]["x5t#S256"],
        x5t_s256(&alice.cert_der),
        "{answer}"
    );

    let upstream = Upstream::start().await;
    let mut raw = RawConfig {
        listen: "127.0.0.1:0".into(),
        upstream: upstream.url(),
        shutdown_timeout: std::time::Duration::from_secs(1),
        ..RawConfig::default()
    };
    raw.introspection.url = issuer.url("/token/introspection");
    raw.introspection.client_id = "tokengate".into();
    raw.introspection.client_secret = tokengate::config::Secret::new(OIDC_SECRET);
    raw.introspection.probe = tokengate::config::ProbeMode::Off;
    pki.terminate_tls(&mut raw, ClientAuth::Optional);
    let gate = Gate::start(&raw).await;
    let url = format!("https://127.0.0.1:{}/reports", gate.addr.port());

    // The holder of the certificate, over h2 and HTTP/1.1.
    for h2 in [true, false] {
        let r = get_via(&pki.client(Some(&alice), h2), &url, &token, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.echo();
        assert_eq!(echo.header("x-auth-token-binding"), Some("mtls"));
        assert_eq!(echo.header("x-auth-client-id"), Some("bound-app"));
    }
    // A thief with the token: another certificate from the same CA, or none.
    let r = get_via(&pki.client(Some(&bob), true), &url, &token, &[]).await;
    assert_binding_refused(&r, MISMATCH);
    let r = get_via(&pki.client(None, false), &url, &token, &[]).await;
    assert_binding_refused(&r, MISSING);
    assert_eq!(upstream.hits(), 2);
}

// ---------------------------------------------------------------------------
// A real nginx terminating TLS in front of tokengate (deploy/nginx/mtls.conf)
// ---------------------------------------------------------------------------

/// nginx in the foreground from a temporary prefix; killed on drop.
struct Nginx {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nginx {
    /// The nginx binary, or `None` after the skip line (a failure under `CI`).
    fn binary_or_skip() -> Option<PathBuf> {
        let bin = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        if bin.is_none() {
            skip_for_missing(&current_test(), "nginx (apt-get install nginx)");
        }
        bin
    }

    /// Runs deploy/nginx/mtls.conf with its addresses and files replaced.
    async fn start(bin: &std::path::Path, gate: std::net::SocketAddr, pki: &Pki) -> Self {
        let port = closed_addr().await.port();
        let dir = temp_dir("nginx-mtls");
        let server = pki.ca.issue(&["localhost", "127.0.0.1"]);
        let file = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/mtls.conf"),
        )
        .unwrap();
        let replacements = [
            ("server 127.0.0.1:8080;", format!("server {gate};")),
            ("listen 443 ssl;", format!("listen 127.0.0.1:{port} ssl;")),
            (
                "/etc/nginx/tls/server.crt",
                file("server.crt", &server.cert_pem),
            ),
            (
                "/etc/nginx/tls/server.key",
                file("server.key", &server.key_pem),
            ),
            (
                "/etc/nginx/tls/client-ca.pem",
                file("ca.pem", &pki.ca.pem()),
            ),
        ];
        let mut site = shipped.clone();
        for (needle, with) in &replacements {
            assert!(shipped.contains(needle), "mtls.conf lost {needle:?}");
            site = site.replace(needle, with);
        }
        std::fs::write(dir.join("site.conf"), site).unwrap();
        let d = dir.display();
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/site.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let child = std::process::Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("cannot start nginx");
        let mut nginx = Self { child, port, dir };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return nginx;
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                panic!("nginx exited with {status}: {log}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("nginx did not listen on port {port} within 10s");
    }
}

#[tokio::test]
async fn should_enforce_the_binding_behind_a_real_nginx_terminating_tls() {
    let Some(bin) = Nginx::binary_or_skip() else {
        return;
    };
    // tokengate as the shipped file's header configures it.
    let env = behind_proxy("X-SSL-Client-Cert", "127.0.0.1").await;
    let pki = Pki::new("mtls-nginx");
    let (alice, bob) = (pki.ca.issue(&["alice"]), pki.ca.issue(&["bob"]));
    env.answer("bound", answer(&env, Some(&alice.cert_der)), 1)
        .await;
    env.answer("plain", answer(&env, None), 1).await;
    let nginx = Nginx::start(&bin, env.gate.addr, &pki).await;
    let url = format!("https://127.0.0.1:{}/orders", nginx.port);

    let r = get_via(&pki.client(Some(&alice), false), &url, "bound", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.echo();
    assert_eq!(echo.header("x-auth-token-binding"), Some("mtls"));
    assert!(echo.has("x-ssl-client-cert"));
    assert_binding_refused(
        &get_via(&pki.client(Some(&bob), false), &url, "bound", &[]).await,
        MISMATCH,
    );
    // No certificate: a forged header is replaced by nginx's (empty, so none).
    let anon = pki.client(None, false);
    let forged = escaped_pem(&alice.cert_pem);
    let r = get_via(&anon, &url, "bound", &[("x-ssl-client-cert", &forged)]).await;
    assert_binding_refused(&r, MISSING);
    let r = get_via(&anon, &url, "plain", &[("x-ssl-client-cert", &forged)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.echo();
    assert_eq!(echo.header("x-auth-token-binding"), Some("none"));
    assert!(!echo.has("x-ssl-client-cert"), "{:?}", echo.headers);
    // A certificate from another CA never gets past nginx.
    let stranger = TestCa::new("another CA").issue(&["mallory"]);
    let r = get_via(&pki.client(Some(&stranger), false), &url, "plain", &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(env.upstream.hits(), 2);
}

#[tokio::test]
async fn should_keep_the_client_certificate_settings_until_a_restart() {
    let pki = Pki::new("mtls-reload");
    let mut raw = base_config(&wiremock::MockServer::start().await, "http://127.0.0.1:9");
    pki.terminate_tls(&mut raw, ClientAuth::Optional);
    let gate = Gate::start(&raw).await;
    let mut stricter = raw.clone();
    stricter.tls.client_auth = ClientAuth::Required;
    stricter.mtls.client_cert_header = "X-SSL-Client-Cert".into();
    stricter.mtls.trusted_proxies = vec!["10.0.0.1".into()];
    let report = gate.reload().reload(stricter.validate().unwrap()).unwrap();
    // The verifier is part of the running acceptor: restart-only, with a warning.
    assert_eq!(report.restart_required, vec!["tls"]);
    // [mtls] is read per request: applied at once.
    let now = gate.reload().current();
    assert!(now.mtls.trusts("10.0.0.1".parse().unwrap()));
    // An anonymous client still completes the handshake (and gets a 401 for no token).
    let url = format!("https://127.0.0.1:{}/x", gate.addr.port());
    let r = send(
        &pki.client(None, true),
        request(Method::GET, &url).body(empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);
}
