//! Secrets and safe defaults: the state directory and the token file are
//! the agent's alone, short tokens are refused, and a listen address beyond
//! loopback does not serve /metrics to anyone by accident.

use crate::util::{file_mode, text, Agent, TempDir, BIN};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// `agent config --check` of `yaml`: exit code and what it printed.
fn check(yaml: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("seccfg");
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["agent", "config", "--check"])
        .arg(&path)
        .output()
        .unwrap();
    let said = text(&out).replace(&path.display().to_string(), "FILE");
    (out.status.code(), said.trim().to_string())
}

#[test]
fn short_tokens_and_open_listen_addresses_are_refused_with_the_fix() {
    assert_eq!(
        check("api_token: short\n"),
        (
            Some(2),
            "vendetta: config file FILE: key api_token: is 5 bytes; use at least 32, e.g. the output of `openssl rand -hex 24`".into()
        )
    );
    assert_eq!(
        check("listen: 0.0.0.0:8080\n"),
        (
            Some(2),
            "vendetta: config file FILE: key listen: 0.0.0.0:8080 is not a loopback address, and /metrics answers without a token there; set metrics_auth: true, or insecure_listen: true to serve it so anyway".into()
        )
    );
    assert_eq!(
        check("listen: 0.0.0.0:8080\nmetrics_auth: true\n").0,
        Some(0)
    );
    assert_eq!(
        check("listen: \"[::]:8080\"\ninsecure_listen: true\n").0,
        Some(0)
    );
    assert_eq!(
        check("listen: \"[::1]:8080\"\n").0,
        Some(0),
        "loopback needs nothing"
    );
}

#[test]
fn an_open_cache_dir_and_an_exposed_token_file_are_fixed_at_start() {
    // No api_token in the config: the agent uses cache_dir/api_token.
    let mut a = Agent::configure("secdir", "api_token: \"\"\n");
    let cache = a.cache();
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let token_file = cache.join("api_token");
    let exposed = "an-old-token-others-could-read-0123456789";
    std::fs::write(&token_file, format!("{exposed}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    a.spawn();
    a.wait_ready();
    assert_eq!(file_mode(&cache), 0o700);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(token, exposed, "the exposed token was replaced");
    assert!(token.len() >= 32, "{token}");
    assert_eq!(file_mode(&token_file), 0o600);
    assert_eq!(a.get_as("/api/v1/commands/x", Some(exposed)).0, 401);
    assert_eq!(a.get_as("/api/v1/commands/x", Some(&token)).0, 404);
    let log = a.log();
    assert!(
        log.contains(&format!(
            "cache_dir {} was mode 0777, open to other users; it is now 0700",
            cache.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("was readable by other users (mode 0644); made a new token"),
        "{log}"
    );
    assert!(
        !log.contains(exposed) && !log.contains(&token),
        "no token in the log"
    );
}

#[test]
fn a_short_auth_token_is_not_the_local_api_token() {
    let a = Agent::start("api_token: \"\"\nauth_token: short-server-token\n");
    let generated = std::fs::read_to_string(a.cache().join("api_token")).unwrap();
    assert_eq!(
        a.get_as("/api/v1/commands/x", Some("short-server-token")).0,
        401
    );
    assert_eq!(
        a.get_as("/api/v1/commands/x", Some(generated.trim())).0,
        404
    );
    let log = a.log();
    assert!(
        log.contains("auth_token is shorter than 32 bytes, too short for the local API"),
        "{log}"
    );
}

#[test]
fn a_flood_of_bad_requests_is_a_line_a_minute_and_counted() {
    // At info, as a production agent logs.
    let a = Agent::start("log_level: info\n");
    for i in 0..300 {
        let (status, _) = a.get_as("/api/v1/commands/x", Some(&format!("wrong-{i}")));
        assert_eq!(status, 401);
    }
    let log = a.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("refused")).collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("API request from 127.0.0.1 refused: token does not match"),
        "{}",
        lines[0]
    );
    let metrics = a.metrics();
    assert!(
        metrics.contains("vendetta_api_refusals_total{reason=\"unauthorized\"} 300"),
        "{metrics}"
    );
}
