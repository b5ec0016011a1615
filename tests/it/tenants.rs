//! Tenants on the real Docker engine, with tokens made by PyJWT: a tenant
//! sees, execs into and destroys only its own sessions; another's are
//! answered as if they did not exist; lists, results by id and event
//! streams are filtered; quotas per tenant hold under parallel creates.

use crate::docker::{docker_agent, engine, urlencode, Sessions, IMAGE};
use crate::jwt::{now, pyjwt};
use crate::util::{api_error, failed, next_id, ok, Agent, Events, TOKEN};
use serde_json::{json, Value};
use std::time::Duration;

const SECRET: &str = "tenant-test-hs256-secret-of-32-bytes+";

/// An HS256 token for `sub`, of `tenant` (none when empty), with `scope`.
fn token(sub: &str, tenant: &str, scope: &str) -> String {
    let mut claims = json!({"sub": sub, "scope": scope, "exp": now() + 600});
    if !tenant.is_empty() {
        claims["tenant"] = json!(tenant);
    }
    pyjwt(&claims, SECRET, "HS256", &json!({}))
}

const USER: &str = "session:read session:write session:exec";

/// An agent on Docker taking HS256 tokens, with `extra` config.
fn tenant_agent(extra: &str) -> Agent {
    docker_agent(&format!(
        "jwt:\n  keys:\n    - {{algorithm: HS256, secret: \"{SECRET}\"}}\n{extra}"
    ))
}

/// Posts a command as `token`: (HTTP status, body).
fn post(a: &Agent, token: &str, kind: &str, action: &str, params: Value) -> (u16, Value) {
    post_id(a, token, &format!("tn-{}", next_id()), kind, action, params)
}

fn post_id(
    a: &Agent,
    token: &str,
    id: &str,
    kind: &str,
    action: &str,
    params: Value,
) -> (u16, Value) {
    a.post_path(
        "/api/v1/commands",
        &json!({"id": id, "type": kind, "action": action, "params": params}).to_string(),
        Some(token),
    )
}

