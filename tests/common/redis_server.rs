//! A real redis-server for the fleet tests.

use super::*;

/// A `redis-server` (Debian package `redis-server`, installed by `.ci/run`) on a
/// free loopback port, without persistence; killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    /// `--requirepass`; the URL carries it.
    password: Option<String>,
    /// TLS only (`--port 0 --tls-port`): the directory with the server's
    /// certificate and key, and the CA that issued it (PEM).
    tls: Option<(std::path::PathBuf, String)>,
}

impl RedisServer {
    /// `None` when `redis-server` is not installed (after the skip line; under
    /// `CI` the test fails instead).
    pub async fn start() -> Option<Self> {
        Self::start_with(None, None).await
    }

    /// `password`: `--requirepass`. `ca`: TLS only, with a server certificate
    /// for `localhost` and `127.0.0.1` issued by `ca` (no client certificates).
    pub async fn start_with(password: Option<&str>, ca: Option<&TestCa>) -> Option<Self> {
        if !on_path("redis-server") {
            skip_for_missing(
                &current_test(),
                "redis-server (apt-get install redis-server)",
            );
            return None;
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let tls = ca.map(|ca| {
            let dir = temp_dir("redis-tls");
            let leaf = ca.issue(&["localhost", "127.0.0.1"]);
            std::fs::write(dir.join("server.pem"), &leaf.cert_pem).unwrap();
            std::fs::write(dir.join("server.key"), &leaf.key_pem).unwrap();
            std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
            (dir, ca.pem())
        });
        let mut server = Self {
            port,
            child: None,
            password: password.map(str::to_owned),
            tls,
        };
        server.spawn().await;
        Some(server)
    }

    /// `redis://127.0.0.1:N/0`, or `rediss://localhost:N/0` (the name in the
    /// certificate) for TLS; with `:password@` when there is one.
    pub fn url(&self) -> String {
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        match &self.tls {
            Some(_) => format!("rediss://{auth}localhost:{}/0", self.port),
            None => format!("redis://{auth}127.0.0.1:{}/0", self.port),
        }
    }

    /// Starts (or restarts, on the same port) the server and waits until it answers.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        // The test's own TLS client (below) uses rustls' process-wide provider.
        tokengate::install_crypto_provider();
        let mut cmd = std::process::Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some((dir, _)) => {
                let file = |f: &str| dir.join(f).display().to_string();
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args(["--tls-cert-file", &file("server.pem")])
                    .args(["--tls-key-file", &file("server.key")])
                    .args(["--tls-ca-cert-file", &file("ca.pem")])
                    .args(["--tls-auth-clients", "no"])
            }
        };
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1", "-::1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot run redis-server: install the Debian package `redis-server`");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(mut c) = self.client().get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    /// Kills the server (SIGKILL: no goodbye to the clients) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client for the test's own commands (trusting the test CA for TLS).
    pub fn client(&self) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(self.url()).unwrap(),
            Some((_, ca_pem)) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca_pem.clone().into_bytes()),
                },
            )
            .unwrap(),
        }
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some((dir, _)) = &self.tls {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A rustls client configuration trusting `roots` (and nothing else).
pub fn tls_client_config(
    roots: &[rustls::pki_types::CertificateDer<'static>],
) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth()
}

/// An https client for tokengate; `h2` offers ALPN h2 + http/1.1, else http/1.1 only.
pub fn https_client(
    config: rustls::ClientConfig,
    h2: bool,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, ClientBody> {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if h2 {
        b.enable_all_versions().build()
    } else {
        b.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}
