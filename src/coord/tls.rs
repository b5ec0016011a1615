//! TLS for https coordination URLs: the system roots plus `tls.ca_file`,
//! an optional client certificate for mutual TLS, and failures told apart
//! (unknown CA, expired, wrong host name) in words a user can act on.

use crate::config::Tls;
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
pub enum TlsError {
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
    NoRoots,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { what, path, source } => write!(f, "cannot read {what} {}: {source}", path.display()),
            TlsError::Pem { what, path, message } => {
                write!(f, "{what} {} is not usable PEM: {message}", path.display())
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
pub fn config(tls: &Tls) -> Result<TlsConfig, TlsError> {
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
        builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key_item)));
    }
    Ok(builder.build())
}

/// A TLS failure from ureq/rustls in words that say what to fix.
pub fn explain(host: &str, message: &str) -> String {
    let m = message;
    if m.contains("UnknownIssuer") || m.contains("unknown issuer") {
        format!("the certificate of {host} is not signed by a trusted CA; add its CA to tls.ca_file ({m})")
    } else if m.contains("expired") || m.contains("Expired") {
        format!("the certificate of {host} has expired; renew it on the server ({m})")
    } else if m.contains("not valid yet") || m.contains("NotValidYet") {
        format!("the certificate of {host} is not valid yet; check the clocks ({m})")
    } else if m.contains("not valid for name") || m.contains("NotValidForName") {
        format!("the certificate of {host} is not valid for that host name; use a name it lists in coordination_url ({m})")
    } else if m.contains("CertificateRequired") || m.contains("certificate required") {
        format!("{host} requires a client certificate; set tls.cert_file and tls.key_file ({m})")
    } else {
        format!("TLS with {host} failed: {m}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_the_common_failures() {
        assert!(
            explain("h", "rustls: invalid peer certificate: UnknownIssuer").contains("trusted CA")
        );
        assert!(explain(
            "h",
            "rustls: invalid peer certificate: certificate expired: verification time"
        )
        .contains("expired"));
        assert!(explain(
            "h",
            "invalid peer certificate: certificate not valid for name \"x\""
        )
        .contains("host name"));
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
}
