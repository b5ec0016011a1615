//! Small host probes shared by providers: is a tool on PATH, does a TCP
//! port answer.

use super::{ServiceHealth, Session};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The full path of `name` if it is an executable file on PATH (or `name`
/// itself when it holds a slash).
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_exec(p))
}

/// Healthy when every published TCP port accepts a connection on loopback.
pub(crate) fn tcp_ports(session: &Session) -> ServiceHealth {
    let host_ports: Vec<u16> = session
        .ports
        .iter()
        .filter(|(k, _)| k.ends_with("/tcp"))
        .map(|(_, host)| *host)
        .collect();
    tcp(IpAddr::from([127, 0, 0, 1]), &host_ports, "host port(s)")
}

/// Healthy when every port in `ports` accepts a TCP connection at `ip`
/// (within 500 ms each); `what` names the ports in the detail.
pub(crate) fn tcp(ip: IpAddr, ports: &[u16], what: &str) -> ServiceHealth {
    let health = |status: &str, detail: String| ServiceHealth {
        status: status.into(),
        source: "tcp".into(),
        detail,
    };
    if ports.is_empty() {
        return health("unknown", "no published TCP ports".into());
    }
    let closed: Vec<String> = ports
        .iter()
        .filter(|p| {
            TcpStream::connect_timeout(&SocketAddr::new(ip, **p), Duration::from_millis(500))
                .is_err()
        })
        .map(|p| p.to_string())
        .collect();
    if closed.is_empty() {
        health("healthy", String::new())
    } else {
        health(
            "unhealthy",
            format!("nothing answers on {what} {} at {ip}", closed.join(", ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProviderKind;
    use crate::providers::SessionStatus;

    #[test]
    fn finds_sh() {
        assert!(which("sh").is_some());
        assert!(which("definitely-not-a-tool-xyz").is_none());
    }

    #[test]
    fn probes_ports() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = crate::os::socket::closed_tcp_port().unwrap();
        let mut s = Session {
            id: "s".into(),
            provider: ProviderKind::Docker,
            status: SessionStatus::Running,
            image: String::new(),
            ports: [("80/tcp".to_string(), open)].into(),
            created: String::new(),
            labels: Default::default(),
            exit_code: None,
            warnings: vec![],
        };
        assert_eq!(tcp_ports(&s).status, "healthy");
        s.ports.insert("81/tcp".into(), closed.port);
        let h = tcp_ports(&s);
        assert_eq!(h.status, "unhealthy");
        assert!(h.detail.contains(&closed.port.to_string()), "{h:?}");
        s.ports.clear();
        assert_eq!(tcp_ports(&s).status, "unknown");
    }
}
