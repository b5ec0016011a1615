//! TLS for https coordination URLs: the system roots plus `tls.ca_file`,
//! an optional client certificate for mutual TLS, and failures told apart
//! (unknown CA, expired, wrong host name, client certificate missing or
//! refused) in words a user can act on.
//!
//! The files are checked here, before ureq sees them: ureq skips CA
//! certificates it cannot parse without a word, and panics on a client key
//! that does not fit its certificate.

use crate::config::Tls;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::{Path, PathBuf};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

/// Where system CA bundles live on the distributions we meet.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

#[derive(Debug)]
pub(crate) enum TlsError {
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    /// The PEM parsed, but what it holds cannot be used.
    Unusable {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    NoRoots,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { what, path, source } => write!(f, "cannot read {what} {}: {source}", path.display()),
            TlsError::Pem { what, path, message } => {
                write!(f, "{what} {} is not usable PEM: {message}", path.display())
            }
            TlsError::Unusable { what, path, message } => {
                write!(f, "{what} {} cannot be used: {message}", path.display())
            }
            TlsError::NoRoots => write!(
                f,
                "no trusted CA certificates: none of {} exists and tls.ca_file is not set; install ca-certificates or set tls.ca_file",
                SYSTEM_BUNDLES.join(", ")
            ),
        }
    }
}

