//! The container's config file: the marker lines that prove a container
//! is ours (`# vendetta.managed = true`, `# vendetta.node`,
//! `# vendetta.created`, `# vendetta.meta` with the session's record as one
//! JSON line), the rest of the config we render (network, workspace mount,
//! environment, limits), and reading it back to decide ownership. A
//! container without the marker, or with another node's, is never touched.

use super::{container_name, LxcError, LxcProvider};
use crate::config::LxcNetwork;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The marker lines, at the top of the config we render: comments to LXC,
/// so they survive the template and cost it nothing.
const MARKER: &str = "# vendetta.managed = true";
const NODE_KEY: &str = "# vendetta.node = ";
const CREATED_KEY: &str = "# vendetta.created = ";
const META_KEY: &str = "# vendetta.meta = ";

/// The session's record, kept in the container config as one JSON line.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Meta {
    pub(crate) session: String,
    pub(crate) image: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) command: Option<Vec<String>>,
    /// Whether /workspace is bind-mounted (then it is the default workdir).
    pub(crate) workspace: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) warnings: Vec<String>,
}

/// What the marker lines of a config say.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Marker {
    pub(crate) managed: bool,
    pub(crate) node: Option<String>,
    pub(crate) created: Option<String>,
    pub(crate) meta: Option<Meta>,
    /// The meta line was there but could not be parsed.
    pub(crate) meta_garbled: bool,
}

/// Reads the marker lines from a container config.
pub(crate) fn parse_marker(config: &str) -> Marker {
    let mut m = Marker::default();
    for line in config.lines() {
        let line = line.trim_end();
        if line == MARKER {
            m.managed = true;
        } else if let Some(v) = line.strip_prefix(NODE_KEY) {
            m.node = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix(CREATED_KEY) {
            m.created = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix(META_KEY) {
            match serde_json::from_str::<Meta>(v) {
                Ok(meta) => m.meta = Some(meta),
                Err(_) => m.meta_garbled = true,
            }
        }
    }
    m
}

/// Decides whether a container is ours: marked, by this node, for this id.
pub(crate) fn ownership(
    marker: &Marker,
    node_id: &str,
    id: &str,
    name: &str,
) -> Result<(Meta, String), LxcError> {
    let foreign = |reason: String| LxcError::Foreign {
        name: name.to_string(),
        reason,
    };
    if !marker.managed {
        return Err(foreign(
            "was not created by vendetta (no marker in its config)".into(),
        ));
    }
    match marker.node.as_deref() {
        Some(n) if n == node_id => {}
        Some(n) => {
            return Err(foreign(format!(
                "belongs to vendetta node {n}, not this node ({node_id})"
            )))
        }
        None => return Err(foreign("has a vendetta marker without a node id".into())),
    }
    let mut meta = marker.meta.clone().unwrap_or_default();
    if marker.meta_garbled || marker.meta.is_none() {
        meta.session = id.to_string();
        meta.warnings.push(
            "the vendetta metadata in the container config is unreadable; image, labels and env are unknown".into(),
        );
        // Its tenant is unknown: only admin may reach it.
        meta.labels.insert(
            crate::protocol::tenant::TENANT_LABEL.into(),
            crate::protocol::tenant::UNKNOWN_TENANT.into(),
        );
    }
    if meta.session != id {
        return Err(foreign(format!(
            "is marked for session {:?}, not {id:?}",
            meta.session
        )));
    }
    Ok((meta, marker.created.clone().unwrap_or_default()))
}

/// Escapes a host path for an fstab-format field (`lxc.mount.entry`):
/// space, tab, newline and backslash as octal, as getmntent(3) reads them.
pub(crate) fn fstab_escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

/// Everything the config file is made of.
pub(crate) struct ConfigInput<'a> {
    pub(crate) node_id: &'a str,
    pub(crate) created: &'a str,
    pub(crate) meta: &'a Meta,
    pub(crate) network: LxcNetwork,
    pub(crate) bridge: &'a str,
    pub(crate) workspace: Option<&'a Path>,
    pub(crate) limits: &'a [String],
}

/// The config file passed to `lxc-create -f`. The template appends its own
/// lines (rootfs, hostname, its mounts) after these.
pub(crate) fn render_config(c: &ConfigInput) -> String {
    let mut s = String::new();
    s.push_str("# Written by the vendetta agent. The lines below mark this container as a\n");
    s.push_str("# vendetta session; without them vendetta never touches it.\n");
    s.push_str(MARKER);
    s.push('\n');
    s.push_str(&format!("{NODE_KEY}{}\n", c.node_id));
    s.push_str(&format!("{CREATED_KEY}{}\n", c.created));
    // serde_json escapes control characters, so this stays one line.
    s.push_str(&format!(
        "{META_KEY}{}\n",
        serde_json::to_string(c.meta).unwrap_or_else(|_| "{}".into())
    ));
    match c.network {
        LxcNetwork::Empty => s.push_str("lxc.net.0.type = empty\n"),
        LxcNetwork::Veth => {
            s.push_str("lxc.net.0.type = veth\n");
            s.push_str(&format!("lxc.net.0.link = {}\n", c.bridge));
            s.push_str("lxc.net.0.flags = up\n");
        }
    }
    if let Some(ws) = c.workspace {
        // The target is relative to the rootfs; create=dir makes it.
        s.push_str(&format!(
            "lxc.mount.entry = {} workspace none bind,create=dir 0 0\n",
            fstab_escape(&ws.to_string_lossy())
        ));
    }
    for (k, v) in &c.meta.env {
        s.push_str(&format!("lxc.environment = {k}={v}\n"));
    }
    for l in c.limits {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// Checks that env keys and values fit config lines and `-v K=V`.
pub(crate) fn check_env(
    field: &'static str,
    env: &BTreeMap<String, String>,
) -> Result<(), LxcError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(LxcError::Spec {
                field,
                reason: format!("{k:?} is not a variable name lxc can pass (no '=', spaces or control characters)"),
            });
        }
        if v.contains(['\n', '\r', '\0']) {
            return Err(LxcError::Spec {
                field,
                reason: format!(
                    "the value of {k} holds a line break, which an lxc config line cannot carry"
                ),
            });
        }
    }
    Ok(())
}

