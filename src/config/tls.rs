//! `[tls]` (termination and client certificates), `[upstream_tls]`, the AS
//! client certificate and `[mtls]`: every file read now, so that a bad
//! certificate or key stops start-up (or a reload) with the key's name.

use super::error::*;
use super::raw::*;
use super::validate::*;
use http::HeaderName;
use std::path::{Path, PathBuf};

impl RawConfig {
    /// `[mtls]`: every bad key and CIDR reported.
    pub(super) fn mtls_settings(
        &self,
        errors: &mut Errors,
    ) -> Option<crate::policy::binding::mtls::MtlsSettings> {
        let m = &self.mtls;
        let header = m.client_cert_header.trim();
        let client_cert_header = if header.is_empty() {
            Some(None)
        } else {
            errors
                .take(HeaderName::try_from(header).map_err(|_| {
                    ConfigError::invalid(
                        "mtls.client_cert_header",
                        format!("{header:?} is not a valid header name"),
                    )
                }))
                .map(Some)
        };
        let mut trusted_proxies = Some(Vec::with_capacity(m.trusted_proxies.len()));
        for s in &m.trusted_proxies {
            match errors.take(parse_cidr("mtls.trusted_proxies", s)) {
                Some(net) => trusted_proxies.iter_mut().for_each(|v| v.push(net)),
                None => trusted_proxies = None,
            }
        }
        // A proxy list without a header to read is a half-done set-up: the
        // operator expects certificates to arrive and none ever would.
        errors.check(
            m.trusted_proxies.is_empty() || !header.is_empty(),
            "mtls.trusted_proxies",
            "is set but mtls.client_cert_header is empty: name the header the proxies put the client certificate in",
        );
        Some(crate::policy::binding::mtls::MtlsSettings {
            client_cert_header: client_cert_header?,
            trusted_proxies: trusted_proxies?,
        })
    }

    /// `[tls] client_ca_file` + `client_auth`, read now; `None` when unset.
    pub(super) fn client_cert_auth(
        &self,
    ) -> Result<Option<crate::http::tls::ClientCertAuth>, ConfigError> {
        use crate::http::tls::{self, ClientAuth};
        let t = &self.tls;
        if t.client_ca_file.is_empty() {
            if t.client_auth == ClientAuth::Required {
                return Err(ConfigError::invalid(
                    "tls.client_auth",
                    "\"required\" needs tls.client_ca_file (the CA client certificates must chain to)",
                ));
            }
            return Ok(None);
        }
        if t.cert_file.is_empty() || t.key_file.is_empty() {
            return Err(ConfigError::invalid(
                "tls.client_ca_file",
                "needs tls.cert_file and tls.key_file: client certificates are asked for only when tokengate terminates TLS",
            ));
        }
        let path = PathBuf::from(&t.client_ca_file);
        let roots = tls::load_certs(&path)
            .map_err(|e| ConfigError::invalid("tls.client_ca_file", e.to_string()))?;
        Ok(Some(tls::ClientCertAuth {
            ca_file: path,
            roots,
            mode: t.client_auth,
        }))
    }

    /// `[upstream_tls] ca_file`, read (empty when unset).
    pub(super) fn ca_roots(
        &self,
    ) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, ConfigError> {
        if self.upstream_tls.ca_file.is_empty() {
            return Ok(Vec::new());
        }
        crate::http::tls::load_certs(Path::new(&self.upstream_tls.ca_file))
            .map_err(|e| ConfigError::invalid("upstream_tls.ca_file", e.to_string()))
    }

    /// `[tls]`, `[upstream_tls]` and the AS client certificate: every file is
    /// read now, so a bad certificate or key stops start-up with the key's name.
    pub(super) fn tls_settings(
        &self,
        roots: &[rustls_pki_types::CertificateDer<'static>],
        client_auth: Option<crate::http::tls::ClientCertAuth>,
    ) -> Result<
        (
            Option<crate::http::tls::ServerTlsSettings>,
            crate::http::tls::ClientTls,
            crate::http::tls::ClientTls,
        ),
        ConfigError,
    > {
        use crate::http::tls;
        let mut errors = Errors::default();
        let t = &self.tls;
        let server = match (t.cert_file.is_empty(), t.key_file.is_empty()) {
            (true, true) => None,
            (false, true) | (true, false) => {
                errors.push(ConfigError::invalid(
                    if t.cert_file.is_empty() {
                        "tls.cert_file"
                    } else {
                        "tls.key_file"
                    },
                    "set both tls.cert_file and tls.key_file, or neither",
                ));
                None
            }
            (false, false) => {
                let (cert, key) = (PathBuf::from(&t.cert_file), PathBuf::from(&t.key_file));
                let client = client_auth.as_ref();
                errors.take(
                    tls::ServerTlsSettings::load_with_client_auth(&cert, &key, client).map_err(
                        |e| {
                            let k = match e {
                                tls::TlsError::Certificates { .. }
                                | tls::TlsError::NoCertificate { .. } => "tls.cert_file",
                                // Only the client verifier is built from a bare config error.
                                tls::TlsError::Config(_) if client.is_some() => {
                                    "tls.client_ca_file"
                                }
                                _ => "tls.key_file",
                            };
                            ConfigError::invalid(k, e.to_string())
                        },
                    ),
                )
            }
        };
        let upstream = errors.take(
            tls::ClientTls::new(roots, None)
                .map_err(|e| ConfigError::invalid("upstream_tls.ca_file", e.to_string())),
        );
        let i = &self.introspection;
        let client_auth = match (i.client_cert_file.is_empty(), i.client_key_file.is_empty()) {
            (true, true) => None,
            (false, true) | (true, false) => {
                errors.push(ConfigError::invalid(
                    if i.client_cert_file.is_empty() {
                        "introspection.client_cert_file"
                    } else {
                        "introspection.client_key_file"
                    },
                    "set both introspection.client_cert_file and client_key_file, or neither",
                ));
                None
            }
            (false, false) => {
                let certs = errors.take(tls::load_certs(Path::new(&i.client_cert_file)).map_err(
                    |e| ConfigError::invalid("introspection.client_cert_file", e.to_string()),
                ));
                let key = errors.take(tls::load_key(Path::new(&i.client_key_file)).map_err(|e| {
                    ConfigError::invalid("introspection.client_key_file", e.to_string())
                }));
                certs.zip(key)
            }
        };
        // Built only from files that loaded: a pair with a bad half is reported above.
        let auth = errors.take(
            tls::ClientTls::new(roots, client_auth)
                .map_err(|e| ConfigError::invalid("introspection.client_key_file", e.to_string())),
        );
        errors.into_result()?;
        match (upstream, auth) {
            (Some(upstream), Some(auth)) => Ok((server, upstream, auth)),
            _ => Err(ConfigError::invalid(
                "(config)",
                "a TLS setting was left unbuilt without an error (a bug in validate)",
            )),
        }
    }
}
