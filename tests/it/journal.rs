//! The journal: kill -9 at every durability point, replay order after a
//! crash, a result that cannot be stored, a torn tail, a damaged node id,
//! and a caller that would fill the disk with its parameters.

use crate::docker::{Sessions, IMAGE};
use crate::runtime::{fill, SmallDisk};
use crate::util::{create_started, exec, failed, next_id, ok, parse_raw, wait_until, Agent, TOKEN};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn docker_config(extra: &str) -> String {
    format!("docker:\n  image: {IMAGE}\n{extra}")
}

/// Posts `command` with `?async=true`; the status, or None when the agent
/// died before answering (a crash point on the way).
fn submit_or_crash(a: &Agent, command: &Value) -> Option<u16> {
    let body = command.to_string();
    let request = format!(
        "POST /api/v1/commands?async=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(("127.0.0.1", a.port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    s.write_all(request.as_bytes()).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    if out.is_empty() {
        return None;
    }
    Some(parse_raw(&String::from_utf8_lossy(&out)).0)
}

/// An exec that appends its name to /log in the session: what ran, in
/// which order, and how often, is in the file.
fn append(id: &str, session: &str) -> Value {
    json!({"id": id, "type": "session", "action": "exec",
           "params": {"session_id": session, "command": ["sh", "-c", format!("echo {id} >> /log")]}})
}