/// The ids in `GET /api/v1/sessions` as `token` sees them.
fn listed(a: &Agent, token: &str) -> Vec<String> {
    let (status, body) = a.get_as("/api/v1/sessions?provider=docker", Some(token));
    assert_eq!(status, 200, "{body}");
    body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// Reads `events` until one about session `id` changing `event`; returns
/// everything read up to it.
fn until_session_event(events: &mut Events, id: &str, event: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    while let Some(e) = events.next(Duration::from_secs(30)) {
        let done = e["id"] == id && e["event"] == event;
        seen.push(e);
        if done {
            return seen;
        }
    }
    panic!("no {event} event for session {id}; got {seen:#?}")
}

#[test]
fn a_tenant_reaches_only_its_own_sessions() {
    let g = Sessions::new("tenants");
    let a = tenant_agent("");
    let (ta, tb) = (token("alice", "team-a", USER), token("bob", "team-b", USER));
    let untenanted = token("carol", "", USER);
    let admin = token("root", "", "admin");
    let mut a_events = Events::open_as(&a, &ta);
    let mut b_events = Events::open_as(&a, &tb);

    // team-a creates and starts a session; it carries the tenant's label.
    let sa = g.id("a");
    let (status, r) = post(&a, &ta, "session", "create", json!({"session_id": sa}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(ok(&r)["labels"]["vendetta.tenant"], "team-a", "{r}");
    let (status, r) = post(&a, &ta, "session", "start", json!({"session_id": sa}));
    assert_eq!((status, &r["status"]), (200, &json!("success")), "{r}");
    let secret_cmd = format!("tn-secret-{}", next_id());
    let (status, r) = post_id(
        &a,
        &ta,
        &secret_cmd,
        "session",
        "exec",
        json!({"session_id": sa, "command": ["echo", "team-a's secret"]}),
    );
    assert_eq!(
        (status, &r["output"]),
        (200, &json!("team-a's secret\n")),
        "{r}"
    );

    // team-b: the session is not there, whatever it tries.
    assert!(!listed(&a, &tb).contains(&sa));
    let (status, r) = post(&a, &tb, "session", "list", json!({"provider": "docker"}));
    assert_eq!(status, 200, "{r}");
    assert!(!r["data"].to_string().contains(&sa), "{r}");
    let missing = format!("no session {sa} on this node");
    for (action, params) in [
        (
            "exec",
            json!({"session_id": sa, "command": ["cat", "/etc/hostname"]}),
        ),
        ("stop", json!({"session_id": sa})),
        ("start", json!({"session_id": sa})),
    ] {
        let (status, r) = post(&a, &tb, "session", action, params);
        assert_eq!(status, 404, "session.{action}: {r}");
        failed(&r, "not_found", &missing);
    }
    let (status, r) = post(&a, &tb, "service", "status", json!({"session_id": sa}));
    assert_eq!(status, 404, "{r}");
    failed(&r, "not_found", &missing);
    // A destroy says what it says of a session that never was, and the
    // session lives on.
    let (status, r) = post(&a, &tb, "session", "destroy", json!({"session_id": sa}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        ok(&r),
        &json!({"id": sa, "destroyed": false, "existed": false})
    );
    let never = g.id("never");
    let (_, r) = post(&a, &tb, "session", "destroy", json!({"session_id": never}));
    assert_eq!(
        ok(&r),
        &json!({"id": never, "destroyed": false, "existed": false})
    );
    // Its id is taken, and nothing more is said of it.
    let (status, r) = post(&a, &tb, "session", "create", json!({"session_id": sa}));
    assert_eq!(status, 200, "{r}");
    let e = failed(
        &r,
        "conflict",
        &format!("session id {sa} is taken on this node; pick another id"),
    );
    assert!(!e.contains("docker") && !e.contains("running"), "{e}");
    // team-a's command: its id and its result are team-a's.
    api_error(
        a.get_as(&format!("/api/v1/commands/{secret_cmd}"), Some(&tb)),
        404,
        "not_found",
        &format!("no result stored for command {secret_cmd}"),
    );
    api_error(
        post_id(&a, &tb, &secret_cmd, "session", "list", json!({})),
        409,
        "id_taken",
        "this command id is used by another caller's command; send the command with a fresh id",
    );
    let (status, r) = a.get_as(&format!("/api/v1/commands/{secret_cmd}"), Some(&ta));
    assert_eq!(
        (status, &r["output"]),
        (200, &json!("team-a's secret\n")),
        "{r}"
    );

    // team-b's own session; its stream shows it, and nothing of team-a's.
    let sb = g.id("b");
    let (status, r) = post(&a, &tb, "session", "create", json!({"session_id": sb}));
    assert_eq!(status, 200, "{r}");
    let seen = until_session_event(&mut b_events, &sb, "created");
    let ids = |seen: &[Value]| -> Vec<String> {
        seen.iter()
            .map(|e| e["id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let b_saw = ids(&seen);
    assert!(
        !b_saw.contains(&sa) && !b_saw.contains(&secret_cmd),
        "team-b saw team-a's events: {seen:#?}"
    );
    assert!(
        seen.iter().any(|e| e["state"] == "finished"),
        "its own commands' events: {seen:#?}"
    );
    // The untenanted see neither; admin sees both and may act on them.
    let mine = listed(&a, &untenanted);
    assert!(!mine.contains(&sa) && !mine.contains(&sb), "{mine:?}");
    let all = listed(&a, &admin);
    assert!(all.contains(&sa) && all.contains(&sb), "{all:?}");
    assert!(
        listed(&a, TOKEN).contains(&sb),
        "the static token has admin by default"
    );
    let (status, r) = post(
        &a,
        &admin,
        "session",
        "exec",
        json!({"session_id": sa, "command": ["true"]}),
    );
    assert_eq!((status, &r["status"]), (200, &json!("success")), "{r}");

    // team-a destroys its own; its stream never carried team-b's.
    let (_, r) = post(&a, &ta, "session", "destroy", json!({"session_id": sa}));
    assert_eq!(ok(&r)["existed"], true, "{r}");
    let seen = until_session_event(&mut a_events, &sa, "destroyed");
    let a_saw = ids(&seen);
    assert!(
        !a_saw.contains(&sb),
        "team-a saw team-b's events: {seen:#?}"
    );
    assert!(
        a_saw.contains(&secret_cmd),
        "its own command's events: {seen:#?}"
    );
    assert!(
        seen.iter().all(|e| e["state"].is_null()
            || !b_saw.contains(&e["id"].as_str().unwrap_or_default().to_string())),
        "team-a saw team-b's commands: {seen:#?}"
    );
    let (_, r) = post(&a, &tb, "session", "destroy", json!({"session_id": sb}));
    assert_eq!(ok(&r)["existed"], true, "{r}");

    // A command cannot claim a tenant's label; a token cannot name a bad
    // tenant.
    let (status, r) = post(
        &a,
        &tb,
        "session",
        "create",
        json!({"session_id": g.id("forged"), "labels": {"vendetta.tenant": "team-a"}}),
    );
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["code"], "invalid_command", "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("params.labels: \"vendetta.tenant\" uses the prefix \"vendetta.\", which is the agent's"), "{e}");
    api_error(
        a.get_as("/api/v1/sessions", Some(&token("eve", "../team-a", USER))),
        401,
        "unauthorized",
        "missing or invalid bearer token",
    );
    assert!(a
        .log()
        .contains("JWT tenant claim is not a valid tenant name"));
    let null_tenant = pyjwt(
        &json!({"sub": "nil", "scope": USER, "exp": now() + 600, "tenant": null}),
        SECRET,
        "HS256",
        &json!({}),
    );
    api_error(
        a.get_as("/api/v1/sessions", Some(&null_tenant)),
        401,
        "unauthorized",
        "missing or invalid bearer token",
    );
    assert!(a.log().contains("JWT tenant claim is not a string"));
    // The audit log names each command's tenant.
    let audit = std::fs::read_to_string(a.cache().join("audit.log")).unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains(&secret_cmd))
        .unwrap_or_else(|| panic!("{audit}"));
    let entry: Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        (&entry["caller"], &entry["tenant"]),
        (&json!("jwt:alice"), &json!("team-a"))
    );
    assert!(a.is_alive());
}

#[test]
fn tenant_quotas_hold_under_parallel_creates() {
    let g = Sessions::new("quota");
    let mut a = tenant_agent(
        "limits:\n  tenant_quota: {max_sessions: 3}\n  tenant_quotas:\n    team-m: {memory: 64m, cpus: 1}\n",
    );
    let ta = token("alice", "team-a", USER);
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (a, ta, id) = (&a, &ta, g.id(&format!("p{i}")));
                s.spawn(move || post(a, ta, "session", "create", json!({"session_id": id})))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = results
        .iter()
        .filter(|(_, r)| r["status"] == "success")
        .count();
    assert_eq!(created, 3, "{results:#?}");
    for (status, r) in results.iter().filter(|(_, r)| r["status"] != "success") {
        assert_eq!(*status, 403, "{r}");
        failed(
            r,
            "rejected",
            "tenant team-a would pass its quota limits.tenant_quotas.team-a (or limits.tenant_quota).max_sessions = 3",
        );
    }
    // Another tenant has its own quota.
    let (_, r) = post(
        &a,
        &token("bob", "team-b", USER),
        "session",
        "create",
        json!({"session_id": g.id("b")}),
    );
    ok(&r);
    // Memory and CPUs: counted from what creates ask for.
    let tm = token("mia", "team-m", USER);
    let create = |a: &Agent, name: &str, resources: Value| {
        post(
            a,
            &tm,
            "session",
            "create",
            json!({"session_id": g.id(name), "resources": resources}),
        )
    };
    ok(&create(&a, "m1", json!({"memory": "48m", "cpus": 0.5})).1);
    let (status, r) = create(&a, "m2", json!({"memory": "32m", "cpus": 0.25}));
    assert_eq!(status, 403, "{r}");
    failed(&r, "rejected", "tenant team-m would pass its quota limits.tenant_quotas.team-m (or limits.tenant_quota).memory = 64m (48m in use or being created)");
    let (_, r) = create(&a, "m3", json!({"cpus": 0.25}));
    failed(
        &r,
        "rejected",
        "so a create must name params.resources.memory",
    );
    ok(&create(&a, "m4", json!({"memory": "16m", "cpus": 0.5})).1);
    // The quota counts again after a restart, from the sessions' labels.
    a.restart();
    let (_, r) = create(&a, "m5", json!({"memory": "6m", "cpus": 0.1}));
    failed(&r, "rejected", "memory = 64m (64m in use or being created)");
    assert!(a.is_alive());
}

/// An image that is not a tenant's own.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        engine(
            "DELETE",
            &format!("/images/{}?force=1", urlencode(&self.0)),
            None,
        );
    }
}

