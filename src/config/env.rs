//! The `VENDETTA_*` environment overrides.

use super::{Config, ConfigError, LogLevel, Secret};
use crate::protocol::ProviderKind;

/// Applies the documented `VENDETTA_*` overrides. `get` reads a variable
/// (injected so tests need not touch the process environment).
pub(crate) fn apply_env(
    c: &mut Config,
    get: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(v) = get("VENDETTA_COORD_URL") {
        c.coordination_url = v;
    }
    if let Some(v) = get("VENDETTA_AUTH_TOKEN") {
        c.auth_token = Secret(v);
    }
    if let Some(v) = get("VENDETTA_LISTEN").filter(|v| !v.is_empty()) {
        c.listen = super::Listen::parse_list(&v).map_err(|message| ConfigError::Env {
            var: "VENDETTA_LISTEN",
            message,
        })?;
    }
    if let Some(v) = get("VENDETTA_PROVIDER").filter(|v| !v.is_empty()) {
        c.provider = ProviderKind::parse(&v).ok_or_else(|| ConfigError::Env {
            var: "VENDETTA_PROVIDER",
            message: format!("unknown provider {v:?}; use docker, lxc or qemu"),
        })?;
    }
    if let Some(v) = get("VENDETTA_LOG_LEVEL").filter(|v| !v.is_empty()) {
        c.log_level = LogLevel::parse(&v).ok_or_else(|| ConfigError::Env {
            var: "VENDETTA_LOG_LEVEL",
            message: format!("unknown level {v:?}; use error, warn, info, debug or trace"),
        })?;
    }
    if let Some(v) = get("VENDETTA_DEBUG_PPROF").filter(|v| !v.is_empty()) {
        c.debug_pprof = match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => {
                return Err(ConfigError::Env {
                    var: "VENDETTA_DEBUG_PPROF",
                    message: format!("{v:?} is not a boolean; use true or false"),
                })
            }
        };
    }
    Ok(())
}
