//! The command path end to end, in process: submit → dedupe → policy →
//! queue → worker → provider → ledger/spool → events, with a fake
//! provider (`providers::fake`) through the provider registry.

use super::intake::Requester;
use super::intake::{Refusal, Submitted};
use super::threads::{self, Control, Thread};
use super::{workers, Opened, Runtime};
use crate::config::{self, Config};
use crate::protocol::result::Status;
use crate::protocol::tenant::Tenancy;
use crate::protocol::{Code, Command, CommandResult};
use crate::providers::fake::{Exec, FakeProvider};
use crate::providers::Registry;
use crate::store::ledger::{Found, State};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A runtime on a fresh cache dir with the fake as its only provider;
/// workers run once `start` is called. Stops its workers and removes the
/// dir on drop.
struct Harness {
    rt: Arc<Runtime>,
    jobs: Receiver<super::intake::Job>,
    unfinished: Vec<crate::store::ledger::Unfinished>,
    fake: Arc<FakeProvider>,
    dir: PathBuf,
    shutdown: Option<Sender<()>>,
    shutdown_rx: Receiver<()>,
    control: (Sender<Control>, Receiver<Control>),
    threads: Vec<Thread>,
}

impl Harness {
    fn new(fake: FakeProvider, yaml: &str) -> Harness {
        let dir = std::env::temp_dir().join(format!(
            "vrt-{}-{}",
            std::process::id(),
            crate::os::random::random_hex(4)
        ));
        Harness::open(Arc::new(fake), yaml, dir)
    }

    /// Opens a runtime over `dir` (a second start over the same state).
    fn open(fake: Arc<FakeProvider>, yaml: &str, dir: PathBuf) -> Harness {
        let mut cfg: Config = config::parse_text(std::path::Path::new("t.yaml"), yaml).unwrap();
        cfg.cache_dir = Some(dir.clone());
        cfg.validate(std::path::Path::new("t.yaml")).unwrap();
        let loaded = config::Loaded {
            config: cfg,
            source: config::Source::Defaults,
            warnings: Vec::new(),
            jwt_keys: Vec::new(),
        };
        let provider = fake.clone();
        let Opened {
            runtime,
            jobs,
            unfinished,
        } = Runtime::with_registry(&loaded, move |_, _| Registry::new(vec![provider])).unwrap();
        let (shutdown, shutdown_rx) = bounded(0);
        Harness {
            rt: runtime,
            jobs,
            unfinished,
            fake,
            dir,
            shutdown: Some(shutdown),
            shutdown_rx,
            control: bounded(16),
            threads: Vec::new(),
        }
    }

    fn start(&mut self) {
        self.threads = workers::spawn(&self.rt, &self.jobs, &self.shutdown_rx, &self.control.0)
            .expect("spawn workers");
        let unfinished = std::mem::take(&mut self.unfinished);
        super::intake::recover(&self.rt, unfinished);
    }

    /// The agent's shutdown, up to where the API answers: stop intake,
    /// tell the workers, drop what is still queued.
    fn shut_down(&mut self) {
        self.rt.stop_accepting();
        self.shutdown.take();
        while self.jobs.try_recv().is_ok() {}
    }

    fn join(&mut self) {
        self.shutdown.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        let joined = threads::join_all(&mut self.threads, deadline, &self.control.1);
        assert!(joined.stuck.is_empty(), "stuck: {:?}", joined.stuck);
    }

