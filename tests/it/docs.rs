//! Man pages lint clean and document what the code has.

use crate::util::run_ok;
use std::process::Command;

fn man_pages() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let mut pages: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    pages.sort();
    pages
}

#[test]
fn man_pages_pass_mandoc_lint() {
    let pages = man_pages();
    assert!(pages.len() >= 3, "{pages:?}");
    for p in pages {
        run_ok(
            Command::new("mandoc")
                .args(["-T", "lint", "-W", "warning"])
                .arg(&p),
        );
    }
}

#[test]
fn every_env_var_and_exit_code_is_in_the_agent_page() {
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man/vendetta-agent.1"),
    )
    .unwrap();
    for var in [
        "VENDETTA_CONFIG",
        "VENDETTA_COORD_URL",
        "VENDETTA_AUTH_TOKEN",
        "VENDETTA_PROVIDER",
        "VENDETTA_LOG_LEVEL",
        "VENDETTA_DEBUG_PPROF",
        "VENDETTA_AGENT_URL",
        "VENDETTA_API_TOKEN",
    ] {
        assert!(page.contains(var), "vendetta-agent(1) lacks {var}");
    }
    // mdoc writes a long option as `.Fl -config`.
    for flag in ["config", "timeout", "json", "check", "token", "agent"] {
        assert!(
            page.contains(&format!("Fl -{flag}")),
            "vendetta-agent(1) lacks --{flag}"
        );
    }
}
