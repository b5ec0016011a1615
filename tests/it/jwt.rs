//! JWT bearer tokens on the local API, made by a real JWT library (PyJWT,
//! installed by tests/setup/deps.sh) with keys made by openssl: every
//! algorithm the agent accepts, and the tokens it must refuse.

use crate::util::{api_error, run_ok, text, Agent, TOKEN};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";

/// A key pair by openssl: (private key file, public key file).
fn keypair(dir: &Path, name: &str, openssl_alg: &[&str]) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pem"));
    run_ok(
        Command::new("openssl")
            .arg("genpkey")
            .args(openssl_alg)
            .arg("-out")
            .arg(&private),
    );
    run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public),
    );
    (private, public)
}

/// A token from PyJWT: `key` is a secret, or a private key file for
/// RS256/EdDSA; `alg` "none" signs nothing.
pub(crate) fn pyjwt(claims: &Value, key: &str, alg: &str, headers: &Value) -> String {
    let script = r#"
import json, sys, jwt
claims, key, alg, headers = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if alg in ("RS256", "EdDSA"):
    key = open(key).read()
elif alg == "none":
    key = None
print(jwt.encode(claims, key, algorithm=alg, headers=headers or None))
"#;
    let out = run_ok(
        Command::new("python3")
            .args(["-c", script])
            .arg(claims.to_string())
            .arg(key)
            .arg(alg)
            .arg(headers.to_string()),
    );
    text(&out).trim().to_string()
}

