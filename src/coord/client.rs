//! The HTTP client for the coordination server: one ureq agent (shared
//! connection pool) for every thread of the link, a timeout on every call,
//! and answers sorted into what the link acts on.

use crate::config::Config;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// Largest body the agent reads from the server (a command batch).
pub(crate) const MAX_RESPONSE: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CoordError {
    /// Nothing answered: refused, reset, DNS, or no route.
    Unreachable {
        url: String,
        detail: String,
    },
    Timeout {
        url: String,
    },
    Tls {
        detail: String,
    },
    /// The server answered with a status the caller must handle.
    Status {
        url: String,
        status: u16,
        body: String,
    },
    /// The answer could not be used (too large, not JSON).
    BadBody {
        url: String,
        detail: String,
    },
    /// The client could not be set up (TLS files).
    Setup(String),
}

impl fmt::Display for CoordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoordError::Unreachable { url, detail } => {
                write!(f, "cannot reach the coordination server at {url}: {detail}")
            }
            CoordError::Timeout { url } => {
                write!(f, "the coordination server did not answer in time ({url})")
            }
            CoordError::Tls { detail } => write!(f, "{detail}"),
            CoordError::Status { url, status, body } => {
                write!(f, "the coordination server answered {status} to {url}")?;
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
                if *status == 401 || *status == 403 {
                    write!(f, "; check auth_token (VENDETTA_AUTH_TOKEN)")?;
                }
                Ok(())
            }
            CoordError::BadBody { url, detail } => {
                write!(f, "unusable answer from {url}: {detail}")
            }
            CoordError::Setup(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for CoordError {}

impl CoordError {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            CoordError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// 401/403: the server does not want us; retrying will not help.
    pub(crate) fn refused(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }
}

#[derive(Clone)]
pub(crate) struct CoordClient {
    base: String,
    host: String,
    /// tls.cert_file is set (it changes what a TLS alert means).
    client_cert: bool,
    /// The Authorization header value, when there is a token (never logged).
    auth: Option<String>,
    http: ureq::Agent,
}

/// A 2xx answer.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// The body as JSON; an empty body is `null`.
    pub(crate) fn json(&self) -> Option<Value> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Some(Value::Null);
        }
        serde_json::from_slice(&self.body).ok()
    }
}

impl CoordClient {
    pub(crate) fn new(config: &Config) -> Result<CoordClient, CoordError> {
        let base = config.coordination_url.trim_end_matches('/').to_string();
        let host = crate::config::url_authority(&base).to_string();
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(format!("vendetta-agent/{}", crate::VERSION))
            .timeout_connect(Some(Duration::from_secs(10)))
            .max_idle_connections_per_host(4)
            .max_idle_age(Duration::from_secs(90));
        if base.starts_with("https://") {
            let tls =
                super::tls::config(&config.tls).map_err(|e| CoordError::Setup(e.to_string()))?;
            builder = builder.tls_config(tls);
        }
        let auth = (!config.auth_token.is_empty())
            .then(|| format!("Bearer {}", config.auth_token.expose()));
        Ok(CoordClient {
            base,
            host,
            client_cert: config.tls.cert_file.is_some(),
            auth,
            http: builder.build().into(),
        })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request; 2xx comes back as `Reply`, anything else as an error.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Reply, CoordError> {
        let url = format!("{}{path}", self.base);
        macro_rules! prepare {
            ($req:expr) => {{
                let mut r = $req;
                if let Some(a) = &self.auth {
                    r = r.header("Authorization", a);
                }
                r.config().timeout_global(Some(timeout)).build()
            }};
        }
        let result = match (method, body) {
            ("GET", _) => prepare!(self.http.get(&url)).call(),
            ("DELETE", _) => prepare!(self.http.delete(&url)).call(),
            ("POST", Some(b)) => prepare!(self
                .http
                .post(&url)
                .header("Content-Type", "application/json"))
            .send(b.to_string()),
            ("PUT", Some(b)) => prepare!(self
                .http
                .put(&url)
                .header("Content-Type", "application/json"))
            .send(b.to_string()),
            ("POST", None) => prepare!(self.http.post(&url)).send_empty(),
            _ => prepare!(self.http.put(&url)).send_empty(),
        };
        let mut resp = result.map_err(|e| self.classify(&url, e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => CoordError::BadBody {
                    url: url.clone(),
                    detail: format!("the body is larger than {} MiB", MAX_RESPONSE >> 20),
                },
                other => self.classify(&url, other),
            })?;
        if (200..300).contains(&status) {
            Ok(Reply { status, body })
        } else {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string();
            Err(CoordError::Status {
                url,
                status,
                body: crate::protocol::command::clip(&text),
            })
        }
    }

    fn classify(&self, url: &str, e: ureq::Error) -> CoordError {
        let url = url.to_string();
        // rustls reports a failed handshake (and an alert read later) as an
        // io::Error wrapping its own error.
        let rustls_error = match &e {
            ureq::Error::Rustls(inner) => Some(inner),
            ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
            _ => None,
        };
        if let Some(inner) = rustls_error {
            return CoordError::Tls {
                detail: super::tls::explain(&self.host, inner, self.client_cert),
            };
        }
        match e {
            ureq::Error::Timeout(_) => CoordError::Timeout { url },
            ureq::Error::Tls(m) => CoordError::Tls {
                detail: format!("TLS with {} failed: {m}", self.host),
            },
            ureq::Error::Io(io)
                if io.kind() == std::io::ErrorKind::TimedOut
                    || io.kind() == std::io::ErrorKind::WouldBlock =>
            {
                CoordError::Timeout { url }
            }
            other => CoordError::Unreachable {
                url,
                detail: other.to_string(),
            },
        }
    }
}
