//! The runtime: signals, shutdown, restarts, durable state, logs.

use crate::util::{api_error, failed, next_id, ok, run_ok, wait_until, Agent};
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn sigterm_and_sigint_stop_cleanly() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut a = Agent::start("");
        a.cmd("system", "status", json!({}));
        let t = Instant::now();
        a.signal(sig);
        let st = a.wait_exit(Duration::from_secs(10)).expect("exits");
        assert_eq!(st.code(), Some(0), "{}", a.log());
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
        assert!(a.log().contains("agent stopped"));
    }
}

#[test]
fn sighup_reloads_the_log_level() {
    let mut a = Agent::start("log_level: info\n");
    a.cmd("system", "status", json!({}));
    assert!(!a.log().contains("\"level\":\"debug\""));
    let text = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace("log_level: info", "log_level: debug");
    std::fs::write(&a.config, text).unwrap();
    a.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || a
        .log()
        .contains("log level is now Debug")));
    a.cmd("system", "status", json!({}));
    assert!(wait_until(Duration::from_secs(5), || a
        .log()
        .contains("\"level\":\"debug\"")));
    assert_eq!(a.stop().code(), Some(0));
}

#[test]
fn node_id_and_results_survive_a_restart() {
    let mut a = Agent::start("");
    let node = a.cmd("system", "status", json!({}))["data"]["node_id"].clone();
    let id = format!("keep-{}", next_id());
    let command =
        json!({"id": id, "type": "session", "action": "destroy", "params": {"session_id": "gone"}});
    let first = a.run(command.clone());
    ok(&first);
    a.kill9();
    a.restart();
    assert_eq!(
        a.cmd("system", "status", json!({}))["data"]["node_id"],
        node
    );
    let again = a.run(command);
    assert_eq!(again, first, "answered from the store after a crash");
    assert_eq!(a.command(&id), (200, first));
}

#[test]
fn interrupted_and_queued_commands_are_recovered() {
    let mut a = Agent::configure("recover", "");
    // Journal records as a crash would leave them: one queued, one running.
    let results = a.cache().join("results");
    std::fs::create_dir_all(&results).unwrap();
    let queued = json!({"state": "queued", "origin": "api", "updated": "x",
        "command": {"id": "was-queued", "type": "session", "action": "destroy", "params": {"session_id": "q"}}});
    let running = json!({"state": "running", "origin": "api", "updated": "x",
        "command": {"id": "was-running", "type": "session", "action": "destroy", "params": {"session_id": "r"}}});
    std::fs::write(results.join("r-was-queued.json"), queued.to_string()).unwrap();
    std::fs::write(results.join("r-was-running.json"), running.to_string()).unwrap();
    std::fs::write(results.join("r-garbled.json"), "{\"state\": \"do").unwrap();
    // Filed under another id's name: it would run again at every start
    // and its name would say "queued" forever.
    let renamed = json!({"state": "queued", "origin": "api", "updated": "x",
        "command": {"id": "real-id", "type": "session", "action": "destroy", "params": {"session_id": "x"}}});
    std::fs::write(results.join("r-renamed.json"), renamed.to_string()).unwrap();
    a.spawn();
    a.wait_ready();
    // A queued command never ran, so it runs now.
    ok(&a.wait_result("was-queued", Duration::from_secs(5)));
    let (s, r) = a.command("was-running");
    assert_eq!(s, 200, "{r}");
    failed(&r, "agent_restarted", "agent restarted during execution");
    for id in ["renamed", "real-id", "garbled"] {
        assert_eq!(a.command(id).0, 404, "{id} is not taken over");
    }
    let aside: Vec<String> = a
        .cache()
        .join("corrupt")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(aside.len(), 2, "{aside:?}");
    let log = a.log();
    assert!(
        log.contains("r-renamed.json cannot be taken over (it holds command id Some(\\\"real-id\\\"), not \\\"renamed\\\")"),
        "{log}"
    );
    assert!(!results.exists(), "the old files are gone once migrated");
    // Taken over once: the next start finds them in the journal.
    a.stop();
    a.spawn();
    a.wait_ready();
    failed(
        &a.command("was-running").1,
        "agent_restarted",
        "agent restarted during execution",
    );
    ok(&a.command("was-queued").1);
    a.stop();
}

#[test]
fn a_token_in_a_readable_config_is_warned_about() {
    let a = Agent::start("auth_token: s3cret-value-do-not-log\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&a.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(a);
    let mut a = Agent::configure("perm", "auth_token: s3cret-value-do-not-log\n");
    std::fs::set_permissions(&a.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    a.spawn();
    a.wait_ready();
    assert!(wait_until(Duration::from_secs(5), || a
        .log()
        .contains("chmod 600")));
    assert!(!a.log().contains("s3cret-value-do-not-log"));
}

#[test]
fn logs_are_json_lines_shaped_like_the_seed() {
    let a = Agent::start("");
    a.cmd("system", "status", json!({}));
    let log = a.log();
    let mut seen_command = false;
    for line in log.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["level", "timestamp", "component", "message"] {
            assert!(v[key].is_string(), "{key} missing: {line}");
        }
        if v["message"] == "command finished" {
            assert!(
                v["command_id"].is_string() && v["duration"].is_string(),
                "{line}"
            );
            seen_command = true;
        }
    }
    assert!(seen_command, "{log}");
}

#[test]
fn text_logs_carry_key_values() {
    let a = Agent::start("log_format: text\n");
    a.cmd("system", "status", json!({}));
    assert!(wait_until(Duration::from_secs(5), || a
        .log()
        .contains("command_id=")));
    assert!(a.log().contains("INFO"));
}

/// A tmpfs mounted for one test (root only), unmounted on drop.
pub(crate) struct SmallDisk(pub(crate) std::path::PathBuf);

impl SmallDisk {
    /// Mounts it, or fails the test with mount's own reason (never skips:
    /// the test needs root).
    pub(crate) fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir),
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system holding `dir`, the journal's open segment too.
pub(crate) fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let page = [0u8; 4096];
    while f.write_all(&page).is_ok() {}
    // What is left is less than a page: byte by byte.
    while f.write_all(&[0]).is_ok() {}
    let _ = f.sync_all();
    filler
}

#[test]
fn a_full_disk_never_makes_a_command_run_later() {
    let mut a = Agent::configure("full", "");
    let disk = SmallDisk::mount(&a.cache(), "512k");
    a.spawn();
    a.wait_ready();
    a.cmd("system", "status", json!({}));
    let filler = fill(&disk.0);
    let id = format!("full-{}", next_id());
    let body =
        json!({"id": id, "type": "session", "action": "destroy", "params": {"session_id": "s"}})
            .to_string();
    let (s, r) = a.post(&body);
    assert_eq!(s, 503, "{r}");
    assert_eq!(r["code"], "store_failed", "{r}");
    api_error(
        a.command(&id),
        404,
        "not_found",
        &format!("no result stored for command {id}"),
    );
    std::fs::remove_file(filler).unwrap();
    a.stop();
    a.restart();
    // It did not run, and it does not run now that there is room.
    assert!(!a
        .log()
        .contains("running a command accepted before the restart"));
    // Nothing recorded that could run it.
    api_error(
        a.command(&id),
        404,
        "not_found",
        &format!("no result stored for command {id}"),
    );
    assert!(a.is_alive());
}