fn ran(a: &Agent, session: &str) -> Vec<String> {
    let r = exec(
        a,
        session,
        json!({"command": ["sh", "-c", "cat /log 2>/dev/null; true"]}),
    );
    ok(&r)["stdout"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// At each point where the journal makes something durable, the agent is
/// killed (SIGKILL, by `VENDETTA_CRASH_AT`) while four execs are queued
/// behind one worker. After the restart: every command that was answered
/// 202 has a result; each ran at most once and in acceptance order; one
/// killed after its start was flushed is reported `agent_restarted` and
/// did not run; one killed after its result was flushed keeps it.
#[test]
fn kill9_at_every_durability_point_runs_each_command_at_most_once_in_order() {
    for point in ["intake", "start", "result"] {
        let g = Sessions::new(&format!("crash-{point}"));
        let mut a = Agent::configure(&format!("crash-{point}"), &docker_config("workers: 1\n"));
        let s = g.id("s");
        a.spawn();
        a.wait_ready();
        create_started(&a, &s, json!({}));
        a.stop();
        a.spawn_with(&[("VENDETTA_CRASH_AT", &format!("{point}:2"))]);
        a.wait_ready();
        let ids: Vec<String> = (1..=4)
            .map(|i| format!("{point}-e{i}-{}", next_id()))
            .collect();
        let answers: Vec<Option<u16>> = ids
            .iter()
            .map(|id| submit_or_crash(&a, &append(id, &s)))
            .collect();
        a.wait_crash();
        let log = a.log();
        assert!(log.contains(&format!("VENDETTA_CRASH_AT={point}")), "{log}");
        a.restart();
        let mut results = Vec::new();
        for (id, answer) in ids.iter().zip(&answers) {
            match answer {
                Some(202) => results.push(Some(a.wait_result(id, Duration::from_secs(30)))),
                Some(other) => panic!("{point}: {id} was answered {other}"),
                // Never acknowledged: it may be lost, or have run once.
                None => {
                    let (status, r) = a.command(id);
                    assert!(
                        matches!(status, 200 | 202 | 404),
                        "{point}: {id}: {status} {r}"
                    );
                    results
                        .push((status != 404).then(|| a.wait_result(id, Duration::from_secs(30))));
                }
            }
        }
        let lines = ran(&a, &s);
        // At most once each, in the order accepted.
        let mut expected_order: Vec<&String> = ids.iter().filter(|id| lines.contains(id)).collect();
        expected_order.dedup();
        assert_eq!(
            lines.iter().collect::<Vec<_>>(),
            expected_order,
            "{point}: {lines:?}"
        );
        for (id, r) in ids.iter().zip(&results) {
            let Some(r) = r else { continue };
            if r["code"] == "agent_restarted" {
                // Its effects are unknown: it may have run before the
                // kill (once at most, as the order check above shows).
                failed(r, "agent_restarted", "agent restarted during execution");
            } else {
                ok(r);
                assert!(
                    lines.contains(id),
                    "{point}: {id} succeeded but did not run: {r}"
                );
            }
        }
        match point {
            "intake" => assert_eq!(answers[0], Some(202), "the first 202 came before the crash"),
            "start" => {
                failed(
                    results[1].as_ref().expect("e2 was acknowledged"),
                    "agent_restarted",
                    "agent restarted during execution: the command may have run",
                );
                assert_eq!(lines, [ids[0].clone(), ids[2].clone(), ids[3].clone()]);
            }
            "result" => {
                assert_eq!(
                    lines, ids,
                    "e2's result was stored before the crash: nothing runs twice"
                );
            }
            _ => unreachable!(),
        }
        a.stop();
    }
}

/// Three sessions' create, start, exec and destroy wait behind a long
/// exec on one worker; the agent is killed. It comes back with four
/// workers: the queued commands run in the order they were accepted and
/// no session's commands overtake each other, so every one succeeds and
/// no container is left behind.
#[test]
fn after_a_crash_queued_commands_replay_in_order_and_sessions_never_overtake() {
    let g = Sessions::new("replay");
    let mut a = Agent::configure("replay", &docker_config("workers: 1\n"));
    a.spawn();
    a.wait_ready();
    let p = g.id("p");
    create_started(&a, &p, json!({}));
    let blocker = format!("block-{}", next_id());
    a.submit(&json!({"id": blocker, "type": "session", "action": "exec",
        "params": {"session_id": p, "command": ["sleep", "600"]}}));
    assert!(wait_until(Duration::from_secs(30), || a
        .command(&blocker)
        .1["status"]
        == "running"));
    let mut ids = Vec::new();
    for name in ["o1", "o2", "o3"] {
        let s = g.id(name);
        for (action, params) in [
            ("create", json!({"session_id": s})),
            ("start", json!({"session_id": s})),
            ("exec", json!({"session_id": s, "command": ["true"]})),
            ("destroy", json!({"session_id": s})),
        ] {
            let id = format!("{name}-{action}-{}", next_id());
            a.submit(&json!({"id": id, "type": "session", "action": action, "params": params}));
            ids.push(id);
        }
    }
    a.kill9();
    let yaml = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace("workers: 1", "workers: 4");
    std::fs::write(&a.config, yaml).unwrap();
    a.restart();
    failed(
        &a.wait_result(&blocker, Duration::from_secs(30)),
        "agent_restarted",
        "agent restarted during execution",
    );
    for id in &ids {
        ok(&a.wait_result(id, Duration::from_secs(60)));
    }
    let left: Vec<String> = crate::util::sessions(&a, "docker")
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .filter(|id| id != &p && id.starts_with(&g.id("")))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    a.stop();
}

/// With the disk full, an exec whose result does not fit is answered with
/// code `not_durable` (it ran; its result is not stored), kept in memory,
/// and stored once there is room: after a crash it is still its result,
/// not "interrupted".
#[test]
fn a_result_that_cannot_be_stored_is_answered_not_durable_and_stored_when_room_returns() {
    let g = Sessions::new("unstored");
    let mut a = Agent::configure("unstored", &docker_config(""));
    let disk = SmallDisk::mount(&a.cache(), "4m");
    a.spawn();
    a.wait_ready();
    let s = g.id("s");
    create_started(&a, &s, json!({}));
    let filler = fill(&disk.0);
    // Room for the command's intake and start (the journal keeps some
    // allocated ahead), not for its output.
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len - 8192)
        .unwrap();
    let id = format!("big-{}", next_id());
    let command = json!({"id": id, "type": "session", "action": "exec",
        "params": {"session_id": s, "command": ["sh", "-c", "head -c 900000 /dev/zero | tr '\\0' x"]}});
    let (status, r) = a.post(&command.to_string());
    let short = |v: &Value| {
        let mut v = v.clone();
        v["data"]["stdout"] = json!("(cut)");
        v
    };
    assert_eq!(status, 200, "{}", short(&r));
    assert_eq!(r["status"], "success", "{}", short(&r));
    assert_eq!(r["code"], "not_durable", "{}", short(&r));
    assert_eq!(r["data"]["stdout"].as_str().map(str::len), Some(900_000));
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("the command ran (status success) but its result could not be stored: cannot find room in the journal"),
        "{error}"
    );
    assert!(error.contains("No space left on device"), "{error}");
    assert_eq!(
        a.command(&id),
        (200, r.clone()),
        "answered from memory meanwhile"
    );
    // The CLI prints the output and says the result is not stored.
    let out = a.cli(&[
        "session",
        "exec",
        &s,
        "--",
        "sh",
        "-c",
        "head -c 900000 /dev/zero | tr '\\0' y",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout.len(), 900_000);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("vendetta: warning: the command ran (status success) but its result could not be stored: cannot find room in the journal"),
        "{stderr}"
    );
    assert!(a.metrics().contains("vendetta_results_unstored 2\n"));
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || a
            .metrics()
            .contains("vendetta_results_unstored 0\n")),
        "the monitor stores it once there is room"
    );
    assert!(a.log().contains("a result kept in memory is now stored"));
    a.kill9();
    a.restart();
    let (status, stored) = a.command(&id);
    assert_eq!(status, 200, "{}", short(&stored));
    assert!(
        stored == r,
        "its result, not agent_restarted: {}",
        short(&stored)
    );
    a.stop();
    drop(disk);
}