/// A container of ours, as found on disk.
pub(crate) struct Owned {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) meta: Meta,
    pub(crate) created: String,
}

/// Removes a temporary file when dropped.
pub(crate) struct TempFile(pub(crate) PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl LxcProvider {
    /// Finds our container for `id`: Missing when there is no config,
    /// Foreign when the config lacks our marker.
    pub(crate) fn owned(&self, id: &str) -> Result<Owned, LxcError> {
        let name = container_name(id)?;
        let dir = self.dir(&name);
        let path = dir.join("config");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LxcError::Missing { id: id.to_string() })
            }
            Err(source) => {
                return Err(LxcError::Io {
                    step: "reading the container config",
                    path,
                    source,
                })
            }
        };
        let (meta, created) = ownership(&parse_marker(&text), &self.node_id, id, &name)?;
        Ok(Owned {
            name,
            dir,
            meta,
            created,
        })
    }

    /// Writes the create config to a private temporary file.
    pub(crate) fn write_temp_config(&self, name: &str, text: &str) -> Result<TempFile, LxcError> {
        let path = std::env::temp_dir().join(format!(
            "vendetta-lxc-{name}-{}.conf",
            crate::os::random::random_hex(6)
        ));
        let io_err = |source| LxcError::Io {
            step: "writing the container config",
            path: path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600) // it holds the session's env
            .open(&path)
            .map_err(io_err)?;
        let guard = TempFile(path.clone());
        f.write_all(text.as_bytes()).map_err(io_err)?;
        Ok(guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderError;

    fn meta() -> Meta {
        Meta {
            session: "web-1".into(),
            image: "busybox".into(),
            labels: [("team".to_string(), "a\nb \"c\"".to_string())].into(),
            env: [("GREETING".to_string(), "hello world".to_string())].into(),
            command: None,
            workspace: true,
            warnings: vec![],
        }
    }

    #[test]
    fn config_has_marker_network_mount_env_and_limits() {
        let m = meta();
        let limits = vec!["lxc.cgroup.memory.limit_in_bytes = 67108864".to_string()];
        let text = render_config(&ConfigInput {
            node_id: "node-1",
            created: "2026-11-27T00:00:00.000Z",
            meta: &m,
            network: LxcNetwork::Empty,
            bridge: "lxcbr0",
            workspace: Some(Path::new("/srv/ws with space\\x")),
            limits: &limits,
        });
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"# vendetta.managed = true"));
        assert!(lines.contains(&"# vendetta.node = node-1"));
        assert!(lines.contains(&"# vendetta.created = 2026-11-27T00:00:00.000Z"));
        assert!(lines.contains(&"lxc.net.0.type = empty"));
        assert!(!text.contains("lxc.net.0.link"));
        assert!(lines.contains(
            &"lxc.mount.entry = /srv/ws\\040with\\040space\\134x workspace none bind,create=dir 0 0"
        ));
        assert!(lines.contains(&"lxc.environment = GREETING=hello world"));
        assert!(lines.contains(&"lxc.cgroup.memory.limit_in_bytes = 67108864"));
        // Every line is a comment or a key = value line: the label's newline
        // and quotes stayed inside the JSON.
        for l in &lines {
            assert!(l.starts_with('#') || l.starts_with("lxc."), "{l:?}");
        }
        // What we wrote reads back as ours, with the same meta.
        let marker = parse_marker(&text);
        assert_eq!(marker.meta.as_ref(), Some(&m));
        let (back, created) = ownership(&marker, "node-1", "web-1", "vendetta-web-1").unwrap();
        assert_eq!(back, m);
        assert_eq!(created, "2026-11-27T00:00:00.000Z");
    }

    #[test]
    fn veth_network_names_the_bridge() {
        let m = meta();
        let text = render_config(&ConfigInput {
            node_id: "n",
            created: "t",
            meta: &m,
            network: LxcNetwork::Veth,
            bridge: "br-test",
            workspace: None,
            limits: &[],
        });
        assert!(text
            .contains("lxc.net.0.type = veth\nlxc.net.0.link = br-test\nlxc.net.0.flags = up\n"));
        assert!(!text.contains("lxc.mount.entry"));
    }

    #[test]
    fn ownership_refuses_what_we_did_not_make() {
        let foreign = parse_marker("lxc.net.0.type = empty\n# vendetta.node = node-1\n");
        let e = ownership(&foreign, "node-1", "x", "vendetta-x").unwrap_err();
        assert!(matches!(e, LxcError::Foreign { .. }));
        assert!(e.to_string().contains("no marker"), "{e}");
        let other = parse_marker("# vendetta.managed = true\n# vendetta.node = node-2\n");
        let e = ownership(&other, "node-1", "x", "vendetta-x").unwrap_err();
        assert!(e.to_string().contains("node-2"), "{e}");
        let wrong = parse_marker(
            "# vendetta.managed = true\n# vendetta.node = n\n# vendetta.meta = {\"session\":\"y\"}\n",
        );
        let e = ownership(&wrong, "n", "x", "vendetta-x").unwrap_err();
        assert!(matches!(e, LxcError::Foreign { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "lxc container vendetta-x is marked for session \"y\", not \"x\"; vendetta leaves it alone (pick another session id, or remove it by hand if it is stale)"
        );
        let garbled = parse_marker(
            "# vendetta.managed = true\n# vendetta.node = n\n# vendetta.meta = {oops\n",
        );
        let (m, _) = ownership(&garbled, "n", "x", "vendetta-x").unwrap();
        assert_eq!(m.session, "x");
        assert!(m.warnings[0].contains("unreadable"));
        assert_eq!(
            ProviderError::from(LxcError::Foreign {
                name: "n".into(),
                reason: "r".into()
            }),
            ProviderError::Conflict(
                "lxc container n r; vendetta leaves it alone (pick another session id, or remove it by hand if it is stale)".into()
            )
        );
    }

    #[test]
    fn env_that_cannot_be_carried_is_refused() {
        let ok: BTreeMap<String, String> = [("A_1".to_string(), " x = y ".to_string())].into();
        check_env("env", &ok).unwrap();
        for (k, v) in [
            ("A B", "x"),
            ("A\n", "x"),
            ("A", "line\nbreak"),
            ("A", "cr\r"),
        ] {
            let env: BTreeMap<String, String> = [(k.to_string(), v.to_string())].into();
            let e = check_env("env", &env).unwrap_err();
            assert!(e.to_string().starts_with("params.env: "), "{e}");
        }
    }

    #[test]
    fn escapes_fstab_fields() {
        assert_eq!(fstab_escape("/a b\tc\nd\\e"), "/a\\040b\\011c\\012d\\134e");
        assert_eq!(fstab_escape("/plain/path"), "/plain/path");
    }
}