/// An image whose own labels claim a tenant and a NaN of CPUs: Docker
/// copies image labels to containers, but the agent's win.
#[test]
fn an_images_labels_cannot_name_a_tenant() {
    let g = Sessions::new("imglabel");
    let a = tenant_agent("limits:\n  tenant_quota: {cpus: 1}\n");
    let name = format!("vendetta-test/labelled-{}", std::process::id());
    let (status, c) = engine(
        "POST",
        "/containers/create",
        Some(&json!({"Image": IMAGE, "Cmd": ["true"]})),
    );
    assert_eq!(status, 201, "{c}");
    let cid = c["Id"].as_str().unwrap().to_string();
    let changes = "LABEL vendetta.tenant=team-b vendetta.cpus=NaN vendetta.memory=-1";
    let (status, body) = engine(
        "POST",
        &format!(
            "/commit?container={cid}&repo={}&tag=latest&changes={}",
            urlencode(&name),
            urlencode(changes)
        ),
        None,
    );
    engine("DELETE", &format!("/containers/{cid}?force=1"), None);
    assert_eq!(status, 201, "{body}");
    let _image = Image(format!("{name}:latest"));
    let admin = token("root", "", "admin");
    let id = g.id("x");
    let (status, r) = post(
        &a,
        &admin,
        "session",
        "create",
        json!({"session_id": id, "image": format!("{name}:latest")}),
    );
    assert_eq!(status, 200, "{r}");
    let labels = &ok(&r)["labels"];
    assert_eq!(
        (&labels["vendetta.tenant"], &labels["vendetta.cpus"]),
        (&json!(""), &json!("")),
        "{r}"
    );
    let tb = token("bob", "team-b", USER);
    assert!(
        !listed(&a, &tb).contains(&id),
        "team-b does not get the image's session"
    );
    let (status, r) = post(
        &a,
        &tb,
        "session",
        "exec",
        json!({"session_id": id, "command": ["true"]}),
    );
    assert_eq!(status, 404, "{r}");
    assert!(
        listed(&a, &token("carol", "", USER)).contains(&id),
        "it is untenanted"
    );
    // team-b's own quota is not broken by a NaN: 1 CPU, then no more.
    let (_, r) = post(
        &a,
        &tb,
        "session",
        "create",
        json!({"session_id": g.id("b1"), "image": format!("{name}:latest"), "resources": {"cpus": 1}}),
    );
    assert_eq!(ok(&r)["labels"]["vendetta.cpus"], "1", "{r}");
    let (status, r) = post(
        &a,
        &tb,
        "session",
        "create",
        json!({"session_id": g.id("b2"), "resources": {"cpus": 0.5}}),
    );
    assert_eq!(status, 403, "{r}");
    failed(&r, "rejected", "cpus = 1 (1 in use or being created)");
}

