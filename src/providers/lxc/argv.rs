//! The command lines of the lxc tools: every one an argv (never a shell
//! string), with the session's input as separate arguments. The template
//! and its arguments come from the session's `image`, checked against
//! `lxc.template_args` before they reach `lxc-create`.

use super::{LxcError, PREFIX};
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

/// A template name plus the arguments a create passes to it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    pub(crate) name: String,
    pub(crate) args: Vec<String>,
}

/// Parses `image`: a template name, optionally followed by template
/// arguments (`download --dist debian --release bookworm --arch amd64`).
/// Each option must be in `allowed` (lxc.template_args); values are plain
/// words (letters, digits, `._:/+,@-`, not starting with `-`).
pub(crate) fn parse_image(image: &str, allowed: &[String]) -> Result<Template, LxcError> {
    let bad = |reason: String| LxcError::Spec {
        field: "image",
        reason,
    };
    let mut words = image.split_whitespace();
    let name = words
        .next()
        .ok_or_else(|| bad("names no lxc template".into()))?;
    let name_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok || name.len() > 64 {
        return Err(bad(format!(
            "{name:?} is not an lxc template name (lower-case letters, digits, - and _)"
        )));
    }
    let args: Vec<String> = words.map(str::to_string).collect();
    if args.len() > 32 {
        return Err(bad("at most 32 template arguments".into()));
    }
    let value_ok = |v: &str| {
        !v.starts_with('-')
            && !v.is_empty()
            && v.len() <= 256
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:/+,@-".contains(c))
    };
    let mut expect_value = false;
    for a in &args {
        if a.starts_with('-') {
            let (flag, value) = match a.split_once('=') {
                Some((f, v)) => (f, Some(v)),
                None => (a.as_str(), None),
            };
            if !allowed.iter().any(|x| x == flag) {
                return Err(bad(format!(
                    "template argument {flag:?} is not allowed; lxc.template_args allows {}",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                )));
            }
            if let Some(v) = value {
                if !value_ok(v) {
                    return Err(bad(format!(
                        "template argument value {v:?} is not a plain word"
                    )));
                }
            }
            expect_value = value.is_none();
        } else {
            if !expect_value {
                return Err(bad(format!(
                    "template argument {a:?} follows no allowed option"
                )));
            }
            if !value_ok(a) {
                return Err(bad(format!(
                    "template argument value {a:?} is not a plain word"
                )));
            }
            expect_value = false;
        }
    }
    Ok(Template {
        name: name.to_string(),
        args,
    })
}