/// An HS256 token whose "secret" is the bytes of `public_pem`: the alg
/// confusion attack on verifiers that take the key's type from the token.
fn hs256_with(public_pem: &Path, claims: &Value) -> String {
    let script = r#"
import base64, hashlib, hmac, json, sys
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
signed = b(b'{"alg":"HS256","typ":"JWT"}') + "." + b(sys.argv[2].encode())
key = open(sys.argv[1], "rb").read()
print(signed + "." + b(hmac.new(key, signed.encode(), hashlib.sha256).digest()))
"#;
    let out = run_ok(
        Command::new("python3")
            .args(["-c", script])
            .arg(public_pem)
            .arg(claims.to_string()),
    );
    text(&out).trim().to_string()
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An agent taking the static token and three JWT keys: HS256 (kid h1),
/// RS256 (kid r1), EdDSA (no kid); issuer and audience checked.
struct Lab {
    agent: Agent,
    rsa_private: PathBuf,
    rsa_public: PathBuf,
    ed_private: PathBuf,
    other_rsa_private: PathBuf,
}

impl Lab {
    fn start() -> Lab {
        let keys = crate::util::TempDir::new("jwtkeys");
        let (rsa_private, rsa_public) = keypair(
            keys.path(),
            "rs",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        let (ed_private, ed_public) = keypair(keys.path(), "ed", &["-algorithm", "ed25519"]);
        let (other_rsa_private, _) = keypair(
            keys.path(),
            "rs2",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        let mut agent = Agent::configure(
            "jwt",
            &format!(
                "jwt:\n  issuer: coord\n  audience: vendetta\n  keys:\n    - {{kid: h1, algorithm: HS256, secret: \"{SECRET}\"}}\n    - {{kid: r1, algorithm: RS256, public_key_file: {}}}\n    - {{algorithm: EdDSA, public_key_file: {}}}\n",
                rsa_public.display(),
                ed_public.display()
            ),
        );
        // The key files live in the agent's dir, removed with it.
        let keep = |p: &Path| {
            let to = agent.dir.path().join(p.file_name().unwrap());
            std::fs::copy(p, &to).unwrap();
            to
        };
        let (rsa_private, rsa_public, ed_private, other_rsa_private) = (
            keep(&rsa_private),
            keep(&rsa_public),
            keep(&ed_private),
            keep(&other_rsa_private),
        );
        agent.spawn();
        agent.wait_ready();
        Lab {
            agent,
            rsa_private,
            rsa_public,
            ed_private,
            other_rsa_private,
        }
    }

    /// The claims of a good token, with `extra` merged in.
    fn claims(extra: Value) -> Value {
        let mut c = json!({"sub": "ci", "iss": "coord", "aud": "vendetta", "exp": now() + 300, "iat": now()});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    c.remove(k);
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        c
    }

    /// The answer to an authenticated read that needs no provider: 404
    /// for an unknown command once the token is accepted, 401 otherwise.
    fn probe(&self, token: &str) -> (u16, Value) {
        self.agent
            .get_as("/api/v1/commands/no-such-command", Some(token))
    }

    fn accepted(&self, token: &str, what: &str) {
        let (status, body) = self.probe(token);
        assert_eq!(status, 404, "{what} should be accepted: {body}");
        assert_eq!(body["code"], "not_found", "{what}: {body}");
    }

    fn refused(&self, token: &str, what: &str, reason: &str) {
        api_error(
            self.probe(token),
            401,
            "unauthorized",
            "missing or invalid bearer token",
        );
        let log = self.agent.log();
        assert!(
            log.contains(reason),
            "{what}: the log should say {reason:?}:\n{log}"
        );
        assert!(!log.contains(token), "{what}: the token is in the log");
    }
}

#[test]
fn valid_tokens_of_every_algorithm_are_accepted() {
    let lab = Lab::start();
    let claims = Lab::claims(json!({}));
    let rsa = lab.rsa_private.to_str().unwrap();
    let ed = lab.ed_private.to_str().unwrap();
    lab.accepted(
        &pyjwt(&claims, SECRET, "HS256", &json!({"kid": "h1"})),
        "HS256 with its kid",
    );
    lab.accepted(
        &pyjwt(&claims, SECRET, "HS256", &json!({})),
        "HS256 without a kid",
    );
    lab.accepted(
        &pyjwt(&claims, rsa, "RS256", &json!({"kid": "r1"})),
        "RS256",
    );
    lab.accepted(&pyjwt(&claims, ed, "EdDSA", &json!({})), "EdDSA");
    let listed = Lab::claims(json!({"aud": ["other", "vendetta"]}));
    lab.accepted(&pyjwt(&listed, ed, "EdDSA", &json!({})), "aud as a list");
    // The static token still works beside JWTs.
    lab.accepted(TOKEN, "the static token");
}

#[test]
fn bad_tokens_are_refused_and_never_logged() {
    let lab = Lab::start();
    let rsa = lab.rsa_private.to_str().unwrap();
    let ed = lab.ed_private.to_str().unwrap();
    let t = now();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            pyjwt(
                &Lab::claims(json!({"exp": t - 120})),
                SECRET,
                "HS256",
                &json!({}),
            ),
            "expired",
            "JWT has expired",
        ),
        (
            pyjwt(
                &Lab::claims(json!({"nbf": t + 600})),
                ed,
                "EdDSA",
                &json!({}),
            ),
            "not valid yet",
            "JWT is not valid yet (nbf)",
        ),
        (
            pyjwt(
                &Lab::claims(json!({"iss": "mallory"})),
                rsa,
                "RS256",
                &json!({}),
            ),
            "wrong issuer",
            "JWT iss is not jwt.issuer",
        ),
        (
            pyjwt(
                &Lab::claims(json!({"aud": "someone-else"})),
                SECRET,
                "HS256",
                &json!({}),
            ),
            "wrong audience",
            "JWT aud does not name jwt.audience",
        ),
        (
            pyjwt(
                &Lab::claims(json!({"exp": null})),
                SECRET,
                "HS256",
                &json!({}),
            ),
            "no exp",
            "JWT has no exp",
        ),
        (
            pyjwt(&Lab::claims(json!({})), "", "none", &json!({})),
            "alg none",
            "JWT with alg none",
        ),
        (
            hs256_with(&lab.rsa_public, &Lab::claims(json!({}))),
            "HS256 signed with the RSA public key",
            "JWT signature does not verify",
        ),
        (
            pyjwt(
                &Lab::claims(json!({})),
                lab.other_rsa_private.to_str().unwrap(),
                "RS256",
                &json!({"kid": "r1"}),
            ),
            "signed by another RSA key",
            "JWT signature does not verify",
        ),
        (
            pyjwt(
                &Lab::claims(json!({})),
                "another-secret-of-at-least-32-bytes!!",
                "HS256",
                &json!({}),
            ),
            "signed with another secret",
            "JWT signature does not verify",
        ),
        (
            pyjwt(&Lab::claims(json!({})), rsa, "RS256", &json!({"kid": "h1"})),
            "a kid of another algorithm",
            "JWT kid names no key of its algorithm",
        ),
    ];
    for (token, what, reason) in &cases {
        lab.refused(token, what, reason);
    }
    // A valid token with its payload swapped for another's.
    let good = pyjwt(&Lab::claims(json!({})), SECRET, "HS256", &json!({}));
    let admin = pyjwt(
        &Lab::claims(json!({"sub": "root"})),
        "x".repeat(32).as_str(),
        "HS256",
        &json!({}),
    );
    let parts: Vec<&str> = good.split('.').collect();
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        admin.split('.').nth(1).unwrap(),
        parts[2]
    );
    lab.refused(
        &swapped,
        "tampered payload",
        "JWT signature does not verify",
    );
    assert!(lab.agent.is_alive());
}

