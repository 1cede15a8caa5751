//! RFC 8705 §3 certificate-bound access tokens: the answer's
//! `cnf["x5t#S256"]` (base64url of the SHA-256 of the certificate's DER) must
//! be the thumbprint of the client certificate of the request.
//!
//! Where the certificate comes from ([`client_certificate`]):
//! * from a peer in `mtls.trusted_proxies` (a TLS-terminating front proxy, or
//!   the proxy that asks in forward-auth mode): `mtls.client_cert_header` and
//!   nothing else. Two formats, told apart by their first bytes: nginx's
//!   URL-encoded PEM (`$ssl_client_escaped_cert`) and Envoy's
//!   `x-forwarded-client-cert` (XFCC: `Hash=` hex SHA-256 of the DER, `Cert=`
//!   URL-encoded PEM; the **last** element, the one the closest proxy added
//!   about its own client). A header we cannot read is the proxy's error: 400.
//! * from anyone else: the certificate the client presented in tokengate's own
//!   TLS handshake (`[tls] client_ca_file`), verified by rustls; the header is
//!   ignored, and removed before the upstream sees it ([`strip_untrusted`]).

use http::header::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use subtle::ConstantTimeEq;

/// The `cnf` member of a certificate-bound token (RFC 8705 §3.1).
pub const CNF_MEMBER: &str = "x5t#S256";

/// `[mtls]`, validated. Reloadable: read per request from the settings snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MtlsSettings {
    /// `client_cert_header`; `None` when empty.
    pub client_cert_header: Option<HeaderName>,
    /// `trusted_proxies`: the peers whose `client_cert_header` is read.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl MtlsSettings {
    /// Whether `peer` may tell us the client's certificate in the header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.client_cert_header.is_some() && crate::http::peer_in(&self.trusted_proxies, peer)
    }
}

/// Why a trusted proxy's certificate header was refused (400: the front
/// proxy is misconfigured, or something between it and us mangled the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientCertError {
    #[error("the client certificate header appears more than once")]
    Repeated,
    #[error("the client certificate header is not visible ASCII")]
    NotText,
    #[error("the client certificate header has a bad percent-encoding")]
    BadPercent,
    #[error("the client certificate header holds no PEM certificate")]
    BadPem,
    #[error("the x-forwarded-client-cert header is malformed: {0}")]
    BadXfcc(&'static str),
    #[error("the x-forwarded-client-cert Hash does not match its Cert")]
    HashMismatch,
}

/// SHA-256 of a certificate's DER: what `x5t#S256` is the base64url of.
pub fn thumbprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The thumbprint of the end-entity certificate the client presented in the
/// handshake (rustls verified it against `tls.client_ca_file`), if any.
pub fn peer_thumbprint(conn: &rustls::ServerConnection) -> Option<[u8; 32]> {
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| thumbprint(leaf))
}

/// The request's client certificate thumbprint: from the header when `peer`
/// is a trusted proxy (absent header: none), else from the TLS handshake.
pub fn client_certificate(
    settings: &MtlsSettings,
    peer: IpAddr,
    tls_cert: Option<[u8; 32]>,
    headers: &HeaderMap,
) -> Result<Option<[u8; 32]>, ClientCertError> {
    let Some(name) = settings.client_cert_header.as_ref() else {
        return Ok(tls_cert);
    };
    if !settings.trusts(peer) {
        return Ok(tls_cert);
    }
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let rest: Vec<_> = values.collect();
    let first = text(first)?.trim();
    if first.is_empty() && rest.is_empty() {
        // nginx sends an empty `$ssl_client_escaped_cert` when the client
        // presented none (and only omits the field when told to).
        return Ok(None);
    }
    if is_pem(first) {
        if !rest.is_empty() {
            return Err(ClientCertError::Repeated);
        }
        return pem_thumbprint(first).map(Some);
    }
    // XFCC: several fields are one comma-separated list (RFC 9110 §5.3).
    let mut joined = first.to_owned();
    for v in rest {
        joined.push(',');
        joined.push_str(text(v)?.trim());
    }
    xfcc_thumbprint(&joined)
}

fn text(v: &http::HeaderValue) -> Result<&str, ClientCertError> {
    v.to_str().map_err(|_| ClientCertError::NotText)
}

