//! The Redis client: `rediss://` trusts `[upstream_tls] ca_file` besides the
//! system roots.

use crate::cache::settings::RedisUrl;
use rustls_pki_types::CertificateDer;
use tracing::warn;

/// The Redis client for `url`. For a TLS URL with `ca_roots` (`[upstream_tls]
/// ca_file`) it trusts those and the system roots. The redis crate takes custom
/// roots only as one PEM bundle that *replaces* the system roots, so the
/// system roots go into the bundle too. Without `ca_roots`, or for a plain
/// URL, the crate's default applies (system roots). Nothing connects here.
pub fn redis_client(
    url: &RedisUrl,
    ca_roots: &[CertificateDer<'static>],
) -> redis::RedisResult<redis::Client> {
    let is_tls = url::Url::parse(&url.0).is_ok_and(|u| matches!(u.scheme(), "rediss" | "valkeys"));
    if !is_tls || ca_roots.is_empty() {
        return redis::Client::open(url.0.as_str());
    }
    let native = rustls_native_certs::load_native_certs();
    if let Some(e) = native.errors.first() {
        // The redis crate loads them again on each connect and refuses to
        // connect on such an error, so say so now, once, at start-up.
        warn!(error = %e, "cannot read every system CA certificate; rediss:// may fail to connect");
    }
    let mut pem = String::new();
    for cert in ca_roots.iter().chain(native.certs.iter().filter(|c| {
        // One system certificate that rustls cannot use would make the crate
        // reject the whole bundle; leave such certificates out.
        rustls::RootCertStore::empty().add((*c).clone()).is_ok()
    })) {
        push_pem(&mut pem, cert);
    }
    redis::Client::build_with_tls(
        url.0.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.into_bytes()),
        },
    )
}

/// Appends `cert` as a PEM block (64-column base64, RFC 7468).
pub(super) fn push_pem(out: &mut String, cert: &CertificateDer<'_>) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_roots_go_into_a_pem_bundle_that_round_trips() {
        use rustls_pki_types::pem::PemObject;
        // Any DER-shaped bytes do for the encoding; length not a multiple of 48
        // so that the last line is short.
        let certs: Vec<CertificateDer<'static>> = vec![
            CertificateDer::from((0u8..=200).collect::<Vec<_>>()),
            CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x05]),
        ];
        let mut pem = String::new();
        for c in &certs {
            push_pem(&mut pem, c);
        }
        assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
        let back = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(back, certs);
    }
}
