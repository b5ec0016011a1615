//! LXC provider: sessions are system containers, driven through the
//! `lxc-*` tools.

use super::{
    probe, ExecOutput, ExecSpec, Health, OutputSink, Provider, ProviderError, Session, SessionSpec,
};
use crate::config::Config;
use crate::protocol::{ProviderKind, SessionId};
use std::time::Duration;

pub struct LxcProvider {}

impl LxcProvider {
    pub fn new(_config: &Config, _node_id: &str) -> LxcProvider {
        LxcProvider {}
    }
}

fn not_yet() -> ProviderError {
    ProviderError::Unavailable("lxc sessions are not supported by this build yet".into())
}

impl Provider for LxcProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Lxc
    }

    fn health(&self) -> Health {
        let tools = [
            "lxc-create",
            "lxc-start",
            "lxc-stop",
            "lxc-destroy",
            "lxc-attach",
            "lxc-info",
            "lxc-ls",
        ];
        let missing: Vec<&str> = tools
            .iter()
            .copied()
            .filter(|t| probe::which(t).is_none())
            .collect();
        if missing.is_empty() {
            Health::ok("lxc tools present", serde_json::Value::Null)
        } else {
            Health::down(format!(
                "lxc tools not found on PATH: {}; install the lxc package",
                missing.join(", ")
            ))
        }
    }

    fn create(&self, _spec: &SessionSpec) -> Result<Session, ProviderError> {
        Err(not_yet())
    }

    fn start(&self, _id: &SessionId) -> Result<Session, ProviderError> {
        Err(not_yet())
    }

    fn stop(&self, _id: &SessionId, _grace: Duration) -> Result<Session, ProviderError> {
        Err(not_yet())
    }

    fn destroy(&self, _id: &SessionId) -> Result<bool, ProviderError> {
        Err(not_yet())
    }

    fn exec(
        &self,
        _id: &SessionId,
        _spec: &ExecSpec,
        _sink: &mut dyn OutputSink,
    ) -> Result<ExecOutput, ProviderError> {
        Err(not_yet())
    }

    fn list(&self) -> Result<Vec<Session>, ProviderError> {
        Ok(Vec::new())
    }
}
