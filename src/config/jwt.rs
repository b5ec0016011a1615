//! JWT keys as the verifier uses them, made once when the config loads:
//! secrets as bytes, public key files read and unwrapped from PEM and
//! SubjectPublicKeyInfo, each key bound to its one algorithm.

use super::{Jwt, JwtAlgorithm, JwtKeyConfig};
use base64::Engine;
use std::fmt;
use std::path::Path;

/// A key ready to verify with.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct JwtKey {
    /// Empty when the key has none: it is then tried for any token of its
    /// algorithm that names no `kid`.
    pub(crate) kid: String,
    pub(crate) algorithm: JwtAlgorithm,
    /// HS256: the secret. RS256: the RSAPublicKey DER. EdDSA: the 32-byte
    /// Ed25519 public key.
    pub(crate) material: Vec<u8>,
}

impl fmt::Debug for JwtKey {
    /// Never prints the material: for HS256 it is the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// A key that cannot be used: the config key it came from, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyError {
    pub(crate) key: String,
    pub(crate) message: String,
}

/// The configured keys: the shorthand (`jwt.algorithm` with `jwt.secret`
/// or `jwt.public_key_file`) first, then `jwt.keys`. Reads the public key
/// files; `Config::validate` has already checked the combinations.
pub(crate) fn load_keys(jwt: &Jwt) -> Result<Vec<JwtKey>, KeyError> {
    let shorthand = jwt.algorithm.map(|algorithm| {
        (
            "jwt".to_string(),
            JwtKeyConfig {
                kid: String::new(),
                algorithm,
                secret: jwt.secret.clone(),
                public_key_file: jwt.public_key_file.clone(),
            },
        )
    });
    let listed = jwt
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| (format!("jwt.keys[{i}]"), k.clone()));
    shorthand
        .into_iter()
        .chain(listed)
        .map(|(at, k)| key_of(&at, &k))
        .collect()
}

fn key_of(at: &str, k: &JwtKeyConfig) -> Result<JwtKey, KeyError> {
    let material = match (k.algorithm, &k.public_key_file) {
        (JwtAlgorithm::HS256, _) => k.secret.expose().as_bytes().to_vec(),
        (algorithm, Some(path)) => public_key(path, algorithm).map_err(|message| KeyError {
            key: format!("{at}.public_key_file"),
            message,
        })?,
        (_, None) => {
            return Err(KeyError {
                key: format!("{at}.public_key_file"),
                message: "RS256 and EdDSA need a public key file".into(),
            })
        }
    };
    Ok(JwtKey {
        kid: k.kid.clone(),
        algorithm: k.algorithm,
        material,
    })
}

/// rsaEncryption, 1.2.840.113549.1.1.1
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-Ed25519, 1.3.101.112
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// Reads a PEM public key for `algorithm` and returns what ring verifies
/// with.
fn public_key(path: &Path, algorithm: JwtAlgorithm) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (label, der) = pem(&text).map_err(|m| format!("{}: {m}", path.display()))?;
    let wrong = |what: &str| {
        format!(
            "{} holds {what}, not a {} public key",
            path.display(),
            match algorithm {
                JwtAlgorithm::RS256 => "RSA",
                _ => "Ed25519",
            }
        )
    };
    match (algorithm, label.as_str()) {
        (JwtAlgorithm::RS256, "RSA PUBLIC KEY") => Ok(der),
        (_, "PUBLIC KEY") => {
            let (oid, key) = spki(&der).map_err(|m| format!("{}: {m}", path.display()))?;
            match algorithm {
                JwtAlgorithm::RS256 if oid == OID_RSA => Ok(key.to_vec()),
                JwtAlgorithm::EdDSA if oid == OID_ED25519 && key.len() == 32 => Ok(key.to_vec()),
                _ => Err(wrong("another kind of key")),
            }
        }
        (_, other) if other.contains("PRIVATE") => Err(format!(
            "{} holds a private key; give the agent only the public key (openssl pkey -pubout)",
            path.display()
        )),
        (_, other) => Err(wrong(&format!("a PEM {other:?} block"))),
    }
}

/// The first PEM block of `text`: its label and its bytes.
fn pem(text: &str) -> Result<(String, Vec<u8>), String> {
    let not_pem = || "not a PEM file (no -----BEGIN ...----- line)".to_string();
    let start = text.find("-----BEGIN ").ok_or_else(not_pem)?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----").ok_or_else(not_pem)?;
    let label = rest[..label_end].to_string();
    let body = &rest[label_end + 5..];
    let end = body
        .find(&format!("-----END {label}-----"))
        .ok_or_else(|| format!("the PEM block {label:?} has no END line"))?;
    let b64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the PEM block {label:?} is not base64: {e}"))?;
    Ok((label, der))
}

