//! A client of the local API for the CLI: `vendetta session …`,
//! `service …`, `system …` and `agent status`.
//!
//! Where the agent is: `--agent URL`, else `VENDETTA_AGENT_URL`, else the
//! config's `listen`, its Unix socket first (`unix:/path`; when the
//! socket cannot be reached and `listen` also names a TCP address, that
//! is used). The token: `--token`, else `VENDETTA_API_TOKEN`, else the
//! config's `api_token` or `auth_token`, else the token the agent
//! generated into `cache_dir/api_token`.

use crate::config::{self, Config};
use crate::protocol::CommandId;
use serde_json::{json, Value};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) struct Client {
    /// Where the agent is, as messages name it: `http://…` or `unix:/…`.
    base: String,
    token: Option<String>,
    transport: Transport,
}

enum Transport {
    Tcp(ureq::Agent),
    /// The agent's socket, and the TCP address to use when it cannot be
    /// reached (not there, or not ours to open).
    Unix {
        path: PathBuf,
        fallback: Option<String>,
    },
}

/// An answer whose body is still to be read.
struct Sent {
    status: u16,
    content_type: String,
    body: Box<dyn Read>,
}

/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) enum ClientError {
    /// Nothing answers at the address: the agent is not running there.
    Unreachable {
        url: String,
        source: String,
    },
    /// The agent answered with an error document.
    Api {
        status: u16,
        message: String,
        code: String,
    },
    /// The agent's answer could not be read.
    BadResponse {
        url: String,
        message: String,
    },
    Config(config::ConfigError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable { url, source } => write!(
                f,
                "cannot reach the agent at {url} ({source}): is it running? (`vendetta agent status`; set --agent or VENDETTA_AGENT_URL if it listens elsewhere)"
            ),
            ClientError::Api { status, message, code } => {
                write!(f, "{message} (HTTP {status}")?;
                if !code.is_empty() {
                    write!(f, ", {code}")?;
                }
                write!(f, ")")?;
                if *status == 401 {
                    write!(f, "; pass --token or set VENDETTA_API_TOKEN")?;
                }
                Ok(())
            }
            ClientError::BadResponse { url, message } => write!(f, "unreadable answer from {url}: {message}"),
            ClientError::Config(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// An answer: HTTP status and JSON body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Client {
    /// Builds a client from flags, environment and (if present) the config.
    pub(crate) fn new(
        agent: Option<String>,
        token: Option<String>,
        config_path: Option<&Path>,
    ) -> Result<Client, ClientError> {
        let unset = |k: &str| std::env::var(k).map(|v| v.is_empty()).unwrap_or(true);
        let needs_config = agent.is_none() && unset("VENDETTA_AGENT_URL")
            || token.is_none() && unset("VENDETTA_API_TOKEN");
        let cfg: Config = if needs_config {
            config::load(config_path)
                .map_err(ClientError::Config)?
                .config
        } else {
            Config::default()
        };
        let tcp = cfg.listen.tcp.map(|a| format!("http://{a}"));
        let chosen = agent.or_else(|| {
            std::env::var("VENDETTA_AGENT_URL")
                .ok()
                .filter(|v| !v.is_empty())
        });
        let (base, fallback) = match chosen {
            Some(url) => (url, None),
            None => match &cfg.listen.unix {
                Some(path) => (format!("unix:{}", path.display()), tcp),
                None => (tcp.unwrap_or_default(), None),
            },
        };
        let base = base.trim_end_matches('/').to_string();
        let token = token
            .or_else(|| {
                std::env::var("VENDETTA_API_TOKEN")
                    .ok()
                    .filter(|v| !v.is_empty())
            })
            .or_else(|| (!cfg.api_token.is_empty()).then(|| cfg.api_token.expose().to_string()))
            .or_else(|| (!cfg.auth_token.is_empty()).then(|| cfg.auth_token.expose().to_string()))
            .or_else(|| crate::store::node::read_api_token(&cfg.cache_dir()));
        let transport = match base.strip_prefix("unix:") {
            Some(path) => Transport::Unix {
                path: PathBuf::from(path.strip_prefix("//").unwrap_or(path)),
                fallback: fallback.map(|f| f.trim_end_matches('/').to_string()),
            },
            None => Transport::Tcp(tcp_agent()),
        };
        Ok(Client {
            base,
            token,
            transport,
        })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, source: String) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            source,
        }
    }

    /// Sends one request, a POST of JSON `body` or a GET; `path` holds the
    /// query.
    fn send(&self, path: &str, body: Option<&[u8]>) -> Result<Sent, ClientError> {
        let method = if body.is_some() { "POST" } else { "GET" };
        match &self.transport {
            Transport::Tcp(http) => self.send_tcp(http, &self.base, path, body),
            Transport::Unix {
                path: socket,
                fallback,
            } => {
                let deadline = Instant::now() + CONNECT_TIMEOUT;
                let stream = match crate::os::socket::connect_unix(socket, deadline) {
                    Ok(s) => s,
                    Err(e) => {
                        return match fallback {
                            // Not there, or not ours: the TCP address then.
                            Some(base) => self.send_tcp(&tcp_agent(), base, path, body),
                            None => Err(self.unreachable(e.to_string())),
                        };
                    }
                };
                let mut req = crate::http::Request::new(method, path);
                if let Some(t) = &self.token {
                    req = req.bearer(t);
                }
                if let Some(b) = body {
                    req = req.json(b);
                }
                let (head, body) = crate::http::request_streaming(stream, &req)
                    .map_err(|e| self.unreachable(e.to_string()))?;
                Ok(Sent {
                    status: head.status,
                    content_type: head.header("content-type").unwrap_or("").to_string(),
                    body: Box::new(BodyReader(body)),
                })
            }
        }
    }

    fn send_tcp(
        &self,
        http: &ureq::Agent,
        base: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Sent, ClientError> {
        let url = format!("{base}{path}");
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let resp = match body {
            None => {
                let mut r = http.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            Some(b) => {
                let mut r = http.post(&url).header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(b)
            }
        };
        let resp = resp.map_err(|e| self.unreachable(e.to_string()))?;
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok(Sent {
            status: resp.status().as_u16(),
            content_type,
            body: Box::new(resp.into_body().into_with_config().limit(u64::MAX).reader()),
        })
    }

    /// The whole answer, as JSON (or a string, if it is not JSON).
    fn read(&self, sent: Result<Sent, ClientError>) -> Result<Answer, ClientError> {
        let sent = sent?;
        let mut text = String::new();
        sent.body
            .take(256 << 20)
            .read_to_string(&mut text)
            .map_err(|e| ClientError::BadResponse {
                url: self.base.clone(),
                message: e.to_string(),
            })?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer {
            status: sent.status,
            body,
        })
    }

    pub(crate) fn get(&self, path: &str) -> Result<Answer, ClientError> {
        self.read(self.send(path, None))
    }

    /// Posts a new command (with a fresh id) to `/api/v1/commands{query}`.
    fn post_command(
        &self,
        query: &str,
        kind: &str,
        action: &str,
        params: Value,
        timeout: Option<Duration>,
    ) -> (CommandId, Result<Sent, ClientError>) {
        let mut random = [0u8; 8];
        crate::os::random::random_bytes(&mut random);
        let id = CommandId::generated("cli", random);
        let mut cmd = json!({"id": id, "type": kind, "action": action, "params": params});
        if let Some(t) = timeout {
            cmd["timeout"] = Value::from(crate::protocol::duration::format(t));
        }
        let sent = self.send(
            &format!("/api/v1/commands{query}"),
            Some(cmd.to_string().as_bytes()),
        );
        (id, sent)
    }

    /// The result document of a command answered with one JSON document:
    /// after polling if it was 202, an error if it is not a result.
    fn settle(&self, id: &CommandId, answer: Answer) -> Result<Value, ClientError> {
        let answer = if answer.status == 202 {
            self.poll(id)?
        } else {
            answer
        };
        match answer.status {
            200 | 400 | 403 | 404 if answer.body.get("status").is_some() => Ok(answer.body),
            _ => Err(api_error(answer)),
        }
    }

    /// Runs a command synchronously and returns its result document.
    /// A 202 (still running past the agent's wait) is followed by polling.
    pub(crate) fn command(
        &self,
        kind: &str,
        action: &str,
        params: Value,
        timeout: Option<Duration>,
    ) -> Result<Value, ClientError> {
        let (id, sent) = self.post_command("", kind, action, params, timeout);
        let answer = self.read(sent)?;
        self.settle(&id, answer)
    }

    /// Runs a command with `?stream=true`: `on_output(stream, text)` gets
    /// exec output as it arrives; returns the result document.
    pub(crate) fn command_streaming(
        &self,
        kind: &str,
        action: &str,
        params: Value,
        mut on_output: impl FnMut(&str, &str),
    ) -> Result<Value, ClientError> {
        use std::io::BufRead;
        let (id, sent) = self.post_command("?stream=true", kind, action, params, None);
        let sent = sent?;
        let status = sent.status;
        if !sent.content_type.starts_with("application/x-ndjson") {
            // Answered at once (a stored or refused command): one JSON document.
            let answer = self.read(Ok(sent))?;
            return self.settle(&id, answer);
        }
        let bad = |m: String| ClientError::BadResponse {
            url: self.base.clone(),
            message: m,
        };
        let reader = std::io::BufReader::new(sent.body);
        for line in reader.lines() {
            let line = line.map_err(|e| bad(format!("stream broke off: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value =
                serde_json::from_str(&line).map_err(|e| bad(format!("bad stream line: {e}")))?;
            if let (Some(stream), Some(data)) = (v["stream"].as_str(), v["data"].as_str()) {
                on_output(stream, data);
            } else if v.get("result").is_some() {
                return Ok(v["result"].clone());
            } else if v["status"] == "running" {
                return Ok(self.poll(&id)?.body);
            } else {
                return Err(api_error(Answer { status, body: v }));
            }
        }
        Err(bad("the stream ended without a result".into()))
    }

    fn poll(&self, id: &CommandId) -> Result<Answer, ClientError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let a = self.get(&format!("/api/v1/commands/{id}"))?;
            if a.status != 202 {
                return Ok(a);
            }
            if started.elapsed() > Duration::from_secs(24 * 3600) {
                return Err(ClientError::BadResponse {
                    url: self.base.clone(),
                    message: format!("command {id} never finished"),
                });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

fn tcp_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .user_agent(format!("vendetta-cli/{}", crate::VERSION))
        .build()
        .into()
}

/// A body read from the agent's socket, as `Read`.
struct BodyReader(crate::http::Body<std::os::unix::net::UnixStream>);

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read_some(buf).map_err(std::io::Error::other)
    }
}

pub(crate) fn api_error(a: Answer) -> ClientError {
    let message = a
        .body
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| a.body.to_string());
    let code = a
        .body
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    ClientError::Api {
        status: a.status,
        message,
        code,
    }
}
