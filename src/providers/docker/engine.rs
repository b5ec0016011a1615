//! The Docker Engine API as this agent speaks it: where the socket is, which
//! API version to use, and one call = one connection with timeouts.
//!
//! The version is negotiated from `GET /_ping` the way Docker's own client
//! does it: the engine's `Api-Version` (its newest), capped at the newest
//! version this agent was written against ([`MAX_API`]), and refused when
//! below [`MIN_API`]. It is never pinned: Docker 29.0-29.2 reject anything
//! older than 1.44, Docker 20.10 knows nothing newer than 1.41. The answer
//! is cached and renewed on every health probe, and forgotten whenever the
//! socket cannot be reached, so an engine that is upgraded or restarted is
//! picked up on its own.

use super::DockerError;
use crate::http::{self as http, HttpError, Request, Response};
use serde_json::Value;
use std::fmt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The oldest Engine API this agent uses: 1.40 (Docker 19.03).
///
/// Everything the provider sends exists by then (`Init` 1.25, `NanoCpus`
/// 1.25, exec `Env` 1.25 and `WorkingDir` 1.35, `PidsLimit` in
/// `HostConfig`), 1.40 is the floor current engines accept by default
/// (moby's default minimum is 1.40 since Docker 29.3), and every engine
/// older than 19.03 is long out of support. This machine's engine is 20.10
/// (API 1.41), the oldest we test against.
pub(crate) const MIN_API: ApiVersion = ApiVersion(1, 40);

/// The newest Engine API this agent was checked against (Docker 29.3-29.5).
/// The changelog from 1.41 to 1.56 changes nothing the provider sends or
/// reads; a newer engine is spoken to at this version.
pub(crate) const MAX_API: ApiVersion = ApiVersion(1, 54);

/// Responses larger than this are refused (a listing of thousands of
/// containers stays far below it).
const MAX_BODY: usize = 32 << 20;

/// An Engine API version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ApiVersion(pub(crate) u32, pub(crate) u32);

impl ApiVersion {
    pub(crate) fn parse(s: &str) -> Option<ApiVersion> {
        let (major, minor) = s.trim().split_once('.')?;
        Some(ApiVersion(major.parse().ok()?, minor.parse().ok()?))
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// The version to speak given the engine's `Api-Version` header.
pub(crate) fn negotiate(engine_max: Option<&str>) -> Result<ApiVersion, DockerError> {
    let Some(raw) = engine_max else {
        return Err(DockerError::ApiTooOld {
            engine: "unknown (no Api-Version header)".into(),
        });
    };
    let v = ApiVersion::parse(raw).ok_or_else(|| DockerError::BadAnswer {
        call: "GET /_ping".into(),
        detail: format!("Api-Version {raw:?} is not a version"),
    })?;
    if v < MIN_API {
        return Err(DockerError::ApiTooOld {
            engine: v.to_string(),
        });
    }
    Ok(v.min(MAX_API))
}

/// What a ping told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ping {
    /// The version we speak.
    pub(crate) api: ApiVersion,
    /// The engine's newest version.
    pub(crate) engine_api: String,
    /// The `Server` header, e.g. `Docker/20.10.24+dfsg1 (linux)`.
    pub(crate) server: String,
}

/// A connection factory for one engine socket.
pub(crate) struct Engine {
    pub(crate) socket: PathBuf,
    /// Bound on every call that has no longer bound of its own.
    pub(crate) timeout: Duration,
    negotiated: Mutex<Option<ApiVersion>>,
}

impl Engine {
    pub(crate) fn new(socket: PathBuf, timeout: Duration) -> Engine {
        Engine {
            socket,
            timeout,
            negotiated: Mutex::new(None),
        }
    }

    /// A fresh connection with read and write timeouts set to `timeout`.
    pub(crate) fn connect(&self, timeout: Duration) -> Result<UnixStream, DockerError> {
        let stream = UnixStream::connect(&self.socket).map_err(|e| {
            self.forget();
            connect_error(&self.socket, e)
        })?;
        let t = Some(timeout.max(Duration::from_millis(1)));
        stream
            .set_read_timeout(t)
            .and_then(|_| stream.set_write_timeout(t))
            .map_err(|e| DockerError::Connect {
                socket: self.socket.clone(),
                source: e,
            })?;
        Ok(stream)
    }

    fn forget(&self) {
        *self.negotiated.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// `GET /_ping` (the one unversioned call): is the engine there, and
    /// which version do we speak. Renews the cached version.
    pub(crate) fn ping(&self) -> Result<Ping, DockerError> {
        let timeout = self.timeout.min(Duration::from_secs(5));
        let stream = self.connect(timeout)?;
        let resp = http::request(stream, &Request::new("GET", "/_ping"), 4096)
            .map_err(|e| self.http_error("GET /_ping", self.timeout, e))?;
        if resp.status() != 200 {
            return Err(api_error("GET /_ping", &resp));
        }
        let engine_api = resp.head.header("api-version").map(str::to_string);
        let api = negotiate(engine_api.as_deref()).inspect_err(|_| self.forget())?;
        *self.negotiated.lock().unwrap_or_else(|p| p.into_inner()) = Some(api);
        Ok(Ping {
            api,
            engine_api: engine_api.unwrap_or_default(),
            server: resp.head.header("server").unwrap_or("").to_string(),
        })
    }

    /// The negotiated version, pinging when there is none yet.
    pub(crate) fn api(&self) -> Result<ApiVersion, DockerError> {
        if let Some(v) = *self.negotiated.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(v);
        }
        Ok(self.ping()?.api)
    }