    fn execs(&self) -> usize {
        self.fake.execs.load(Ordering::SeqCst)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.join();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A caller of the local API, as the tests send commands.
fn api() -> Requester {
    Requester::api("api_token".into(), Tenancy::everything(), None)
}

fn command(v: serde_json::Value) -> Command {
    crate::protocol::command::from_value(v).unwrap()
}

fn exec(id: &str, params: serde_json::Value) -> Command {
    let mut p = json!({"session_id": "s1", "command": ["true"]});
    if let (Some(p), Some(extra)) = (p.as_object_mut(), params.as_object()) {
        p.extend(extra.clone());
    }
    command(json!({"id": id, "type": "session", "action": "exec", "params": p}))
}

fn queued(s: Submitted) -> Receiver<CommandResult> {
    match s {
        Submitted::Queued(Some(rx)) => rx,
        other => panic!("expected queued with a reply, got {other:?}"),
    }
}

/// The result a submission answered with at once, and whether it was a
/// stored one.
fn done(s: Submitted) -> (CommandResult, bool) {
    match s {
        Submitted::Done { result, replayed } => (*result, replayed),
        other => panic!("expected an answer at once, got {other:?}"),
    }
}

fn refused(s: Submitted) -> Refusal {
    match s {
        Submitted::Refused(why) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn result(rx: &Receiver<CommandResult>) -> CommandResult {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("a result within 10 s")
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_repeated_id_runs_once_and_answers_with_the_stored_result() {
    let (release, gate) = bounded::<()>(0);
    let mut h = Harness::new(FakeProvider::new(Exec::WaitFor(gate)), "workers: 2\n");
    h.start();
    let first = queued(h.rt.submit(exec("c1", json!({})), api(), true));
    wait_until("the exec started", || h.execs() == 1);
    match h.rt.submit(exec("c1", json!({})), api(), true) {
        Submitted::InProgress(state) => assert_eq!(state, State::Running),
        other => panic!("expected in progress, got {other:?}"),
    }
    drop(release);
    let r = result(&first);
    assert_eq!(
        (r.status, r.exit_code, r.output.as_str()),
        (Status::Success, 0, "ok\n")
    );
    let (stored, replayed) = done(h.rt.submit(exec("c1", json!({})), api(), true));
    assert!(replayed);
    assert_eq!(stored, r);
    assert_eq!(h.execs(), 1, "the provider ran it once");
}

#[test]
fn policy_refuses_before_anything_runs_and_the_refusal_is_stored() {
    let mut h = Harness::new(
        FakeProvider::new(Exec::Succeed),
        "allowed_commands: [\"system.*\"]\n",
    );
    h.start();
    let (r, replayed) = done(h.rt.submit(exec("p1", json!({})), api(), true));
    assert!(!replayed);
    assert_eq!(
        (r.status, r.code.clone()),
        (Status::Rejected, Some(Code::Rejected))
    );
    assert_eq!(
        r.error,
        "session.exec is not in allowed_commands on this node"
    );
    assert_eq!(h.execs(), 0);
    let id = crate::protocol::CommandId::parse("p1").unwrap();
    assert!(
        matches!(h.rt.ledger.lookup(&id, &Tenancy::everything()), Some(Found::Done(stored)) if *stored == r)
    );
}

/// The link and the API meet the same policy: a server's exec of a
/// program outside exec.allowed_programs is refused like an API caller's,
/// and its refusal is spooled for the server.
#[test]
fn the_coordination_server_meets_the_same_policy() {
    let mut h = Harness::new(
        FakeProvider::new(Exec::Succeed),
        "exec:\n  allowed_programs: [sh]\n",
    );
    h.start();
    let want = "params.command: \"true\" is not in exec.allowed_programs (sh)";
    for (id, from) in [("srv", super::intake::Requester::server()), ("api", api())] {
        let (r, _) = done(h.rt.submit(exec(id, json!({})), from, true));
        assert_eq!(
            (r.status, r.error.as_str()),
            (Status::Rejected, want),
            "{id}"
        );
    }
    assert!(
        h.rt.ledger.report("srv").is_some(),
        "the server gets its refusal"
    );
    assert!(h.rt.ledger.report("api").is_none());
    assert_eq!(h.execs(), 0);
}

#[test]
fn a_full_queue_refuses_and_forgets_so_the_id_can_come_again() {
    let (release, gate) = bounded::<()>(0);
    let mut h = Harness::new(
        FakeProvider::new(Exec::WaitFor(gate)),
        "workers: 1\nqueue_size: 1\n",
    );
    h.start();
    let (_, events) = h.rt.events.subscribe(None, &Tenancy::everything());
    let a = queued(h.rt.submit(exec("a", json!({})), api(), true));
    wait_until("a runs", || h.execs() == 1);
    let b = queued(h.rt.submit(exec("b", json!({})), api(), true));
    assert_eq!(
        refused(h.rt.submit(exec("c", json!({})), api(), true)),
        Refusal::QueueFull
    );
    let c = crate::protocol::CommandId::parse("c").unwrap();
    assert!(
        h.rt.ledger.lookup(&c, &Tenancy::everything()).is_none(),
        "a refused id is not kept"
    );
    let refused: Vec<serde_json::Value> = events
        .try_iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .filter(|e: &serde_json::Value| e["id"] == "c")
        .collect();
    assert_eq!(refused.len(), 2, "queued, then refused: {refused:?}");
    assert_eq!(refused[1]["state"], "refused");
    assert_eq!(refused[1]["reason"], "queue_full");
    drop(release);
    assert_eq!(result(&a).status, Status::Success);
    assert_eq!(result(&b).status, Status::Success);
    let c = queued(h.rt.submit(exec("c", json!({})), api(), true));
    assert_eq!(
        result(&c).status,
        Status::Success,
        "the id runs once there is room"
    );
}

#[test]
fn an_exec_past_its_timeout_is_a_timeout_result_and_timeouts_are_capped() {
    let mut h = Harness::new(
        FakeProvider::new(Exec::Hang),
        "command_timeout: 1s\nmax_command_timeout: 2s\n",
    );
    h.start();
    let rx = queued(h.rt.submit(exec("t1", json!({"timeout": "50ms"})), api(), true));
    let r = result(&rx);
    assert_eq!(
        (r.status, r.code.clone()),
        (Status::Timeout, Some(Code::Timeout))
    );
    assert_eq!(r.error, "exec timed out after 50ms and was killed");
    assert_eq!(r.data["timed_out"], true);
    *h.fake.exec.lock().unwrap() = Exec::Succeed;
    let rx = queued(h.rt.submit(exec("t2", json!({"timeout": "1h"})), api(), true));
    assert_eq!(result(&rx).status, Status::Success);
    assert_eq!(
        *h.fake.last_timeout.lock().unwrap(),
        Some(Duration::from_secs(2)),
        "an hour is capped at max_command_timeout"
    );
}

#[test]
fn a_panic_in_a_provider_is_a_failed_result_and_the_worker_lives_on() {
    let mut h = Harness::new(
        FakeProvider::new(Exec::Panic("fake provider bug")),
        "workers: 1\n",
    );
    h.start();
    let r = result(&queued(h.rt.submit(exec("x1", json!({})), api(), true)));
    assert_eq!(
        (r.status, r.code.clone()),
        (Status::Failed, Some(Code::Internal))
    );
    assert_eq!(
        r.error,
        "internal error while running the command (fake provider bug); the agent keeps running, please report this"
    );
    *h.fake.exec.lock().unwrap() = Exec::Succeed;
    let r = result(&queued(h.rt.submit(exec("x2", json!({})), api(), true)));
    assert_eq!(r.status, Status::Success, "the one worker still serves");
    assert!(h.control.1.try_recv().is_err(), "no thread died");
}

#[test]
fn a_command_queued_at_shutdown_is_kept_and_runs_at_the_next_start() {
    let (release, gate) = bounded::<()>(0);
    let mut h = Harness::new(FakeProvider::new(Exec::WaitFor(gate)), "workers: 1\n");
    h.start();
    let a = queued(h.rt.submit(exec("a", json!({})), api(), true));
    wait_until("a runs", || h.execs() == 1);
    let b = queued(h.rt.submit(exec("b", json!({})), Requester::server(), true));
    h.shut_down();
    assert!(
        matches!(
            b.recv_timeout(Duration::from_secs(5)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        ),
        "the waiter on a dropped job hears at once"
    );
    assert_eq!(
        refused(h.rt.submit(exec("c", json!({})), api(), true)),
        Refusal::ShuttingDown
    );
    drop(release);
    assert_eq!(
        result(&a).status,
        Status::Success,
        "the command in hand finishes"
    );
    h.join();
    let b_id = crate::protocol::CommandId::parse("b").unwrap();
    assert!(h.rt.ledger.journaled(&b_id));

    // The next start over the same state runs b, once, and spools its
    // result for the server it came from.
    let (fake, dir) = (h.fake.clone(), h.dir.clone());
    *fake.exec.lock().unwrap() = Exec::Succeed;
    let mut next = Harness::open(fake, "workers: 1\n", dir);
    assert_eq!(next.unfinished.len(), 1);
    assert_eq!(next.unfinished[0].id, "b");
    next.start();
    // The spool is written after the ledger: once it has b, both do.
    wait_until("b ran", || {
        next.rt.ledger.reports().contains(&"b".to_string())
    });
    let Some(Found::Done(r)) = next.rt.ledger.lookup(&b_id, &Tenancy::everything()) else {
        unreachable!()
    };
    assert_eq!(r.status, Status::Success);
    assert_eq!(next.execs(), 2, "a before the stop, b after it");
    assert_eq!(next.rt.ledger.reports(), vec!["b".to_string()]);
}

#[test]
fn an_unknown_session_and_a_bad_field_fail_with_their_codes() {
    let mut h = Harness::new(FakeProvider::new(Exec::Succeed), "");
    h.start();
    let missing = exec("m1", json!({"session_id": "nope"}));
    let r = result(&queued(h.rt.submit(missing, api(), true)));
    assert_eq!(
        (r.status, r.code.clone()),
        (Status::Failed, Some(Code::NotFound))
    );
    assert_eq!(
        r.error,
        "no session nope on this node; `session list` shows the ones there are"
    );
    let bad = command(
        json!({"id": "m2", "type": "session", "action": "exec", "params": {"session_id": "s1"}}),
    );
    let (r, _) = done(h.rt.submit(bad, api(), true));
    assert_eq!(r.code, Some(Code::Invalid));
    assert_eq!(r.error, "params.command: is required");
    assert_eq!(h.execs(), 0);
}

/// Another tenant's destroy of a session still being created (its id is
/// learnt from "is being created by another command") says it does not
/// exist and leaves the creator's sealed workspace in place.
#[test]
fn a_destroy_leaves_the_seal_of_a_create_in_flight() {
    use crate::protocol::tenant::Tenant;
    let ws = std::env::temp_dir().join(format!("vrt-ws-{}", crate::os::random::random_hex(4)));
    std::fs::create_dir_all(ws.join("a/dir")).unwrap();
    let h = Harness::new(
        FakeProvider::new(Exec::Succeed),
        &format!("workspace_roots: [{}]\n", ws.display()),
    );
    let id = crate::protocol::SessionId::parse("victim").unwrap();
    let creating =
        h.rt.sessions
            .reserve("victim", super::sessions::Share::default(), 10, None)
            .unwrap();
    let sealed = h.rt.workspaces.seal(&id, &ws.join("a/dir"), None).unwrap();
    let b = Tenancy {
        tenant: Some(Tenant::parse("b").unwrap()),
        all: false,
    };
    let destroy = command(json!({"id": "d1", "type": "session", "action": "destroy",
        "params": {"session_id": "victim"}}));
    let r = super::dispatch::execute(&h.rt, &destroy, &b, &mut crate::providers::output::Discard);
    assert_eq!(r.status, Status::Success, "{r:?}");
    assert_eq!(
        r.data,
        json!({"id": "victim", "destroyed": false, "existed": false})
    );
    assert!(
        crate::os::mount::is_mount_point(&sealed),
        "the seal is still there"
    );
    let again = h.rt.workspaces.seal(
        &crate::protocol::SessionId::parse("thief").unwrap(),
        &ws.join("a/dir"),
        None,
    );
    assert_eq!(
        again.unwrap_err().code,
        Code::Rejected,
        "still sealed for its creator"
    );
    drop(creating);
    h.rt.workspaces.release("victim");
    std::fs::remove_dir_all(&ws).unwrap();
}