/// A tenant's workspaces are in its own directory of a root; a symlink
/// there cannot reach a neighbour's.
#[test]
fn a_tenants_workspace_stays_in_its_directory() {
    let g = Sessions::new("tenantws");
    let root = crate::util::TempDir::new("tenantroot");
    std::fs::create_dir_all(root.path().join("team-b/private")).unwrap();
    std::fs::write(root.path().join("team-b/private/secret"), "b's").unwrap();
    let a = tenant_agent(&format!("workspace_roots: [{}]\n", root.path().display()));
    let ta = token("alice", "team-a", USER);
    let create = |name: &str, ws: &std::path::Path| {
        post(
            &a,
            &ta,
            "session",
            "create",
            json!({"session_id": g.id(name), "workspace_path": ws}),
        )
    };
    let (status, r) = create("outside", &root.path().join("team-b/private"));
    assert_eq!(status, 403, "{r}");
    failed(
        &r,
        "rejected",
        "is not in tenant team-a's workspace directories",
    );
    std::fs::create_dir_all(root.path().join("team-a/ws")).unwrap();
    std::os::unix::fs::symlink("../team-b/private", root.path().join("team-a/peek")).unwrap();
    let (status, r) = create("peek", &root.path().join("team-a/peek"));
    assert_eq!(status, 403, "{r}");
    failed(&r, "rejected", "leads out of");
    let (status, r) = create("own", &root.path().join("team-a/ws"));
    assert_eq!(status, 200, "{r}");
    ok(&r);
    let (_, r) = post(
        &a,
        &ta,
        "session",
        "destroy",
        json!({"session_id": g.id("own")}),
    );
    assert_eq!(ok(&r)["existed"], true);
}
