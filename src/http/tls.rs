//! TLS on both sides: termination for `listen` (`[tls]`, ALPN h2 + http/1.1,
//! TLS 1.2+, certificate reloaded without dropping connections; client
//! certificates verified against `client_ca_file` for RFC 8705
//! certificate-bound tokens) and the rustls
//! client configuration for the upstream and the AS (`[upstream_tls] ca_file`,
//! `[introspection] client_cert_file`/`client_key_file` for RFC 8705 mTLS).
//!
//! PEM is read with `rustls-pki-types` (`rustls-pemfile` is unmaintained).

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// How often the certificate files are checked for changes (cert-manager and
/// similar rewrite them in place; SIGHUP is the other trigger).
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// How long a client may take to finish the handshake before we drop it, so a
/// silent connection cannot hold a task forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Certificates { path: PathBuf, reason: String },
    #[error("{path} contains no certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot read a private key from {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the private key in {key} does not match the certificate in {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// `[tls] client_auth`: whether a client without a certificate may connect
/// when `client_ca_file` is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Anonymous clients connect too; a certificate they do present must verify.
    #[default]
    Optional,
    /// The handshake fails without a certificate that verifies.
    Required,
}

/// `[tls] client_ca_file` + `client_auth`, read: the roots client
/// certificates must chain to.
#[derive(Clone)]
pub struct ClientCertAuth {
    pub ca_file: PathBuf,
    pub roots: Vec<CertificateDer<'static>>,
    pub mode: ClientAuth,
}

impl std::fmt::Debug for ClientCertAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertAuth")
            .field("ca_file", &self.ca_file)
            .field("roots", &self.roots.len())
            .field("mode", &self.mode)
            .finish()
    }
}

impl ClientCertAuth {
    /// rustls' WebPKI verifier: chain to `roots`, `clientAuth` usage, validity
    /// dates; with `optional`, anonymous clients are let through (and then
    /// have no certificate to bind a token to).
    fn verifier(&self) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
        let mut store = rustls::RootCertStore::empty();
        for c in &self.roots {
            store
                .add(c.clone())
                .map_err(|e| TlsError::Config(format!("bad client CA certificate: {e}")))?;
        }
        let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(store),
            provider(),
        );
        let builder = match self.mode {
            ClientAuth::Optional => builder.allow_unauthenticated(),
            ClientAuth::Required => builder,
        };
        builder
            .build()
            .map_err(|e| TlsError::Config(format!("client certificate verifier: {e}")))
    }
}

/// The one crypto provider (ring), passed explicitly so that building a
/// configuration never depends on which provider happens to be installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Certificates {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Loads a certificate chain and its key, and checks that they belong together,
/// so that a mismatched pair fails at start-up (or at reload) and not at the
/// first handshake.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = load_certs(cert)?;
    let der = load_key(key)?;
    let mismatch = |reason: String| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let ck =
        CertifiedKey::from_der(certs, der, &provider()).map_err(|e| mismatch(e.to_string()))?;
    Ok(Arc::new(ck))
}

/// Hands every handshake the current certificate. Swapping it only affects
/// handshakes that start afterwards: open connections keep theirs.
#[derive(Debug)]
struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a valid certificate.
        Some(match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        })
    }
}

/// A cloneable handle that reloads the certificate from its files: from SIGHUP
/// (`main`), from the file-watch task, or from a test.
#[derive(Clone, Debug)]
pub struct TlsReloader {
    resolver: Arc<CertResolver>,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    /// The files' modification times at the last load, to notice a change.
    seen: Arc<Mutex<(Option<SystemTime>, Option<SystemTime>)>>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl TlsReloader {
    fn mtimes(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        (mtime(&self.cert_file), mtime(&self.key_file))
    }

    /// Loads the pair again and swaps it in. On error the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let before = self.mtimes();
        let ck = load_certified_key(&self.cert_file, &self.key_file)?;
        match self.resolver.current.write() {
            Ok(mut g) => *g = ck,
            Err(p) => *p.into_inner() = ck,
        }
        if let Ok(mut s) = self.seen.lock() {
            *s = before;
        }
        info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// Reloads when either file's mtime changed since the last load. A failed
    /// load (e.g. the key is written after the certificate) is retried on the
    /// next poll, because `seen` is only updated on success.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = self.mtimes();
        let changed = self.seen.lock().map(|s| *s != now).unwrap_or(true);
        if changed {
            self.reload()?;
        }
        Ok(changed)
    }

    /// Polls the files every `interval` until the task is aborted.
    pub async fn watch(self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = self.reload_if_changed() {
                warn!(error = %e, "TLS certificate changed but cannot be loaded; keeping the current one");
            }
        }
    }
}

/// `[tls]`, validated: an acceptor whose certificate can be swapped, and the
/// handle that swaps it. Clones share both.
#[derive(Clone)]
pub struct ServerTlsSettings {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub reloader: TlsReloader,
    /// `client_ca_file` and `client_auth`, for reload to compare: the
    /// verifier is built into the acceptor (restart-only, see `config::reload`).
    pub client_auth: Option<(PathBuf, ClientAuth)>,
}

impl std::fmt::Debug for ServerTlsSettings {
    // The key stays out of Debug whatever rustls prints for it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTlsSettings")
            .field("cert_file", &self.reloader.cert_file)
            .field("key_file", &self.reloader.key_file)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl ServerTlsSettings {
    /// Loads the pair (errors say which file is wrong) and builds the acceptor:
    /// TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        Self::load_with_client_auth(cert_file, key_file, None)
    }

    /// As [`Self::load`], and with `client` set, asks every client for a
    /// certificate and verifies it (`[tls] client_ca_file`, `client_auth`).
    pub fn load_with_client_auth(
        cert_file: &Path,
        key_file: &Path,
        client: Option<&ClientCertAuth>,
    ) -> Result<Self, TlsError> {
        let initial = load_certified_key(cert_file, key_file)?;
        let resolver = Arc::new(CertResolver {
            current: RwLock::new(initial),
        });
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match client {
            None => builder.with_no_client_auth(),
            Some(c) => builder.with_client_cert_verifier(c.verifier()?),
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let reloader = TlsReloader {
            resolver,
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            seen: Arc::new(Mutex::new((None, None))),
        };
        // Remember the mtimes of what was loaded, so the watcher does not
        // reload an unchanged pair on its first tick.
        if let Ok(mut seen) = reloader.seen.lock() {
            *seen = reloader.mtimes();
        }
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            reloader,
            client_auth: client.map(|c| (c.ca_file.clone(), c.mode)),
        })
    }
}

/// Outbound TLS for the upstream and the AS: webpki roots plus `ca_file`, and an
/// optional client certificate. Built once by `config::validate`, so a bad file
/// stops start-up; cheap to clone.
#[derive(Clone)]
pub struct ClientTls(pub Arc<rustls::ClientConfig>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("client_cert", &self.0.client_auth_cert_resolver.has_certs())
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// `extra_roots`: `[upstream_tls] ca_file`; `client_auth`: chain and key for mTLS.
    pub fn new(
        extra_roots: &[CertificateDer<'static>],
        client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for c in extra_roots {
            roots
                .add(c.clone())
                .map_err(|e| TlsError::Config(format!("bad CA certificate: {e}")))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let config = match client_auth {
            None => builder.with_no_client_auth(),
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?,
        };
        Ok(Self(Arc::new(config)))
    }
}
