//! Finding, reading and parsing the config file; errors that name the
//! file, the key and the line.

use super::jwt::JwtKey;
use super::{apply_env, Config, SYSTEM_CONFIG};
use std::fmt;
use std::path::{Path, PathBuf};

/// A config that could not be loaded. Each names the file and the key.
#[derive(Debug)]
pub(crate) enum ConfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Parse {
        path: PathBuf,
        key: String,
        line: Option<usize>,
        message: String,
    },
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    Env {
        var: &'static str,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            ConfigError::Parse {
                path,
                key,
                line,
                message,
            } => {
                write!(f, "config file {}", path.display())?;
                if let Some(line) = line {
                    write!(f, ", line {line}")?;
                }
                if key.is_empty() {
                    write!(f, ": {message}")
                } else {
                    write!(f, ": key {key}: {message}")
                }
            }
            ConfigError::Invalid { path, key, message } => {
                write!(f, "config file {}: key {key}: {message}", path.display())
            }
            ConfigError::Env { var, message } => write!(f, "environment variable {var}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where a loaded config came from, for logs and `agent status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    File(PathBuf),
    Defaults,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Defaults => f.write_str("embedded defaults"),
        }
    }
}

/// A validated config plus facts derived from it.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub(crate) config: Config,
    pub(crate) source: Source,
    /// Warnings to log once logging is up (e.g. a token in a world-readable file).
    pub(crate) warnings: Vec<String>,
    /// The JWT keys, public key files read and checked.
    pub(crate) jwt_keys: Vec<super::jwt::JwtKey>,
}

/// Picks the config file: `--config`, then `VENDETTA_CONFIG`, then
/// [`SYSTEM_CONFIG`] if it exists; `None` means embedded defaults.
pub(crate) fn locate(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("VENDETTA_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let system = Path::new(SYSTEM_CONFIG);
    system.exists().then(|| system.to_path_buf())
}

/// Loads, applies environment overrides and validates.
pub(crate) fn load(flag: Option<&Path>) -> Result<Loaded, ConfigError> {
    load_with(flag, |k| std::env::var(k).ok())
}

/// `load`, with the environment read through `env` (`agent start
/// --listen` passes its flag as `VENDETTA_LISTEN` this way).
pub(crate) fn load_with(
    flag: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let (mut config, source) = match locate(flag) {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let config = parse_text(&path, &text)?;
            if config_holds_secret(&config) {
                if let Some(w) = permission_warning(&path) {
                    warnings.push(w);
                }
            }
            (config, Source::File(path))
        }
        None => (Config::default(), Source::Defaults),
    };
    apply_env(&mut config, env)?;
    let path = match &source {
        Source::File(p) => p.clone(),
        Source::Defaults => PathBuf::from("(defaults)"),
    };
    let jwt_keys = check(&path, &config)?;
    Ok(Loaded {
        config,
        source,
        warnings,
        jwt_keys,
    })
}

/// Everything a config must pass beyond parsing: [`Config::validate`], then
/// the files it names (the JWT public keys) read and checked. Returns the
/// keys.
pub(crate) fn check(path: &Path, config: &Config) -> Result<Vec<JwtKey>, ConfigError> {
    config.validate(path)?;
    super::jwt::load_keys(&config.jwt).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: e.key,
        message: e.message,
    })
}

fn config_holds_secret(c: &Config) -> bool {
    !c.auth_token.is_empty()
        || !c.api_token.is_empty()
        || !c.jwt.secret.is_empty()
        || c.jwt.keys.iter().any(|k| !k.secret.is_empty())
}

fn permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "config file {} holds a token and is readable by group or others (mode {:04o}); run: chmod 600 {}",
            path.display(),
            mode & 0o7777,
            path.display()
        )
    })
}

/// Parses YAML. A `.json` file goes through the same parser, JSON being
/// YAML's flow syntax: one deserializer (a smaller binary) and the same
/// errors, which name the key path and the line for both formats.
pub(crate) fn parse_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        // YAML forgives what JSON does not (trailing commas, comments): a
        // .json file must be JSON first.
        if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                key: String::new(),
                line: Some(e.line()),
                message: format!("not valid JSON: {}", strip_position(&e.to_string())),
            });
        }
    }
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    serde_yaml::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let full = e.to_string();
        // serde_yaml writes "path.to.key: message at line N column M".
        let (key, _) = split_path(&full);
        let message = strip_position(&full);
        ConfigError::Parse {
            path: path.to_path_buf(),
            key: refine_key(&key, &message),
            line,
            message,
        }
    })
}

/// The key path serde_yaml puts before a message, if any.
fn split_path(message: &str) -> (String, &str) {
    match message.find(": ") {
        Some(i) if i > 0 && !message[..i].contains(' ') => {
            (message[..i].to_string(), &message[i + 2..])
        }
        _ => (String::new(), message),
    }
}

/// serde reports an unknown key at its parent; name the key itself.
fn refine_key(parent: &str, message: &str) -> String {
    let named = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next());
    match named {
        Some(name) if parent.is_empty() => name.to_string(),
        Some(name) if !parent.ends_with(name) => format!("{parent}.{name}"),
        _ => parent.to_string(),
    }
}

/// Drops serde's "at line N column M" (the line is reported on its own) and
/// a leading "path: " that serde_yaml repeats.
fn strip_position(message: &str) -> String {
    let m = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    let m = match m.find(": ") {
        // serde_yaml repeats the key path first ("heartbeat: unknown field").
        Some(i) if i > 0 && !m[..i].contains(' ') => &m[i + 2..],
        _ => m,
    };
    m.to_string()
}