    /// `/v{api}{path}`.
    pub(crate) fn target(&self, path: &str) -> Result<String, DockerError> {
        Ok(format!("/v{}{path}", self.api()?))
    }

    /// One versioned call with an optional JSON body, bounded by `timeout`.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        json: Option<&Value>,
        timeout: Duration,
    ) -> Result<Response, DockerError> {
        let target = self.target(path)?;
        let body = json.map(|v| v.to_string());
        let mut req = Request::new(method, &target);
        if let Some(b) = &body {
            req = req.json(b.as_bytes());
        }
        let stream = self.connect(timeout)?;
        let resp = http::request(stream, &req, MAX_BODY)
            .map_err(|e| self.http_error(&call_name(method, path), timeout, e))?;
        if resp.status() == 400 && message_of(&resp).contains("is too old") {
            // The engine's minimum is above what we speak.
            self.forget();
            return Err(DockerError::ApiRejected {
                message: message_of(&resp),
            });
        }
        Ok(resp)
    }

    /// A call whose success is 200 with a JSON body.
    pub(crate) fn get_json(&self, path: &str) -> Result<Value, DockerError> {
        let resp = self.call("GET", path, None, self.timeout)?;
        if resp.status() != 200 {
            return Err(api_error(&call_name("GET", path), &resp));
        }
        parse_json(&call_name("GET", path), &resp.body)
    }

    /// `timeout` is the limit the failed call had (for the message).
    pub(crate) fn http_error(
        &self,
        call: &str,
        timeout: Duration,
        source: HttpError,
    ) -> DockerError {
        if !source.is_timeout() {
            self.forget();
        }
        DockerError::Http {
            call: call.to_string(),
            socket: self.socket.clone(),
            timeout,
            source,
        }
    }
}

/// "GET /containers/x/json" without the query (which may be long).
pub(crate) fn call_name(method: &str, path: &str) -> String {
    format!("{method} {}", path.split('?').next().unwrap_or(path))
}

pub(crate) fn connect_error(socket: &Path, e: std::io::Error) -> DockerError {
    match e.kind() {
        std::io::ErrorKind::NotFound => DockerError::SocketMissing {
            socket: socket.to_path_buf(),
        },
        std::io::ErrorKind::PermissionDenied => DockerError::SocketPermission {
            socket: socket.to_path_buf(),
        },
        _ => DockerError::Connect {
            socket: socket.to_path_buf(),
            source: e,
        },
    }
}

/// The engine's error text: `{"message": …}` (API ≥ 1.24), else the body.
pub(crate) fn message_of(resp: &Response) -> String {
    serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&resp.body[..resp.body.len().min(500)])
                .trim()
                .to_string()
        })
}

pub(crate) fn api_error(call: &str, resp: &Response) -> DockerError {
    DockerError::Api {
        call: call.to_string(),
        status: resp.status(),
        message: message_of(resp),
    }
}

pub(crate) fn parse_json(call: &str, body: &[u8]) -> Result<Value, DockerError> {
    serde_json::from_slice(body).map_err(|e| DockerError::BadAnswer {
        call: call.to_string(),
        detail: format!("the body is not JSON ({e})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_within_bounds() {
        assert_eq!(negotiate(Some("1.41")).unwrap(), ApiVersion(1, 41));
        assert_eq!(negotiate(Some("1.40")).unwrap(), MIN_API);
        // A newer engine is spoken to at our newest version, never above.
        assert_eq!(negotiate(Some("1.99")).unwrap(), MAX_API);
        assert_eq!(negotiate(Some("2.0")).unwrap(), MAX_API);
        let e = negotiate(Some("1.39")).unwrap_err().to_string();
        assert!(e.contains("1.39") && e.contains("1.40"), "{e}");
        let e = negotiate(None).unwrap_err();
        assert!(matches!(e, DockerError::ApiTooOld { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("docker engine API unknown (no Api-Version header) is older than {MIN_API}, the oldest this agent speaks: upgrade the Docker Engine to 19.03 or newer")
        );
        let e = negotiate(Some("one.two")).unwrap_err();
        assert!(matches!(e, DockerError::BadAnswer { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "unexpected answer from the docker engine to GET /_ping: Api-Version \"one.two\" is not a version"
        );
        assert!(
            ApiVersion(1, 9) < ApiVersion(1, 10),
            "numeric, not text, order"
        );
    }

    /// A test double of an engine too old for us: a Unix socket that
    /// answers /_ping with Api-Version 1.30.
    #[test]
    fn old_engine_is_refused_clearly() {
        use std::io::{Read, Write};
        let dir = std::env::temp_dir().join(format!("vt-eng-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("old.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            s.write_all(b"HTTP/1.1 200 OK\r\nApi-Version: 1.30\r\nServer: Docker/17.06.0-ce (linux)\r\nContent-Length: 2\r\n\r\nOK")
                .unwrap();
        });
        let engine = Engine::new(sock.clone(), Duration::from_secs(2));
        let e = engine.ping().unwrap_err().to_string();
        server.join().unwrap();
        assert!(e.contains("1.30") && e.contains("upgrade"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn connect_errors_name_the_socket_and_the_fix() {
        use std::io::{Error, ErrorKind};
        let p = Path::new("/run/d.sock");
        let e = connect_error(p, Error::from(ErrorKind::PermissionDenied)).to_string();
        assert!(
            e.contains("permission denied") && e.contains("/run/d.sock"),
            "{e}"
        );
        let e = connect_error(p, Error::from(ErrorKind::ConnectionRefused)).to_string();
        assert!(e.contains("is the engine running"), "{e}");
        let e = connect_error(p, Error::from(ErrorKind::NotFound)).to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