/// Removes `client_cert_header` unless `peer` is a trusted proxy: whatever an
/// untrusted client writes there must reach neither our check nor the upstream.
pub fn strip_untrusted(settings: &MtlsSettings, peer: IpAddr, headers: &mut HeaderMap) {
    if let Some(name) = &settings.client_cert_header {
        if !settings.trusts(peer) {
            headers.remove(name);
        }
    }
}

/// `-----BEGIN`, URL-encoded or not (`-` is never escaped).
fn is_pem(value: &str) -> bool {
    value.starts_with("-----BEGIN")
}

/// URL-encoded (or plain) PEM → the thumbprint of its first certificate.
pub fn pem_thumbprint(value: &str) -> Result<[u8; 32], ClientCertError> {
    use rustls_pki_types::pem::PemObject;
    let pem = percent_decode(value)?;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem)
        .map_err(|_| ClientCertError::BadPem)?;
    Ok(thumbprint(&der))
}

/// Strict percent-decoding: `%` must start two hex digits. `+` stays `+`
/// (it is base64, not a space: nginx and Envoy escape it, a plain PEM has it).
fn percent_decode(s: &str) -> Result<Vec<u8>, ClientCertError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(ClientCertError::BadPercent)?;
            let hex = std::str::from_utf8(hex).map_err(|_| ClientCertError::BadPercent)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ClientCertError::BadPercent)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Splits `s` at `sep` outside double quotes (XFCC quotes values that hold
/// `,`, `;` or `=`, and escapes `"` and `\` inside with `\`).
fn split_unquoted(s: &str, sep: char) -> Result<Vec<&str>, ClientCertError> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted || escaped {
        return Err(ClientCertError::BadXfcc("unterminated quoted value"));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// A value as written, its quotes and escapes removed.
fn unquote(v: &str) -> Result<String, ClientCertError> {
    let Some(inner) = v.strip_prefix('"') else {
        return Ok(v.to_owned());
    };
    let inner = inner
        .strip_suffix('"')
        .ok_or(ClientCertError::BadXfcc("unterminated quoted value"))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars
                .next()
                .ok_or(ClientCertError::BadXfcc("dangling escape"))?
        } else {
            c
        });
    }
    Ok(out)
}

