//! `vendetta agent connect URL [--token T]`: proves the server answers
//! with a real registration, then writes `coordination_url` (and
//! `auth_token`) into the config file: atomically, mode 0600, every other
//! line (and comment) of a YAML file kept as it was.

use super::client::{CoordClient, CoordError};
use super::node;
use crate::config::{self, Config, ConfigError};
use crate::store::StoreError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug)]
pub(crate) enum ConnectError {
    Config(ConfigError),
    Store(StoreError),
    Server(CoordError),
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Config(e) => write!(f, "{e}"),
            ConnectError::Store(e) => write!(f, "{e}"),
            ConnectError::Server(e) if e.refused() => {
                write!(
                    f,
                    "the server refused the registration: {e}; pass the right token with --token"
                )
            }
            ConnectError::Server(e @ CoordError::Setup(_)) => {
                write!(
                    f,
                    "cannot set up the connection, the config was not changed: {e}"
                )
            }
            ConnectError::Server(e) => {
                write!(f, "registration failed, the config was not changed: {e}")
            }
            ConnectError::Write { path, source } => {
                write!(f, "cannot write config file {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// What `connect` did, for the CLI to print.
pub(crate) struct Connected {
    pub(crate) path: PathBuf,
    pub(crate) node_id: String,
    pub(crate) status: u16,
    pub(crate) created_file: bool,
    pub(crate) wrote_token: bool,
    pub(crate) offline_mode: bool,
}

pub(crate) fn connect(
    flag: Option<&Path>,
    url: &str,
    token: Option<&str>,
) -> Result<Connected, ConnectError> {
    let path = config::locate(flag).unwrap_or_else(|| PathBuf::from(config::SYSTEM_CONFIG));
    let (old, created_file) = match std::fs::read_to_string(&path) {
        Ok(t) => (t, false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), true),
        Err(source) => return Err(ConnectError::Config(ConfigError::Read { path, source })),
    };
    // A file that does not load is never edited: a JSON edit starts from
    // the parsed document, and would otherwise start from nothing.
    if !old.trim().is_empty() {
        config::parse_text(&path, &old).map_err(ConnectError::Config)?;
    }
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let mut text = set_key(&old, "coordination_url", url, is_json);
    if let Some(t) = token {
        text = set_key(&text, "auth_token", t, is_json);
    }
    // The edited file must load like any other before it is written.
    let mut cfg: Config = config::parse_text(&path, &text).map_err(ConnectError::Config)?;
    cfg.validate(&path).map_err(ConnectError::Config)?;
    config::apply_env(&mut cfg, |k| {
        (k != "VENDETTA_COORD_URL" && k != "VENDETTA_AUTH_TOKEN")
            .then(|| std::env::var(k).ok())
            .flatten()
    })
    .map_err(ConnectError::Config)?;

    let (_, node_id, name) =
        crate::store::node::identity(&cfg, &|| crate::runtime::node_witnesses(&cfg))
            .map_err(ConnectError::Store)?;
    let address = node::local_address(url);
    let registry = crate::providers::Registry::from_config(&cfg, &node_id);
    let facts = node::NodeFacts::new(
        &cfg,
        &node_id,
        &name,
        &address,
        &registry,
        std::time::SystemTime::now(),
    );
    let client = CoordClient::new(&cfg).map_err(ConnectError::Server)?;
    let reply = client
        .call(
            "POST",
            "/api/v1/nodes",
            Some(&node::document(&facts)),
            Duration::from_secs(15),
        )
        .map_err(ConnectError::Server)?;

    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ConnectError::Write {
            path: path.clone(),
            source,
        })?;
    }
    crate::os::fs::write_atomic(&path, text.as_bytes(), 0o600).map_err(|source| {
        ConnectError::Write {
            path: path.clone(),
            source,
        }
    })?;
    Ok(Connected {
        path,
        node_id,
        status: reply.status,
        created_file,
        wrote_token: token.is_some(),
        offline_mode: cfg.offline_mode,
    })
}

/// Sets a top-level key. YAML: replaces the key's line (or appends one),
/// leaving every other line alone. JSON: rewrites the document; text that
/// is not a JSON object is replaced, so callers check it parses first.
pub(crate) fn set_key(text: &str, key: &str, value: &str, is_json: bool) -> String {
    let quoted = serde_json::Value::from(value).to_string();
    if is_json {
        let mut doc: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|_| serde_json::json!({}));
        if !doc.is_object() {
            doc = serde_json::json!({});
        }
        doc[key] = serde_json::Value::from(value);
        return serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
    }
    let line = format!("{key}: {quoted}");
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            let is_key = l
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'));
            if is_key && !found {
                found = true;
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(line);
    }
    // Keep the file's line ends (lines() strips a CR too).
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut s = out.join(eol);
    s.push_str(eol);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_edit_keeps_other_lines_and_comments() {
        let old = "# my agent\ncoordination_url: \"\"  # set by connect\nlisten: 127.0.0.1:9000 # api\nlabels:\n  coordination_url_note: x\n";
        let new = set_key(old, "coordination_url", "https://c:3001", false);
        assert_eq!(
            new,
            "# my agent\ncoordination_url: \"https://c:3001\"\nlisten: 127.0.0.1:9000 # api\nlabels:\n  coordination_url_note: x\n"
        );
        let new = set_key(&new, "auth_token", "t\"ok", false);
        assert!(new.ends_with("auth_token: \"t\\\"ok\"\n"), "{new}");
        let parsed = config::parse_text(Path::new("a.yaml"), &new).unwrap();
        assert_eq!(parsed.auth_token.expose(), "t\"ok");
    }

    #[test]
    fn yaml_edit_keeps_crlf_line_ends_and_lookalike_keys() {
        let old = "# hi\r\ncoordination_url_old: x\r\ncoordination_url : \"\"\r\nworkers: 2";
        let new = set_key(old, "coordination_url", "http://c", false);
        assert_eq!(
            new,
            "# hi\r\ncoordination_url_old: x\r\ncoordination_url: \"http://c\"\r\nworkers: 2\r\n"
        );
    }

    #[test]
    fn json_edit() {
        let new = set_key(
            "{\"listen\": \"127.0.0.1:1\"}",
            "coordination_url",
            "http://c",
            true,
        );
        let v: serde_json::Value = serde_json::from_str(&new).unwrap();
        assert_eq!(v["coordination_url"], "http://c");
        assert_eq!(v["listen"], "127.0.0.1:1");
    }
}