/// One argument.
pub(crate) fn os(s: impl AsRef<std::ffi::OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

/// `-P path -n name`: every tool but lxc-ls names its container so.
pub(crate) fn base_args(lxcpath: &Path, name: &str) -> Vec<OsString> {
    vec![os("-P"), os(lxcpath), os("-n"), os(name)]
}

/// `lxc-create -P path -n name -t template -f conf [-- args]`
pub(crate) fn create_argv(lxcpath: &Path, name: &str, t: &Template, conf: &Path) -> Vec<OsString> {
    let mut a = base_args(lxcpath, name);
    a.extend([os("-t"), os(&t.name), os("-f"), os(conf)]);
    if !t.args.is_empty() {
        a.push(os("--"));
        a.extend(t.args.iter().map(os));
    }
    a
}

/// `lxc-start -P path -n name -d -o log -l WARN [-- command]`
pub(crate) fn start_argv(
    lxcpath: &Path,
    name: &str,
    log: &Path,
    command: Option<&[String]>,
) -> Vec<OsString> {
    let mut a = base_args(lxcpath, name);
    a.extend([os("-d"), os("-o"), os(log), os("-l"), os("WARN")]);
    if let Some(cmd) = command {
        a.push(os("--"));
        a.extend(cmd.iter().map(os));
    }
    a
}

/// `lxc-wait -P path -n name -s STATES -t secs`
pub(crate) fn wait_argv(lxcpath: &Path, name: &str, states: &str, secs: u64) -> Vec<OsString> {
    let mut a = base_args(lxcpath, name);
    a.extend([os("-s"), os(states), os("-t"), os(secs.to_string())]);
    a
}

/// `lxc-stop -P path -n name -k` when there is no grace, else
/// `-t secs` (LXC then kills after the grace itself). `-k` with `-t` is
/// rejected by lxc-stop, so they never go together.
pub(crate) fn stop_argv(lxcpath: &Path, name: &str, grace: Duration) -> Vec<OsString> {
    let mut a = base_args(lxcpath, name);
    if grace.is_zero() {
        a.push(os("-k"));
    } else {
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        a.extend([os("-t"), os(secs.to_string())]);
    }
    a
}

/// `lxc-destroy -P path -n name -f`
pub(crate) fn destroy_argv(lxcpath: &Path, name: &str) -> Vec<OsString> {
    let mut a = base_args(lxcpath, name);
    a.push(os("-f"));
    a
}

/// `lxc-info -P path -n name -s -H`: the bare state word.
pub(crate) fn state_argv(lxcpath: &Path, name: &str) -> Vec<OsString> {
    let mut a = base_args(lxcpath, name);
    a.extend([os("-s"), os("-H")]);
    a
}

/// `lxc-ls -P path -f -F NAME,STATE --filter ^vendetta-` (`-F` needs `-f`).
pub(crate) fn ls_argv(lxcpath: &Path) -> Vec<OsString> {
    vec![
        os("-P"),
        os(lxcpath),
        os("-f"),
        os("-F"),
        os("NAME,STATE"),
        os(format!("--filter=^{PREFIX}")),
    ]
}

/// "lxc-stop -n vendetta-x" for messages: the tool and the container.
pub(crate) fn step_name(tool: &str, args: &[OsString]) -> String {
    let name = args
        .iter()
        .position(|a| a == "-n")
        .and_then(|i| args.get(i + 1))
        .map(|n| format!(" -n {}", n.to_string_lossy()))
        .unwrap_or_default();
    format!("{tool}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn images_and_the_template_allowlist() {
        assert_eq!(
            parse_image("busybox", &[]).unwrap(),
            Template {
                name: "busybox".into(),
                args: vec![]
            }
        );
        let allow = vec!["--dist".to_string(), "--release".to_string()];
        let t = parse_image("download --dist debian --release=bookworm", &allow).unwrap();
        assert_eq!(t.args, ["--dist", "debian", "--release=bookworm"]);
        for (image, why) in [
            ("download --arch amd64", "not allowed"),
            ("download --dist", ""),
            ("download debian", "follows no allowed option"),
            ("download --dist $(reboot)", "not a plain word"),
            ("download --dist --release", ""),
            ("../../bin/sh", "not an lxc template name"),
            (
                "/usr/share/lxc/templates/lxc-busybox",
                "not an lxc template name",
            ),
            ("Busybox", "not an lxc template name"),
            ("  ", "names no lxc template"),
        ] {
            match parse_image(image, &allow) {
                // Options may be flags: the template itself judges its values.
                Ok(t) if why.is_empty() => assert_eq!(t.args[0], "--dist"),
                Ok(t) => panic!("{image:?} parsed as {t:?}"),
                Err(e) => assert!(e.to_string().contains(why), "{image:?}: {e}"),
            }
        }
        let e = parse_image("download --dist x", &[]).unwrap_err();
        assert!(
            e.to_string().contains("lxc.template_args allows none"),
            "{e}"
        );
    }

    #[test]
    fn argv_builders() {
        let p = Path::new("/var/lib/lxc");
        let t = Template {
            name: "download".into(),
            args: vec!["--dist".into(), "debian".into()],
        };
        assert_eq!(
            strs(&create_argv(p, "vendetta-a", &t, Path::new("/tmp/c.conf"))),
            [
                "-P",
                "/var/lib/lxc",
                "-n",
                "vendetta-a",
                "-t",
                "download",
                "-f",
                "/tmp/c.conf",
                "--",
                "--dist",
                "debian"
            ]
        );
        let busybox = Template {
            name: "busybox".into(),
            args: vec![],
        };
        assert!(!strs(&create_argv(p, "n", &busybox, Path::new("c"))).contains(&"--".to_string()));
        assert_eq!(
            strs(&start_argv(p, "n", Path::new("/l"), None)),
            [
                "-P",
                "/var/lib/lxc",
                "-n",
                "n",
                "-d",
                "-o",
                "/l",
                "-l",
                "WARN"
            ]
        );
        let cmd = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "sleep 1; exit 3".to_string(),
        ];
        assert_eq!(
            strs(&start_argv(p, "n", Path::new("/l"), Some(&cmd)))[9..],
            ["--", "/bin/sh", "-c", "sleep 1; exit 3"]
        );
        assert_eq!(
            strs(&wait_argv(p, "n", "RUNNING|STOPPED", 60))[4..],
            ["-s", "RUNNING|STOPPED", "-t", "60"]
        );
        // -k and -t never go together.
        assert_eq!(strs(&stop_argv(p, "n", Duration::ZERO))[4..], ["-k"]);
        assert_eq!(
            strs(&stop_argv(p, "n", Duration::from_secs(10)))[4..],
            ["-t", "10"]
        );
        assert_eq!(
            strs(&stop_argv(p, "n", Duration::from_millis(200)))[4..],
            ["-t", "1"]
        );
        assert_eq!(strs(&destroy_argv(p, "n"))[4..], ["-f"]);
        assert_eq!(strs(&state_argv(p, "n"))[4..], ["-s", "-H"]);
        assert_eq!(
            strs(&ls_argv(p)),
            [
                "-P",
                "/var/lib/lxc",
                "-f",
                "-F",
                "NAME,STATE",
                "--filter=^vendetta-"
            ]
        );
    }
}