/// Envoy's `x-forwarded-client-cert`: the last element (the closest proxy
/// appends the one about its own client; earlier ones describe hops further
/// out). Its `Cert` (hashed by us) and `Hash` must agree when both are there;
/// an element with neither says the client presented no certificate.
fn xfcc_thumbprint(value: &str) -> Result<Option<[u8; 32]>, ClientCertError> {
    let elements = split_unquoted(value, ',')?;
    let last = elements
        .iter()
        .rev()
        .map(|e| e.trim())
        .find(|e| !e.is_empty())
        .ok_or(ClientCertError::BadXfcc("no element"))?;
    let (mut hash, mut cert) = (None, None);
    for pair in split_unquoted(last, ';')? {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (key, v) = pair
            .split_once('=')
            .ok_or(ClientCertError::BadXfcc("a field without '='"))?;
        let slot = if key.trim().eq_ignore_ascii_case("hash") {
            &mut hash
        } else if key.trim().eq_ignore_ascii_case("cert") {
            &mut cert
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(ClientCertError::BadXfcc(
                "Hash or Cert twice in one element",
            ));
        }
        *slot = Some(unquote(v.trim())?);
    }
    let hash = match hash {
        Some(h) => {
            let bytes = hex::decode(h.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or(ClientCertError::BadXfcc("Hash is not 64 hex digits"))?;
            Some(bytes)
        }
        None => None,
    };
    let cert = cert.as_deref().map(pem_thumbprint).transpose()?;
    match (hash, cert) {
        (Some(h), Some(c)) if !bool::from(h.ct_eq(&c)) => Err(ClientCertError::HashMismatch),
        (h, c) => Ok(c.or(h)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate made for the test, as PEM.
    fn pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    /// nginx's `$ssl_client_escaped_cert` (ngx_escape_uri, URI component).
    fn escaped(pem: &str) -> String {
        let mut out = String::new();
        for b in pem.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    fn settings() -> MtlsSettings {
        MtlsSettings {
            client_cert_header: Some(HeaderName::from_static("x-client-cert")),
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-client-cert", v.parse().unwrap());
        }
        h
    }

    const PROXY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));
    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn nginx_escaped_pem_from_a_trusted_proxy() {
        let pem = pem();
        let want = thumbprint(&der(&pem));
        let got = client_certificate(&settings(), PROXY, None, &headers(&[&escaped(&pem)]));
        assert_eq!(got, Ok(Some(want)));
        // Unescaped PEM on one line cannot be sent; a `+` in base64 stays a `+`.
        assert_eq!(
            pem_thumbprint(&pem.replace('\n', "%0A")),
            Ok(want),
            "partly escaped"
        );
    }

    #[test]
    fn the_header_counts_only_from_trusted_proxies() {
        let h = headers(&[&escaped(&pem())]);
        // Untrusted: the TLS certificate, whatever the header says.
        assert_eq!(
            client_certificate(&settings(), CLIENT, Some([1; 32]), &h),
            Ok(Some([1; 32]))
        );
        assert_eq!(client_certificate(&settings(), CLIENT, None, &h), Ok(None));
        // Trusted, header absent or empty: no certificate (not the proxy's own).
        assert_eq!(
            client_certificate(&settings(), PROXY, Some([1; 32]), &HeaderMap::new()),
            Ok(None)
        );
        assert_eq!(
            client_certificate(&settings(), PROXY, None, &headers(&[""])),
            Ok(None)
        );
        // No header configured: never read.
        let none = MtlsSettings {
            client_cert_header: None,
            ..settings()
        };
        assert_eq!(
            client_certificate(&none, PROXY, Some([1; 32]), &h),
            Ok(Some([1; 32]))
        );
        // Stripped from the untrusted only.
        let mut h2 = h.clone();
        strip_untrusted(&settings(), CLIENT, &mut h2);
        assert!(h2.is_empty());
        let mut h3 = h.clone();
        strip_untrusted(&settings(), PROXY, &mut h3);
        assert_eq!(h3.len(), 1);
    }

    #[test]
    fn xfcc_takes_the_last_element() {
        let pem = pem();
        let want = thumbprint(&der(&pem));
        let hash = hex::encode(want);
        let other = hex::encode([9u8; 32]);
        let cases = [
            format!("Hash={hash}"),
            format!("By=spiffe://a;Hash={hash};Subject=\"CN=a,O=b;c\";URI=spiffe://c"),
            format!("Hash={other},By=x;Hash={hash}"),
            format!("Cert=\"{}\"", escaped(&pem)),
            format!("Hash={hash};Cert={}", escaped(&pem)),
        ];
        for c in &cases {
            assert_eq!(xfcc_thumbprint(c), Ok(Some(want)), "{c}");
        }
        // Two fields are one list: the last element of the last field.
        let got = client_certificate(
            &settings(),
            PROXY,
            None,
            &headers(&[&format!("Hash={other}"), &format!("Hash={hash}")]),
        );
        assert_eq!(got, Ok(Some(want)));
        // An element without Hash or Cert: the client presented none.
        assert_eq!(xfcc_thumbprint(&format!("Hash={hash},By=x")), Ok(None));
    }

    #[test]
    fn malformed_headers_are_errors() {
        let pem = pem();
        let hash = hex::encode(thumbprint(&der(&pem)));
        for bad in [
            "Hash=zz".to_owned(),
            format!("Hash={}", &hash[..10]),
            "Hash=\"abc".to_owned(),
            "Subject=\"a\\".to_owned(),
            "Hash".to_owned(),
            format!("Hash={hash};Hash={hash}"),
            format!("Hash={};Cert={}", hex::encode([9u8; 32]), escaped(&pem)),
            "Cert=%2".to_owned(),
            "Cert=abc".to_owned(),
        ] {
            assert!(xfcc_thumbprint(&bad).is_err(), "{bad}");
        }
        let pem = escaped(&pem);
        assert_eq!(
            client_certificate(&settings(), PROXY, None, &headers(&[&pem, &pem])),
            Err(ClientCertError::Repeated)
        );
        assert_eq!(
            pem_thumbprint("-----BEGIN%20CERTIFICATE-----%0Anope%0A"),
            Err(ClientCertError::BadPem)
        );
        assert_eq!(percent_decode("%zz"), Err(ClientCertError::BadPercent));
        assert_eq!(percent_decode("%C3%A9+"), Ok(vec![0xc3, 0xa9, b'+']));
    }
}