fn destroy_unknown(id: &str) -> Value {
    json!({"id": id, "type": "session", "action": "destroy", "params": {"session_id": "nothing-here"}})
}

/// A record cut short by a crash (or damaged) ends its segment: the rest
/// is cut off and kept in corrupt/, and the agent starts with what is
/// whole.
#[test]
fn a_torn_or_damaged_journal_tail_is_cut_off_and_the_agent_starts() {
    let mut a = Agent::start("");
    let kept = format!("kept-{}", next_id());
    let first = a.run(destroy_unknown(&kept));
    ok(&first);
    a.stop();
    let seg = a.cache().join("journal/00000001.seg");
    let whole = std::fs::read(&seg).unwrap();
    // A frame that promises 64 bytes and holds 3.
    let mut torn = whole.clone();
    torn.extend_from_slice(&[64, 0, 0, 0, 1, 2, 3, 4, 1, 2, 3]);
    std::fs::write(&seg, &torn).unwrap();
    a.restart();
    assert_eq!(a.command(&kept), (200, first.clone()));
    let log = a.log();
    assert!(
        log.contains("a record cut short (a crash while writing) at byte")
            && log.contains("cut off 11 bytes"),
        "{log}"
    );
    let next = format!("next-{}", next_id());
    ok(&a.run(destroy_unknown(&next)));
    a.stop();
    // A flipped bit inside the first record: it and what follows go.
    let mut bad = std::fs::read(&seg).unwrap();
    bad[20] ^= 0x01;
    std::fs::write(&seg, &bad).unwrap();
    a.restart();
    assert!(
        a.log().contains("checksum mismatch at byte 8"),
        "{}",
        a.log()
    );
    assert_eq!(a.command(&kept).0, 404);
    ok(&a.run(destroy_unknown(&format!("after-{}", next_id()))));
    assert_eq!(
        std::fs::read_dir(a.cache().join("corrupt"))
            .unwrap()
            .count(),
        2
    );
    a.stop();
}

/// A node_id file that is not UTF-8 neither stops the agent nor makes a
/// new node: the id comes back from the journal, and the node's sessions
/// are still its own.
#[test]
fn a_damaged_node_id_is_recovered_and_the_sessions_stay_the_nodes() {
    let g = Sessions::new("nodeid");
    let mut a = Agent::configure("nodeid", &docker_config(""));
    a.spawn();
    a.wait_ready();
    let s = g.id("s");
    create_started(&a, &s, json!({}));
    let node = a.cmd("system", "status", json!({}))["data"]["node_id"].clone();
    a.stop();
    std::fs::write(a.cache().join("node_id"), b"node-\xff\xfe\x00garbage").unwrap();
    a.restart();
    assert_eq!(
        a.cmd("system", "status", json!({}))["data"]["node_id"],
        node
    );
    let log = a.log();
    assert!(
        log.contains(&format!(
            "node id {} recovered from the journal's results",
            node.as_str().unwrap()
        )),
        "{log}"
    );
    assert!(
        log.contains("node_id file") && log.contains("was damaged; moved to"),
        "{log}"
    );
    assert_eq!(crate::util::destroy(&a, &s)["existed"], true);
    a.stop();
}

/// An invalid command with a 900 KB parameter, sent again and again under
/// new ids, leaves a capped echo in the journal, not its megabytes.
#[test]
fn a_caller_cannot_fill_the_journal_with_its_parameters() {
    let a = Agent::start("");
    let blob = "x".repeat(900_000);
    for i in 0..5 {
        let id = format!("huge-{i}-{}", next_id());
        let command =
            json!({"id": id, "type": "session", "action": "bogus", "params": {"blob": blob}});
        let (status, r) = a.post(&command.to_string());
        assert_eq!(status, 400, "{r}");
        assert_eq!(r["code"], "invalid_command");
        assert_eq!(
            r["command"],
            json!({"id": id, "type": "session", "action": "bogus", "truncated": command.to_string().len()})
        );
        let (_, stored) = a.command(&id);
        assert_eq!(stored, r);
    }
    let bytes: f64 = a
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("vendetta_journal_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("vendetta_journal_bytes");
    assert!(bytes < 64_000.0, "the journal holds {bytes} bytes");
}
