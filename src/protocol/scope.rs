//! What a caller of the local API may do: the scopes of the contract
//! (section 6), carried by a JWT's `scope` claim or granted to the static
//! token by `api_token_scopes`.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) enum Scope {
    #[serde(rename = "session:read")]
    SessionRead,
    #[serde(rename = "session:write")]
    SessionWrite,
    #[serde(rename = "session:exec")]
    SessionExec,
    #[serde(rename = "system:read")]
    SystemRead,
    #[serde(rename = "plugin:run")]
    PluginRun,
    /// Everything, and every tenant's sessions.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub(crate) const ALL: [Scope; 6] = [
        Scope::SessionRead,
        Scope::SessionWrite,
        Scope::SessionExec,
        Scope::SystemRead,
        Scope::PluginRun,
        Scope::Admin,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scope::SessionRead => "session:read",
            Scope::SessionWrite => "session:write",
            Scope::SessionExec => "session:exec",
            Scope::SystemRead => "system:read",
            Scope::PluginRun => "plugin:run",
            Scope::Admin => "admin",
        }
    }

    /// A scope by its name; None for a name this agent does not know (a
    /// JWT may carry scopes of other services).
    pub(crate) fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The scope a command `type`.`action` needs; None for a type this
    /// agent does not know (the command fails as invalid anyway).
    pub(crate) fn needed_for(kind: &str, action: &str) -> Option<Scope> {
        Some(match (kind, action) {
            ("session", "list") | ("service", _) => Scope::SessionRead,
            ("session", "exec") => Scope::SessionExec,
            ("session", _) => Scope::SessionWrite,
            ("system", _) => Scope::SystemRead,
            ("plugin", _) => Scope::PluginRun,
            _ => return None,
        })
    }

    /// Whether holding `held` allows what `self` guards: the scope itself,
    /// or admin.
    pub(crate) fn granted_by(self, held: &[Scope]) -> bool {
        held.iter().any(|h| *h == self || *h == Scope::Admin)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_need_the_scope_of_their_action() {
        for (kind, action, scope) in [
            ("session", "list", Scope::SessionRead),
            ("service", "status", Scope::SessionRead),
            ("session", "create", Scope::SessionWrite),
            ("session", "destroy", Scope::SessionWrite),
            ("session", "exec", Scope::SessionExec),
            ("system", "health", Scope::SystemRead),
            ("plugin", "disk-usage", Scope::PluginRun),
        ] {
            assert_eq!(
                Scope::needed_for(kind, action),
                Some(scope),
                "{kind}.{action}"
            );
        }
        assert_eq!(Scope::needed_for("invalid", "invalid"), None);
        assert!(Scope::SessionExec.granted_by(&[Scope::Admin]));
        assert!(Scope::SessionExec.granted_by(&[Scope::SessionRead, Scope::SessionExec]));
        assert!(!Scope::SessionExec.granted_by(&[Scope::SessionRead, Scope::SessionWrite]));
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(Scope::parse("repo:write"), None);
    }
}
