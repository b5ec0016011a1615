//! The state of the link to the coordination server, as `/health`,
//! `system status` and the metrics show it.

use serde::Serialize;

/// Where the link stands. Serialised lower-case on the local API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LinkStatus {
    /// Not dialing by choice (`offline_mode`, no `coordination_url`) or
    /// because the link could not be set up (then `last_error` says why).
    Offline,
    /// Dialing, never reached the server yet.
    #[default]
    Connecting,
    Connected,
    /// Reached before, unreachable now: retrying with backoff.
    Disconnected,
    /// The server answered 401/403: not dialing until restarted.
    Refused,
}

impl LinkStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LinkStatus::Offline => "offline",
            LinkStatus::Connecting => "connecting",
            LinkStatus::Connected => "connected",
            LinkStatus::Disconnected => "disconnected",
            LinkStatus::Refused => "refused",
        }
    }
}

impl std::fmt::Display for LinkStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The link's state with what a reader needs to act on it.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct LinkState {
    pub(crate) state: LinkStatus,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) url: String,
    /// Why the link is offline by choice.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) offline_since: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) last_error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_heartbeat: Option<String>,
}

impl LinkState {
    /// The state at start: `offline` with `offline_reason`, else `connecting`.
    pub(crate) fn new(url: &str, offline_reason: Option<&str>) -> LinkState {
        LinkState {
            state: match offline_reason {
                Some(_) => LinkStatus::Offline,
                None => LinkStatus::Connecting,
            },
            url: url.to_string(),
            reason: offline_reason.unwrap_or_default().to_string(),
            ..LinkState::default()
        }
    }

    /// Healthy: connected, or offline by choice (not because setting the
    /// link up failed).
    pub(crate) fn ok(&self) -> bool {
        match self.state {
            LinkStatus::Connected => true,
            LinkStatus::Offline => self.last_error.is_empty(),
            _ => false,
        }
    }
}