#[test]
fn an_unusable_key_file_stops_the_config_check_with_its_key() {
    let dir = crate::util::TempDir::new("jwtcfg");
    let private = dir.path().join("k.pem");
    run_ok(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&private),
    );
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "jwt:\n  keys:\n    - {{kid: a, algorithm: HS256, secret: \"{SECRET}\"}}\n    - {{kid: b, algorithm: EdDSA, public_key_file: {}}}\n",
            private.display()
        ),
    )
    .unwrap();
    let out = Command::new(crate::util::BIN)
        .args(["agent", "config", "--check"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "vendetta: config file {}: key jwt.keys[1].public_key_file: {} holds a private key; give the agent only the public key (openssl pkey -pubout)",
            config.display(),
            private.display()
        )
    );
}

#[test]
fn scopes_limit_what_a_token_may_do() {
    let lab = Lab::start();
    let ed = lab.ed_private.to_str().unwrap();
    let reader = pyjwt(
        &Lab::claims(json!({"sub": "reader", "scope": "session:read other:thing"})),
        ed,
        "EdDSA",
        &json!({}),
    );
    let a = &lab.agent;
    let post = |token: &str, kind: &str, action: &str, params: Value| {
        a.post_path(
            "/api/v1/commands",
            &json!({"id": format!("sc-{}", crate::util::next_id()), "type": kind, "action": action, "params": params})
                .to_string(),
            Some(token),
        )
    };
    // Reading is allowed...
    assert_eq!(
        a.get_as("/api/v1/sessions?provider=lxc", Some(&reader)).0,
        200
    );
    let (status, r) = post(&reader, "service", "list", json!({"provider": "lxc"}));
    assert_eq!((status, &r["status"]), (200, &json!("success")), "{r}");
    // ...writing, exec and system are not.
    for (kind, action, params, scope) in [
        (
            "session",
            "create",
            json!({"session_id": "nope"}),
            "session:write",
        ),
        (
            "session",
            "exec",
            json!({"session_id": "nope", "command": ["true"]}),
            "session:exec",
        ),
        ("system", "status", json!({}), "system:read"),
    ] {
        api_error(
            post(&reader, kind, action, params),
            403,
            "forbidden_scope",
            &format!("jwt:reader lacks the scope {scope} that {kind}.{action} needs"),
        );
    }
    // admin may everything; a token whose claim names no scope, nothing.
    let admin = pyjwt(
        &Lab::claims(json!({"scope": "admin"})),
        ed,
        "EdDSA",
        &json!({}),
    );
    assert_eq!(post(&admin, "system", "status", json!({})).0, 200);
    let bare = pyjwt(&Lab::claims(json!({})), ed, "EdDSA", &json!({}));
    api_error(
        a.get_as("/api/v1/events", Some(&bare)),
        403,
        "forbidden_scope",
        "lacks the scope session:read that /api/v1/events needs",
    );
    // Reading a result by id needs only a valid token.
    assert_eq!(lab.probe(&bare).0, 404);
    let metrics = a.metrics();
    assert!(
        metrics.contains("vendetta_api_refusals_total{reason=\"forbidden_scope\"} 4"),
        "{metrics}"
    );
}

#[test]
fn the_static_token_has_the_scopes_the_config_grants() {
    let a = Agent::start("api_token_scopes: [system:read]\n");
    assert_eq!(a.cmd("system", "status", json!({}))["status"], "success");
    api_error(
        a.get("/api/v1/sessions"),
        403,
        "forbidden_scope",
        "api_token lacks the scope session:read that /api/v1/sessions needs",
    );
}