impl std::error::Error for TlsError {}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<PemItem<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    ureq::tls::parse_pem(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

fn certs_of(items: Vec<PemItem<'static>>) -> Vec<Certificate<'static>> {
    items
        .into_iter()
        .filter_map(|i| match i {
            PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// Builds the TLS settings for the coordination client.
pub(crate) fn config(tls: &Tls) -> Result<TlsConfig, TlsError> {
    let mut roots: Vec<Certificate<'static>> = Vec::new();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
        .find(|p| p.is_file());
    if let Some(bundle) = system {
        roots.extend(certs_of(read_pem("the system CA bundle", &bundle)?));
    }
    if let Some(ca) = &tls.ca_file {
        let extra = certs_of(read_pem("tls.ca_file", ca)?);
        if extra.is_empty() {
            return Err(TlsError::Pem {
                what: "tls.ca_file",
                path: ca.clone(),
                message: "it holds no CERTIFICATE".into(),
            });
        }
        check_anchors(ca, &extra)?;
        roots.extend(extra);
    }
    let mut builder = TlsConfig::builder();
    if tls.insecure_skip_verify {
        builder = builder.disable_verification(true);
    } else if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    builder = builder.root_certs(RootCerts::new_with_certs(&roots));
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let chain = certs_of(read_pem("tls.cert_file", cert)?);
        if chain.is_empty() {
            return Err(TlsError::Pem {
                what: "tls.cert_file",
                path: cert.clone(),
                message: "it holds no CERTIFICATE".into(),
            });
        }
        let key_item: Option<PrivateKey<'static>> = read_pem("tls.key_file", key)?
            .into_iter()
            .find_map(|i| match i {
                PemItem::PrivateKey(k) => Some(k),
                _ => None,
            });
        let key_item = key_item.ok_or_else(|| TlsError::Pem {
            what: "tls.key_file",
            path: key.clone(),
            message: "it holds no PRIVATE KEY".into(),
        })?;
        check_key_pair(cert, key, &chain, &key_item)?;
        builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key_item)));
    }
    Ok(builder.build())
}

/// Every certificate of `tls.ca_file` must be usable as a trust anchor
/// (ureq would drop a broken one silently and every handshake would then
/// fail with "unknown issuer").
fn check_anchors(path: &Path, certs: &[Certificate<'static>]) -> Result<(), TlsError> {
    for (i, c) in certs.iter().enumerate() {
        let mut store = rustls::RootCertStore::empty();
        if let Err(e) = store.add(CertificateDer::from(c.der())) {
            // Not "invalid peer certificate: …": the file is ours.
            let why = match e {
                rustls::Error::InvalidCertificate(c) => format!("{c:?}"),
                other => other.to_string(),
            };
            return Err(TlsError::Unusable {
                what: "tls.ca_file",
                path: path.to_path_buf(),
                message: format!(
                    "certificate {} of {} is not a valid X.509 certificate ({why}); put the PEM CA certificates of the server in it",
                    i + 1,
                    certs.len()
                ),
            });
        }
    }
    Ok(())
}

/// The client key must load and belong to the first certificate of
/// `tls.cert_file` (ureq panics at the first connection otherwise).
fn check_key_pair(
    cert_path: &Path,
    key_path: &Path,
    chain: &[Certificate<'static>],
    key: &PrivateKey<'static>,
) -> Result<(), TlsError> {
    let unusable = |message: String| TlsError::Unusable {
        what: "tls.key_file",
        path: key_path.to_path_buf(),
        message,
    };
    let key_der = PrivateKeyDer::try_from(key.der().to_vec())
        .map_err(|e| unusable(format!("its PRIVATE KEY is not valid DER ({e})")))?;
    let chain_der: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain_der, key_der, &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(unusable(format!(
            "it does not match tls.cert_file {} (a different key pair); use the key that certificate was made for",
            cert_path.display()
        ))),
        Err(rustls::Error::InvalidCertificate(e)) => Err(TlsError::Unusable {
            what: "tls.cert_file",
            path: cert_path.to_path_buf(),
            message: format!("its first certificate is not a valid X.509 certificate ({e})"),
        }),
        Err(e) => Err(unusable(format!(
            "the key cannot be loaded ({e}); use an RSA, ECDSA or Ed25519 key in PEM"
        ))),
    }
}

/// A TLS failure in words that say what to fix. `client_cert`: whether
/// tls.cert_file is set. Alerts the client receives are the server's
/// verdict, so a certificate alert is about our client certificate.
pub(crate) fn explain(host: &str, e: &rustls::Error, client_cert: bool) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => format!(
            "the certificate of {host} is not signed by a trusted CA; add its CA to tls.ca_file ({e})"
        ),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("the certificate of {host} has expired; renew it on the server ({e})")
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => format!(
            "the certificate of {host} is not valid yet; check the clocks of this node and the server ({e})"
        ),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "the certificate of {host} is not valid for that host name; use a name it lists in coordination_url ({e})"
        ),
        E::InvalidCertificate(_) => {
            format!("the certificate of {host} was rejected: {e}")
        }
        E::AlertReceived(A::CertificateRequired) => format!(
            "{host} requires a client certificate; set tls.cert_file and tls.key_file ({e})"
        ),
        // TLS 1.2 servers say no more than this when a certificate is missing.
        E::AlertReceived(A::HandshakeFailure) if !client_cert => format!(
            "{host} refused the TLS handshake ({e}); if it requires a client certificate, set tls.cert_file and tls.key_file"
        ),
        E::AlertReceived(
            A::UnknownCA
            | A::BadCertificate
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::AccessDenied,
        ) if client_cert => format!(
            "{host} did not accept the client certificate in tls.cert_file; use one signed by a CA the server trusts ({e})"
        ),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => format!(
            "{host} does not speak TLS ({e}); if it serves plain HTTP, use an http:// coordination_url"
        ),
        _ => format!("TLS with {host} failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_the_common_failures() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let cert = E::InvalidCertificate;
        let alert = E::AlertReceived;
        let cases = [
            (cert(C::UnknownIssuer), false, "not signed by a trusted CA"),
            (cert(C::Expired), false, "h:443 has expired"),
            (cert(C::NotValidYet), false, "check the clocks"),
            (
                cert(C::NotValidForName),
                false,
                "not valid for that host name",
            ),
            (cert(C::BadSignature), false, "was rejected"),
            (
                alert(A::CertificateRequired),
                false,
                "requires a client certificate",
            ),
            (alert(A::HandshakeFailure), false, "set tls.cert_file"),
            (alert(A::HandshakeFailure), true, "TLS with h:443 failed"),
            (
                alert(A::UnknownCA),
                true,
                "did not accept the client certificate",
            ),
            // Our client certificate expired, not the server's.
            (
                alert(A::CertificateExpired),
                true,
                "did not accept the client certificate",
            ),
            (
                E::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                false,
                "use an http:// coordination_url",
            ),
            (E::DecryptError, false, "TLS with h:443 failed"),
        ];
        for (e, client_cert, want) in cases {
            let got = explain("h:443", &e, client_cert);
            assert!(got.contains(want), "{e:?} -> {got}");
            assert!(got.contains(&e.to_string()), "keeps the cause: {got}");
        }
    }

    #[test]
    fn ca_file_errors_name_the_key() {
        let tls = Tls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Tls::default()
        };
        let e = config(&tls).unwrap_err().to_string();
        assert!(
            e.contains("tls.ca_file") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }

    /// A directory of files for one test, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("vt-tls-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const BAD_DER_CERT: &str =
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_ca_file_with_a_broken_certificate_is_refused() {
        let dir = Dir::new("ca");
        let p = dir.file("bad-der.pem", BAD_DER_CERT);
        let tls = Tls {
            ca_file: Some(p.clone()),
            ..Tls::default()
        };
        let e = config(&tls).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "tls.ca_file {} cannot be used: certificate 1 of 1",
                p.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn a_key_file_without_a_usable_key_is_refused() {
        // A PEM that parses but whose key bytes are not DER.
        let dir = Dir::new("key");
        let cert = dir.file("c.pem", BAD_DER_CERT);
        let key = dir.file(
            "k.pem",
            "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n",
        );
        let tls = Tls {
            cert_file: Some(cert),
            key_file: Some(key.clone()),
            insecure_skip_verify: true,
            ..Tls::default()
        };
        let e = config(&tls).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("tls.key_file {} cannot be used", key.display())),
            "{e}"
        );
    }
}
