//! Tenants: a JWT's tenant claim partitions the sessions of one node.
//! A session carries its creator's tenant as the label `vendetta.tenant`;
//! a caller sees, and acts on, only the sessions of its own tenant, unless
//! it holds `admin` (or is the coordination server).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Labels under this prefix are the agent's; a command may not set them.
pub(crate) const RESERVED_LABEL_PREFIX: &str = "vendetta.";
/// The tenant a session belongs to; empty for none (the agent always
/// writes it, so that an image's own label cannot supply one).
pub(crate) const TENANT_LABEL: &str = "vendetta.tenant";
/// The tenant of a session whose labels could not be read: no tenant has
/// this name, so only callers that reach all do.
pub(crate) const UNKNOWN_TENANT: &str = "?";
/// The memory (bytes) and CPUs a session was created with, kept so that
/// tenant quotas can be counted again after a restart.
pub(crate) const MEMORY_LABEL: &str = "vendetta.memory";
pub(crate) const CPUS_LABEL: &str = "vendetta.cpus";

/// A tenant's name: 1 to 64 of `A-Z a-z 0-9 . _ -`, so it is safe as a
/// label value, in a log line and in a file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub(crate) struct Tenant(String);

impl Tenant {
    pub(crate) fn parse(s: &str) -> Result<Tenant, &'static str> {
        if s.is_empty() || s.len() > 64 {
            return Err("a tenant name is 1 to 64 characters");
        }
        // Also a directory name under the workspace roots: never . or ..
        if !s.as_bytes()[0].is_ascii_alphanumeric() {
            return Err("a tenant name starts with a letter or digit");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err("a tenant name has only letters, digits, '.', '_' and '-'");
        }
        Ok(Tenant(s.to_string()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Tenant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Tenant::parse(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

/// Whose sessions and commands a caller reaches: its tenant (None: the
/// untenanted, which is where the coordination server's sessions live)
/// and whether it reaches every tenant's as well.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tenancy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tenant: Option<Tenant>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) all: bool,
}

impl Tenancy {
    /// The coordination server and `admin` callers without a tenant.
    pub(crate) fn everything() -> Tenancy {
        Tenancy {
            tenant: None,
            all: true,
        }
    }

    /// Whether something of tenant `owner` is within reach.
    pub(crate) fn reaches(&self, owner: Option<&str>) -> bool {
        self.all || self.tenant.as_ref().map(Tenant::as_str) == owner
    }

    /// Whether a command sent by `sender` is within reach (its result, a
    /// repeat of its id): every command for a caller that reaches all;
    /// otherwise those of callers of the same tenant that did not, since
    /// an admin's command may concern any tenant's session.
    pub(crate) fn reaches_command(&self, sender: &Tenancy) -> bool {
        self.all || (!sender.all && self.tenant == sender.tenant)
    }

    /// Whether a session with these labels is within reach.
    pub(crate) fn reaches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reaches(tenant_of(labels))
    }

    pub(crate) fn tenant_str(&self) -> Option<&str> {
        self.tenant.as_ref().map(Tenant::as_str)
    }
}

/// The tenant a session's labels name; an empty label is none.
pub(crate) fn tenant_of(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels
        .get(TENANT_LABEL)
        .map(String::as_str)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names() {
        assert_eq!(
            Tenant::parse("team-a.dev_1").unwrap().as_str(),
            "team-a.dev_1"
        );
        assert_eq!(
            Tenant::parse("").unwrap_err(),
            "a tenant name is 1 to 64 characters"
        );
        assert!(Tenant::parse(&"a".repeat(65)).is_err());
        for bad in [".", "..", ".hidden", "-x", "_x"] {
            assert_eq!(
                Tenant::parse(bad).unwrap_err(),
                "a tenant name starts with a letter or digit",
                "{bad:?}"
            );
        }
        for bad in ["a b", "a/b", "x/../y", "a\nb", "aé", "a\"b"] {
            assert_eq!(
                Tenant::parse(bad).unwrap_err(),
                "a tenant name has only letters, digits, '.', '_' and '-'",
                "{bad:?}"
            );
        }
        let e = serde_json::from_str::<Tenant>("\"a/b\"").unwrap_err();
        assert!(
            e.to_string().starts_with("\"a/b\": a tenant name has only"),
            "{e}"
        );
    }

    #[test]
    fn reach() {
        let a = Tenancy {
            tenant: Some(Tenant::parse("a").unwrap()),
            all: false,
        };
        assert!(a.reaches(Some("a")));
        assert!(!a.reaches(Some("b")));
        assert!(!a.reaches(None), "a tenant does not reach the untenanted");
        let none = Tenancy::default();
        assert!(none.reaches(None));
        assert!(!none.reaches(Some("a")));
        assert!(Tenancy::everything().reaches(Some("a")));
        let admin_of_a = Tenancy {
            all: true,
            ..a.clone()
        };
        assert!(admin_of_a.reaches(Some("b")) && admin_of_a.reaches(None));
        let labels = [(TENANT_LABEL.to_string(), "a".to_string())].into();
        assert!(admin_of_a.reaches_labels(&labels));
        assert!(!none.reaches_labels(&labels));
        assert!(none.reaches_labels(&BTreeMap::new()));
        let empty = [(TENANT_LABEL.to_string(), String::new())].into();
        assert!(none.reaches_labels(&empty), "an empty label is no tenant");
        let unknown = [(TENANT_LABEL.to_string(), UNKNOWN_TENANT.to_string())].into();
        assert!(!none.reaches_labels(&unknown) && !a.reaches_labels(&unknown));
        assert!(Tenancy::everything().reaches_labels(&unknown));
        // Commands: an admin's are out of a tenant's reach, even its own
        // tenant's admin.
        assert!(a.reaches_command(&a));
        assert!(!a.reaches_command(&admin_of_a));
        assert!(!a.reaches_command(&none));
        assert!(!none.reaches_command(&Tenancy::everything()));
        assert!(none.reaches_command(&Tenancy::default()));
        assert!(Tenancy::everything().reaches_command(&a));
    }

    #[test]
    fn stored_form() {
        assert_eq!(serde_json::to_string(&Tenancy::default()).unwrap(), "{}");
        let t: Tenancy = serde_json::from_str(r#"{"tenant":"a","all":true}"#).unwrap();
        assert_eq!(t.tenant_str(), Some("a"));
        assert!(t.all);
        assert!(serde_json::from_str::<Tenancy>(r#"{"tenant":"a b"}"#).is_err());
    }
}
