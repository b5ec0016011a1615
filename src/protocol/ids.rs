//! Identifier newtypes that can only hold valid values.
//!
//! Command ids become file names in the ledger and session ids become
//! container names and directory names, so both are checked once, here, and
//! the rest of the agent never sees an unchecked one.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Why an id was refused. Says which rule, never echoes more than a prefix
/// of a hostile value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdError {
    Empty,
    TooLong {
        max: usize,
        len: usize,
    },
    BadChar {
        what: &'static str,
        rule: &'static str,
        at: usize,
    },
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty => write!(f, "must not be empty"),
            IdError::TooLong { max, len } => {
                write!(f, "is {len} characters long; at most {max} are allowed")
            }
            IdError::BadChar { what, rule, at } => {
                write!(f, "has a character not allowed in a {what} at position {at}; it must match {rule}")
            }
        }
    }
}

impl std::error::Error for IdError {}

/// Node ids travel in URL paths: `[A-Za-z0-9._-]{1,64}`.
pub(crate) fn valid_node_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks `s` against an id rule: not empty, at most `max` bytes, and
/// `ok(position, char)` for every character.
fn check(
    s: &str,
    max: usize,
    what: &'static str,
    rule: &'static str,
    ok: impl Fn(usize, char) -> bool,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { max, len: s.len() });
    }
    match s.chars().enumerate().find(|&(i, c)| !ok(i, c)) {
        Some((at, _)) => Err(IdError::BadChar { what, rule, at }),
        None => Ok(()),
    }
}

/// A command id: 1-128 characters of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub(crate) struct CommandId(String);

impl CommandId {
    pub(crate) const RULE: &'static str = "[A-Za-z0-9._:-]{1,128}";

    pub(crate) fn parse(s: &str) -> Result<Self, IdError> {
        check(s, 128, "command id", Self::RULE, |_, c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
        })?;
        Ok(CommandId(s.to_string()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// A fresh id, `PREFIX-` and `random` in hex, for commands the CLI
    /// originates. The caller brings the randomness (this module does no
    /// I/O); hex digits are always valid.
    pub(crate) fn generated(prefix: &'static str, random: [u8; 8]) -> CommandId {
        debug_assert!(CommandId::parse(prefix).is_ok(), "{prefix}");
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        CommandId(format!("{prefix}-{hex}"))
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CommandId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CommandId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A session id: `[a-z0-9][a-z0-9_.-]{0,62}`. It is valid as a Docker
/// container name suffix, an LXC name and a directory name, and it cannot
/// be `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub(crate) struct SessionId(String);

impl SessionId {
    pub(crate) const RULE: &'static str = "[a-z0-9][a-z0-9_.-]{0,62}";

    pub(crate) fn parse(s: &str) -> Result<Self, IdError> {
        check(s, 63, "session id", Self::RULE, |i, c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || (i > 0 && matches!(c, '_' | '.' | '-'))
        })?;
        Ok(SessionId(s.to_string()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SessionId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_ids() {
        assert!(CommandId::parse("cmd_8f2c").is_ok());
        assert!(CommandId::parse("a.b:c-d_e").is_ok());
        assert_eq!(CommandId::parse(""), Err(IdError::Empty));
        assert!(matches!(
            CommandId::parse(&"x".repeat(129)),
            Err(IdError::TooLong { .. })
        ));
        for (bad, at) in [
            ("../x", 2),
            ("a/b", 1),
            ("a b", 1),
            ("a\nb", 1),
            ("a\u{0}b", 1),
            ("é", 0),
        ] {
            assert_eq!(
                CommandId::parse(bad),
                Err(IdError::BadChar {
                    what: "command id",
                    rule: CommandId::RULE,
                    at
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn session_ids() {
        assert!(SessionId::parse("web-1").is_ok());
        assert!(SessionId::parse("0a.b_c").is_ok());
        assert_eq!(SessionId::parse(""), Err(IdError::Empty));
        for (bad, at) in [
            (".", 0),
            ("..", 0),
            ("-a", 0),
            ("_a", 0),
            ("Web", 0),
            ("a/b", 1),
            ("../x", 0),
            ("a b", 1),
            ("a\tb", 1),
        ] {
            assert_eq!(
                SessionId::parse(bad),
                Err(IdError::BadChar {
                    what: "session id",
                    rule: SessionId::RULE,
                    at
                }),
                "{bad:?}"
            );
        }
        assert!(SessionId::parse(&"a".repeat(63)).is_ok());
        assert_eq!(
            SessionId::parse(&"a".repeat(64)),
            Err(IdError::TooLong { max: 63, len: 64 })
        );
    }
}
