//! `listen`: where the local API listens, a TCP address, a Unix socket
//! (`unix:/run/vendetta/agent.sock`), or one of each as a list.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The longest socket path Linux takes (`sun_path` is 108 bytes with its
/// terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listen {
    pub(crate) tcp: Option<SocketAddr>,
    pub(crate) unix: Option<PathBuf>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            unix: None,
        }
    }
}

impl Listen {
    /// Parses one entry or several separated by commas (the form
    /// `VENDETTA_LISTEN` and `--listen` take).
    pub(crate) fn parse_list(text: &str) -> Result<Listen, String> {
        Listen::from_entries(text.split(',').map(str::trim))
    }

    fn from_entries<'a>(entries: impl Iterator<Item = &'a str>) -> Result<Listen, String> {
        let mut l = Listen {
            tcp: None,
            unix: None,
        };
        for e in entries {
            if let Some(path) = e.strip_prefix("unix:") {
                let path = socket_path(path)?;
                if l.unix.replace(path).is_some() {
                    return Err("names two Unix sockets; the API listens on at most one".into());
                }
            } else {
                let addr: SocketAddr = e.parse().map_err(|_| {
                    format!("{e:?} is not an address:port such as 127.0.0.1:8080, nor unix:/path/to/agent.sock")
                })?;
                if l.tcp.replace(addr).is_some() {
                    return Err("names two TCP addresses; the API listens on at most one".into());
                }
            }
        }
        if l.tcp.is_none() && l.unix.is_none() {
            return Err("names no address; give an address:port or unix:/path".into());
        }
        Ok(l)
    }

    /// The entries as they are written in the config.
    pub(crate) fn entries(&self) -> Vec<String> {
        let mut out: Vec<String> = self.tcp.iter().map(SocketAddr::to_string).collect();
        out.extend(self.unix.iter().map(|p| format!("unix:{}", p.display())));
        out
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.entries().join(", "))
    }
}

/// `unix:PATH` (or `unix://PATH`): absolute, short enough for a socket
/// address, plain (no `.` or `..` parts).
fn socket_path(raw: &str) -> Result<PathBuf, String> {
    let raw = raw.strip_prefix("//").unwrap_or(raw);
    let p = Path::new(raw);
    if !crate::os::mount::is_plain_absolute(p) {
        return Err(format!(
            "unix:{raw}: the socket path must be absolute, without . or .. parts"
        ));
    }
    if raw.len() > MAX_SOCKET_PATH || raw.contains('\0') {
        return Err(format!(
            "unix:{raw}: a socket path is at most {MAX_SOCKET_PATH} bytes, without NUL"
        ));
    }
    if raw.ends_with('/') {
        return Err(format!("unix:{raw}: names a directory, not a socket"));
    }
    Ok(p.to_path_buf())
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.entries().as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Listen;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address:port, unix:/path, or a list of one of each")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Listen, E> {
                Listen::from_entries(std::iter::once(v)).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Listen, A::Error> {
                let mut entries: Vec<String> = Vec::new();
                while let Some(e) = seq.next_element::<String>()? {
                    entries.push(e);
                }
                Listen::from_entries(entries.iter().map(String::as_str)).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_their_errors() {
        let l = Listen::parse_list("127.0.0.1:9000, unix:/run/vendetta/agent.sock").unwrap();
        assert_eq!(l.tcp, Some(SocketAddr::from(([127, 0, 0, 1], 9000))));
        assert_eq!(
            l.unix.as_deref(),
            Some(Path::new("/run/vendetta/agent.sock"))
        );
        assert_eq!(
            l.to_string(),
            "127.0.0.1:9000, unix:/run/vendetta/agent.sock"
        );
        assert_eq!(
            Listen::parse_list("unix:///run/a.sock")
                .unwrap()
                .unix
                .as_deref(),
            Some(Path::new("/run/a.sock"))
        );
        for (text, error) in [
            ("unix:run/a.sock", "unix:run/a.sock: the socket path must be absolute, without . or .. parts"),
            ("unix:/run/../etc/a.sock", "unix:/run/../etc/a.sock: the socket path must be absolute, without . or .. parts"),
            ("unix:/run/", "unix:/run/: names a directory, not a socket"),
            ("unix:/a,unix:/b", "names two Unix sockets; the API listens on at most one"),
            ("[::1]:1,127.0.0.1:2", "names two TCP addresses; the API listens on at most one"),
            ("nowhere", "\"nowhere\" is not an address:port such as 127.0.0.1:8080, nor unix:/path/to/agent.sock"),
        ] {
            assert_eq!(Listen::parse_list(text).unwrap_err(), error, "{text}");
        }
        let long = format!("unix:/{}", "a".repeat(107));
        assert!(Listen::parse_list(&long)
            .unwrap_err()
            .contains("at most 107 bytes"));
    }

    #[test]
    fn config_forms() {
        let one: Listen = serde_yaml::from_str("\"unix:/run/v.sock\"").unwrap();
        assert_eq!(
            serde_yaml::to_string(&one).unwrap().trim(),
            "unix:/run/v.sock"
        );
        let two: Listen = serde_yaml::from_str("[\"127.0.0.1:1\", \"unix:/run/v.sock\"]").unwrap();
        assert_eq!(two.entries().len(), 2);
        let back: Listen = serde_yaml::from_str(&serde_yaml::to_string(&two).unwrap()).unwrap();
        assert_eq!(back, two);
        assert!(serde_yaml::from_str::<Listen>("[]").is_err());
    }
}