/// One DER element: (tag, contents, the rest after it).
fn tlv(der: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let bad = || "not a valid DER public key".to_string();
    let (&tag, rest) = der.split_first().ok_or_else(bad)?;
    let (&first, rest) = rest.split_first().ok_or_else(bad)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad());
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(bad());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// SubjectPublicKeyInfo: the algorithm's OID and the key bytes.
fn spki(der: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let bad = || "not a SubjectPublicKeyInfo".to_string();
    let (tag, info, _) = tlv(der)?;
    if tag != 0x30 {
        return Err(bad());
    }
    let (tag, algorithm, rest) = tlv(info)?;
    if tag != 0x30 {
        return Err(bad());
    }
    let (tag, oid, _) = tlv(algorithm)?;
    let (bits_tag, bits, _) = tlv(rest)?;
    if tag != 0x06 || bits_tag != 0x03 {
        return Err(bad());
    }
    // A BIT STRING starts with its count of unused bits, 0 for a key.
    match bits.split_first() {
        Some((0, key)) => Ok((oid, key)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl genpkey -algorithm ed25519 | openssl pkey -pubout`
    const ED_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let p =
            std::env::temp_dir().join(format!("vjwt-{}-{name}", crate::os::random::random_hex(4)));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn an_ed25519_spki_key_unwraps_to_its_32_bytes() {
        let p = write("ed.pem", ED_PEM);
        let key = public_key(&p, JwtAlgorithm::EdDSA).unwrap();
        assert_eq!(key.len(), 32);
        assert_eq!(&key[..4], &[0x19, 0xbf, 0x44, 0x09]);
        assert_eq!(
            public_key(&p, JwtAlgorithm::RS256).unwrap_err(),
            format!(
                "{} holds another kind of key, not a RSA public key",
                p.display()
            )
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn unusable_key_files_are_named_with_the_reason() {
        let private = write(
            "k.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        assert_eq!(
            public_key(&private, JwtAlgorithm::EdDSA).unwrap_err(),
            format!(
                "{} holds a private key; give the agent only the public key (openssl pkey -pubout)",
                private.display()
            )
        );
        let garbage = write("g.pem", "hello");
        assert_eq!(
            public_key(&garbage, JwtAlgorithm::RS256).unwrap_err(),
            format!(
                "{}: not a PEM file (no -----BEGIN ...----- line)",
                garbage.display()
            )
        );
        let truncated = write(
            "t.pem",
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9E\n-----END PUBLIC KEY-----\n",
        );
        assert_eq!(
            public_key(&truncated, JwtAlgorithm::EdDSA).unwrap_err(),
            format!("{}: not a valid DER public key", truncated.display())
        );
        let missing = std::path::Path::new("/nonexistent/jwt.pem");
        assert!(public_key(missing, JwtAlgorithm::EdDSA)
            .unwrap_err()
            .starts_with("cannot read /nonexistent/jwt.pem: "));
        for p in [private, garbage, truncated] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn keys_come_shorthand_first_and_never_print_their_secret() {
        let jwt = Jwt {
            algorithm: Some(JwtAlgorithm::HS256),
            secret: super::super::Secret("s".repeat(32)),
            keys: vec![JwtKeyConfig {
                kid: "k2".into(),
                algorithm: JwtAlgorithm::EdDSA,
                secret: Default::default(),
                public_key_file: None,
            }],
            ..Jwt::default()
        };
        assert_eq!(
            load_keys(&jwt).unwrap_err(),
            KeyError {
                key: "jwt.keys[0].public_key_file".into(),
                message: "RS256 and EdDSA need a public key file".into()
            }
        );
        let p = write("ed2.pem", ED_PEM);
        let mut jwt = jwt;
        jwt.keys[0].public_key_file = Some(p.clone());
        let keys = load_keys(&jwt).unwrap();
        assert_eq!(
            keys.iter()
                .map(|k| (k.kid.as_str(), k.algorithm))
                .collect::<Vec<_>>(),
            vec![("", JwtAlgorithm::HS256), ("k2", JwtAlgorithm::EdDSA)]
        );
        assert!(!format!("{keys:?}").contains("sss"));
        std::fs::remove_file(p).unwrap();
    }
}
