//! QEMU provider: sessions are VMs, controlled over QMP, with exec through
//! the guest agent.

use super::{
    probe, ExecOutput, ExecSpec, Health, OutputSink, Provider, ProviderError, Session, SessionSpec,
};
use crate::config::Config;
use crate::protocol::{ProviderKind, SessionId};
use std::time::Duration;

pub struct QemuProvider {
    binary: String,
}

impl QemuProvider {
    pub fn new(config: &Config, _node_id: &str) -> QemuProvider {
        QemuProvider {
            binary: config.qemu.binary.clone(),
        }
    }
}

fn not_yet() -> ProviderError {
    ProviderError::Unavailable("qemu sessions are not supported by this build yet".into())
}

impl Provider for QemuProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Qemu
    }

    fn health(&self) -> Health {
        match probe::which(&self.binary) {
            Some(p) => Health::ok(format!("{} present", p.display()), serde_json::Value::Null),
            None => Health::down(format!(
                "{} not found on PATH; install qemu-system-x86 or set qemu.binary",
                self.binary
            )),
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
