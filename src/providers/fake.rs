//! A test double of a provider, for unit tests of the command path (the
//! real providers are tested against the real Docker, LXC and QEMU). It
//! has one session, `s1`, always running; exec does what the test set up.

use super::{ExecOutput, ExecSpec, Health, OutputSink, Provider, ProviderError, SessionSpec};
use crate::protocol::{ProviderKind, SessionId};
use crate::providers::{Session, SessionStatus};
use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What `exec` does.
pub(crate) enum Exec {
    /// Prints `ok` and exits 0.
    Succeed,
    /// Blocks until the test sends (or drops its sender), then succeeds.
    WaitFor(Receiver<()>),
    /// Runs until the exec's timeout, then reports it timed out.
    Hang,
    /// Panics with this message.
    Panic(&'static str),
}

pub(crate) struct FakeProvider {
    pub(crate) exec: Mutex<Exec>,
    /// How many execs started.
    pub(crate) execs: AtomicUsize,
    /// The timeout the last exec was given.
    pub(crate) last_timeout: Mutex<Option<Duration>>,
}

impl FakeProvider {
    pub(crate) fn new(exec: Exec) -> FakeProvider {
        FakeProvider {
            exec: Mutex::new(exec),
            execs: AtomicUsize::new(0),
            last_timeout: Mutex::new(None),
        }
    }

    fn session() -> Session {
        Session {
            id: "s1".into(),
            provider: ProviderKind::Docker,
            status: SessionStatus::Running,
            image: "fake".into(),
            ports: Default::default(),
            created: String::new(),
            labels: Default::default(),
            exit_code: None,
            warnings: vec![],
        }
    }
}

impl Provider for FakeProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Docker
    }

    fn health(&self) -> Health {
        Health::ok("fake", serde_json::Value::Null)
    }

    fn create(&self, _: &SessionSpec) -> Result<Session, ProviderError> {
        Err(ProviderError::Conflict("the fake has only s1".into()))
    }

    fn start(&self, _: &SessionId) -> Result<Session, ProviderError> {
        Ok(Self::session())
    }

    fn stop(&self, _: &SessionId, _: Duration) -> Result<Session, ProviderError> {
        Ok(Self::session())
    }

    fn destroy(&self, _: &SessionId) -> Result<bool, ProviderError> {
        Ok(false)
    }

    fn exec(
        &self,
        _: &SessionId,
        spec: &ExecSpec,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutput, ProviderError> {
        self.execs.fetch_add(1, Ordering::SeqCst);
        *self.last_timeout.lock().unwrap() = Some(spec.timeout);
        // Copied out first: a panic must not poison the lock.
        let what = match &*self.exec.lock().unwrap() {
            Exec::Succeed => Exec::Succeed,
            Exec::WaitFor(rx) => Exec::WaitFor(rx.clone()),
            Exec::Hang => Exec::Hang,
            Exec::Panic(why) => Exec::Panic(why),
        };
        match what {
            Exec::Succeed => {}
            Exec::WaitFor(rx) => {
                let _ = rx.recv();
            }
            Exec::Hang => {
                std::thread::sleep(spec.timeout);
                return Ok(ExecOutput {
                    timed_out: true,
                    ..ExecOutput::default()
                });
            }
            Exec::Panic(why) => panic!("{why}"),
        }
        sink.chunk(super::Stream::Stdout, b"ok\n");
        Ok(ExecOutput {
            exit_code: Some(0),
            stdout: b"ok\n".to_vec(),
            ..ExecOutput::default()
        })
    }

    fn list(&self) -> Result<Vec<Session>, ProviderError> {
        Ok(vec![Self::session()])
    }
}
