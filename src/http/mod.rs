//! A small blocking HTTP/1.1 client for local daemons on Unix sockets:
//! the Docker Engine, and for the CLI the agent's own API socket.
//!
//! It owns the wire format only: writing a request (always with `Host`,
//! `Content-Length` and `Connection: close`), reading the status line and
//! headers (httparse), and reading a body framed by `Content-Length`, by
//! chunked transfer coding, or by the end of the connection. Responses to
//! HEAD and 1xx/204/304 never have a body, whatever their headers say. A
//! hijacked connection (`Upgrade: tcp`, as Docker's exec start uses) is
//! handed back as a [`Conn`] that serves the bytes already read past the
//! headers before reading the socket again.
//!
//! One connection per request: Docker's engine is local, a connect costs
//! microseconds, and a fresh connection can never be left half-read by an
//! earlier call. Everything is generic over `Read + Write` so unit tests
//! feed canned bytes; timeouts are the socket's read and write timeouts,
//! set by the caller, and a timed-out read surfaces as
//! [`HttpError::TimedOut`].

use std::fmt;
use std::io::{self, Read, Write};

#[cfg(test)]
pub(crate) mod canned;

/// Longest status line plus headers we accept.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line we accept.
const MAX_LINE: usize = 4096;
const MAX_HEADERS: usize = 64;

/// What went wrong on the wire.
#[derive(Debug)]
pub(crate) enum HttpError {
    /// A read or write failed.
    Io {
        step: &'static str,
        source: io::Error,
    },
    /// The socket's timeout passed while waiting for the peer.
    TimedOut { step: &'static str },
    /// The peer closed the connection before the response was complete.
    Closed { step: &'static str },
    /// The bytes are not HTTP/1.1 as we know it.
    Malformed(String),
    /// A head or body is larger than we agreed to hold.
    TooLarge { what: &'static str, limit: usize },
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Io { step, source } => write!(f, "{step}: {source}"),
            HttpError::TimedOut { step } => write!(f, "{step}: timed out"),
            HttpError::Closed { step } => {
                write!(
                    f,
                    "{step}: connection closed before the end of the response"
                )
            }
            HttpError::Malformed(m) => write!(f, "malformed response: {m}"),
            HttpError::TooLarge { what, limit } => {
                write!(f, "{what} is larger than the {limit} bytes allowed")
            }
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl HttpError {
    fn io(step: &'static str, e: io::Error) -> HttpError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HttpError::TimedOut { step },
            io::ErrorKind::UnexpectedEof => HttpError::Closed { step },
            _ => HttpError::Io { step, source: e },
        }
    }

    /// Whether the socket's timeout fired.
    pub(crate) fn is_timeout(&self) -> bool {
        matches!(self, HttpError::TimedOut { .. })
    }
}

/// One request. `target` is the path and query, already percent-encoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) target: &'a str,
    /// A JSON body (sent with `Content-Type: application/json`).
    pub(crate) json: Option<&'a [u8]>,
    /// Ask for a hijacked connection (`Connection: Upgrade`, `Upgrade: tcp`).
    pub(crate) upgrade: bool,
    /// Sent as `Authorization: Bearer …`.
    pub(crate) bearer: Option<&'a str>,
}

impl<'a> Request<'a> {
    pub(crate) fn new(method: &'a str, target: &'a str) -> Request<'a> {
        Request {
            method,
            target,
            json: None,
            upgrade: false,
            bearer: None,
        }
    }

    pub(crate) fn bearer(mut self, token: &'a str) -> Request<'a> {
        self.bearer = Some(token);
        self
    }

    pub(crate) fn json(mut self, body: &'a [u8]) -> Request<'a> {
        self.json = Some(body);
        self
    }

    pub(crate) fn upgrade(mut self) -> Request<'a> {
        self.upgrade = true;
        self
    }
}

/// Writes `req` in one buffer. Bodiless POST/PUT/DELETE still get
/// `Content-Length: 0` (Docker refuses a start with a body of unknown
/// length).
pub(crate) fn write_request<W: Write>(w: &mut W, req: &Request) -> Result<(), HttpError> {
    let mut out = Vec::with_capacity(256 + req.json.map_or(0, <[u8]>::len));
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    // The engine is a Go server: it insists on a Host header that is a
    // valid host name, so never the socket path.
    out.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nUser-Agent: vendetta/");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(token) = req.bearer {
        out.extend_from_slice(b"Authorization: Bearer ");
        out.extend_from_slice(token.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if req.upgrade {
        out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: tcp\r\n");
    } else {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    match req.json {
        Some(body) => {
            out.extend_from_slice(b"Content-Type: application/json\r\n");
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        }
        None if req.method == "GET" || req.method == "HEAD" => out.extend_from_slice(b"\r\n"),
        None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
    }
    w.write_all(&out)
        .and_then(|_| w.flush())
        .map_err(|e| HttpError::io("sending the request", e))
}

/// A status line and its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
}

impl Head {
    /// The first header called `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) head: Head,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn status(&self) -> u16 {
        self.head.status
    }
}

/// A stream with a read buffer in front. Bytes read past the headers stay
/// in the buffer and are served first, which is what a hijacked stream
/// needs.
pub(crate) struct Conn<S> {
    inner: S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S> Conn<S> {
    pub(crate) fn new(inner: S) -> Conn<S> {
        Conn {
            inner,
            buf: Vec::new(),
            pos: 0,
        }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }
}

impl<S: Read> Conn<S> {
    /// Reads more bytes into the buffer; 0 means end of stream.
    fn fill(&mut self, step: &'static str) -> Result<usize, HttpError> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 8192];
        loop {
            match self.inner.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HttpError::io(step, e)),
            }
        }
    }

    /// Reads the status line and headers.
    pub(crate) fn read_head(&mut self) -> Result<Head, HttpError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(self.buffered()) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = Head {
                        status: resp.code.unwrap_or(0),
                        headers: resp
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).trim().to_string(),
                                )
                            })
                            .collect(),
                    };
                    self.consume(len);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {
                    if self.buffered().len() > MAX_HEAD {
                        return Err(HttpError::TooLarge {
                            what: "the response head",
                            limit: MAX_HEAD,
                        });
                    }
                }
                Err(e) => {
                    let start =
                        String::from_utf8_lossy(&self.buffered()[..self.buffered().len().min(60)])
                            .into_owned();
                    return Err(HttpError::Malformed(format!(
                        "bad status line or headers ({e}) in {start:?}"
                    )));
                }
            }
            if self.fill("reading the response head")? == 0 {
                return Err(HttpError::Closed {
                    step: "reading the response head",
                });
            }
        }
    }

    /// Reads one CRLF-terminated line (without the CRLF).
    fn read_line(&mut self, step: &'static str) -> Result<Vec<u8>, HttpError> {
        loop {
            if let Some(i) = self.buffered().iter().position(|&b| b == b'\n') {
                let mut line = self.buffered()[..i].to_vec();
                self.consume(i + 1);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buffered().len() > MAX_LINE {
                return Err(HttpError::TooLarge {
                    what: "a chunk-size line",
                    limit: MAX_LINE,
                });
            }
            if self.fill(step)? == 0 {
                return Err(HttpError::Closed { step });
            }
        }
    }
}

impl<S: Read> Read for Conn<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buffered().is_empty() {
            // Nothing buffered: read straight into the caller's buffer.
            return self.inner.read(out);
        }
        let n = self.buffered().len().min(out.len());
        out[..n].copy_from_slice(&self.buffered()[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The framing of the body that follows `head`, per RFC 9112 §6.3.
pub(crate) fn framing(method: &str, head: &Head) -> Result<Framing, HttpError> {
    if method == "HEAD" || (100..200).contains(&head.status) || matches!(head.status, 204 | 304) {
        return Ok(Framing::Empty);
    }
    if let Some(te) = head.header("transfer-encoding") {
        if te
            .rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        {
            return Ok(Framing::Chunked);
        }
        return Err(HttpError::Malformed(format!(
            "unsupported Transfer-Encoding {te:?}"
        )));
    }
    if let Some(cl) = head.header("content-length") {
        return cl
            .parse::<u64>()
            .map(Framing::Length)
            .map_err(|_| HttpError::Malformed(format!("bad Content-Length {cl:?}")));
    }
    Ok(Framing::UntilClose)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// Bytes left in a Content-Length body.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Bytes left in the current chunk.
    ChunkData(u64),
    UntilClose,
    Done,
}

/// A response body as a byte stream, de-chunked.
pub(crate) struct Body<S> {
    conn: Conn<S>,
    state: BodyState,
}

impl<S: Read> Body<S> {
    pub(crate) fn new(conn: Conn<S>, framing: Framing) -> Body<S> {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::ChunkSize,
            Framing::UntilClose => BodyState::UntilClose,
        };
        Body { conn, state }
    }

    /// Reads the rest of the body, refusing more than `max` bytes.
    pub(crate) fn read_all(&mut self, max: usize) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = self.read_some(&mut chunk)?;
            if n == 0 {
                return Ok(out);
            }
            if out.len() + n > max {
                return Err(HttpError::TooLarge {
                    what: "the response body",
                    limit: max,
                });
            }
            out.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads the next bytes of the body; 0 at its end.
    pub(crate) fn read_some(&mut self, out: &mut [u8]) -> Result<usize, HttpError> {
        loop {
            match self.state {
                BodyState::Done => return Ok(0),
                BodyState::ChunkSize => {
                    let line = self.conn.read_line("reading a chunk size")?;
                    let size = parse_chunk_size(&line)?;
                    if size == 0 {
                        // Skip any trailer fields up to the empty line.
                        while !self
                            .conn
                            .read_line("reading the chunked trailer")?
                            .is_empty()
                        {}
                        self.state = BodyState::Done;
                    } else {
                        self.state = BodyState::ChunkData(size);
                    }
                }
                BodyState::ChunkData(left) | BodyState::Length(left) => {
                    let want = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = self
                        .conn
                        .read(&mut out[..want])
                        .map_err(|e| HttpError::io("reading the response body", e))?;
                    if n == 0 {
                        return Err(HttpError::Closed {
                            step: "reading the response body",
                        });
                    }
                    let left = left - n as u64;
                    self.state = match (self.state, left) {
                        (BodyState::ChunkData(_), 0) => {
                            let end = self.conn.read_line("reading the end of a chunk")?;
                            if !end.is_empty() {
                                return Err(HttpError::Malformed(
                                    "chunk data longer than its size".into(),
                                ));
                            }
                            BodyState::ChunkSize
                        }
                        (BodyState::ChunkData(_), left) => BodyState::ChunkData(left),
                        (_, 0) => BodyState::Done,
                        (_, left) => BodyState::Length(left),
                    };
                    return Ok(n);
                }
                BodyState::UntilClose => {
                    let n = self
                        .conn
                        .read(out)
                        .map_err(|e| HttpError::io("reading the response body", e))?;
                    if n == 0 {
                        self.state = BodyState::Done;
                    }
                    return Ok(n);
                }
            }
        }
    }
}

impl<S: Read> Read for Body<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.read_some(out).map_err(|e| match e {
            HttpError::Io { source, .. } => source,
            HttpError::TimedOut { .. } => io::Error::new(io::ErrorKind::TimedOut, e.to_string()),
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        })
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let text = std::str::from_utf8(line).unwrap_or("");
    // Chunk extensions (";name=value") are allowed and ignored.
    let hex = text.split(';').next().unwrap_or("").trim();
    if hex.is_empty() || hex.len() > 15 {
        return Err(HttpError::Malformed(format!(
            "bad chunk size line {text:?}"
        )));
    }
    u64::from_str_radix(hex, 16)
        .map_err(|_| HttpError::Malformed(format!("bad chunk size line {text:?}")))
}

/// Sends `req` on `stream` and reads the whole response (body up to
/// `max_body` bytes).
pub(crate) fn request<S: Read + Write>(
    stream: S,
    req: &Request,
    max_body: usize,
) -> Result<Response, HttpError> {
    let (head, mut body) = request_streaming(stream, req)?;
    let body = body.read_all(max_body)?;
    Ok(Response { head, body })
}

/// Sends `req` and returns the head with the body still to be read (for
/// long progress streams).
pub(crate) fn request_streaming<S: Read + Write>(
    mut stream: S,
    req: &Request,
) -> Result<(Head, Body<S>), HttpError> {
    write_request(&mut stream, req)?;
    let mut conn = Conn::new(stream);
    let head = read_head_skipping_continue(&mut conn)?;
    let framing = framing(req.method, &head)?;
    Ok((head, Body::new(conn, framing)))
}

fn read_head_skipping_continue<S: Read>(conn: &mut Conn<S>) -> Result<Head, HttpError> {
    loop {
        let head = conn.read_head()?;
        // A stray 100 Continue is followed by the real answer.
        if head.status != 100 {
            return Ok(head);
        }
    }
}

/// What a request for a hijacked connection got.
pub(crate) enum Hijack<S> {
    /// 101 (or 200 from engines that upgrade without saying so): the raw
    /// stream follows, starting with any bytes read past the headers.
    Stream(Head, Conn<S>),
    /// An ordinary answer, typically an error, with its body.
    Answer(Response),
}

/// Sends `req` (which should carry [`Request::upgrade`]) and, when the
/// peer switches protocols, returns the raw stream.
pub(crate) fn hijack<S: Read + Write>(
    mut stream: S,
    req: &Request,
    max_body: usize,
) -> Result<Hijack<S>, HttpError> {
    write_request(&mut stream, req)?;
    let mut conn = Conn::new(stream);
    let head = conn.read_head()?;
    if head.status == 101 || head.status == 200 {
        return Ok(Hijack::Stream(head, conn));
    }
    let framing = framing(req.method, &head)?;
    let body = Body::new(conn, framing).read_all(max_body)?;
    Ok(Hijack::Answer(Response { head, body }))
}

/// Percent-encodes a query value or path segment (RFC 3986 unreserved
/// characters pass through).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::canned::Canned;

    fn get(input: &[u8], step: usize) -> Result<Response, HttpError> {
        request(
            Canned::in_pieces(input, step),
            &Request::new("GET", "/v1.41/info"),
            1 << 20,
        )
    }

    #[test]
    fn writes_host_length_and_close() {
        let mut c = Canned::in_pieces(b"HTTP/1.1 204 No Content\r\n\r\n", 100);
        let r = request(
            &mut c,
            &Request::new("POST", "/v1.41/containers/x/start"),
            10,
        )
        .unwrap();
        assert_eq!(r.status(), 204);
        let sent = String::from_utf8(c.written).unwrap();
        assert!(
            sent.starts_with("POST /v1.41/containers/x/start HTTP/1.1\r\nHost: localhost\r\n"),
            "{sent}"
        );
        assert!(sent.contains("Connection: close\r\n"), "{sent}");
        assert!(sent.ends_with("Content-Length: 0\r\n\r\n"), "{sent}");

        let mut c = Canned::in_pieces(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}", 100);
        request(&mut c, &Request::new("POST", "/c").json(br#"{"a":1}"#), 10).unwrap();
        let sent = String::from_utf8(c.written).unwrap();
        assert!(
            sent.contains("Content-Type: application/json\r\n"),
            "{sent}"
        );
        assert!(
            sent.ends_with("Content-Length: 7\r\n\r\n{\"a\":1}"),
            "{sent}"
        );
        assert!(!sent.contains("Authorization"), "{sent}");
        let mut c = Canned::in_pieces(b"HTTP/1.1 200 OK\r\n\r\n", 100);
        request(&mut c, &Request::new("GET", "/health").bearer("t0k"), 10).unwrap();
        let sent = String::from_utf8(c.written).unwrap();
        assert!(sent.contains("\r\nAuthorization: Bearer t0k\r\n"), "{sent}");
    }

    #[test]
    fn content_length_body_split_one_byte_at_a_time() {
        let raw = b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 5\r\n\r\nhello";
        let r = get(raw, 1).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.head.header("api-version"), Some("1.41"));
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\nB\r\n:[1,2,3,4]}\r\n0\r\nX-Trailer: y\r\n\r\n";
        for step in [1, 3, 7, 1000] {
            let r = get(raw, step).unwrap();
            assert_eq!(r.body, br#"{"a":[1,2,3,4]}"#, "step {step}");
        }
    }

    #[test]
    fn no_body_for_204_304_whatever_the_headers() {
        let r = get(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            100,
        )
        .unwrap();
        assert_eq!((r.status(), r.body.len()), (304, 0));
        let r = get(
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
            100,
        )
        .unwrap();
        assert_eq!((r.status(), r.body.len()), (204, 0));
    }

    #[test]
    fn body_until_close() {
        let r = get(b"HTTP/1.1 200 OK\r\n\r\nall of it", 2).unwrap();
        assert_eq!(r.body, b"all of it");
    }

    #[test]
    fn truncated_and_garbage_answers_are_errors() {
        let e = get(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 100).unwrap_err();
        assert!(matches!(e, HttpError::Closed { .. }), "{e}");
        let e = get(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            100,
        )
        .unwrap_err();
        assert!(e.to_string().contains("bad chunk size"), "{e}");
        let e = get(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            100,
        )
        .unwrap_err();
        assert!(e.to_string().contains("longer than its size"), "{e}");
        let e = get(b"SSH-2.0-OpenSSH\r\n\r\n", 100).unwrap_err();
        assert!(matches!(e, HttpError::Malformed(_)), "{e}");
        let e = get(b"HTTP/1.1 200", 100).unwrap_err();
        assert!(matches!(e, HttpError::Closed { .. }), "{e}");
        let e = get(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n", 100).unwrap_err();
        assert!(e.to_string().contains("Content-Length"), "{e}");
    }

    #[test]
    fn body_limit_is_enforced() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world";
        let e = request(Canned::in_pieces(raw, 100), &Request::new("GET", "/"), 5).unwrap_err();
        assert!(matches!(e, HttpError::TooLarge { limit: 5, .. }), "{e}");
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        let e = get(&huge, 4096).unwrap_err();
        assert!(matches!(e, HttpError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn hijack_keeps_bytes_read_past_the_head() {
        let raw = b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n\x01\x00\x00\x00\x00\x00\x00\x02hi";
        let mut c = Canned::in_pieces(raw, 4096);
        let req = Request::new("POST", "/exec/x/start").json(b"{}").upgrade();
        let Hijack::Stream(head, mut conn) = hijack(&mut c, &req, 100).unwrap() else {
            panic!("expected a stream")
        };
        assert_eq!(head.status, 101);
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"\x01\x00\x00\x00\x00\x00\x00\x02hi");
        let sent = String::from_utf8(c.written.clone()).unwrap();
        assert!(
            sent.contains("Connection: Upgrade\r\nUpgrade: tcp\r\n"),
            "{sent}"
        );
        let raw = b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: 25\r\n\r\n{\"message\":\"not running\"}";
        match hijack(Canned::in_pieces(raw, 3), &req, 100).unwrap() {
            Hijack::Answer(r) => {
                assert_eq!(r.status(), 409);
                assert_eq!(r.body, br#"{"message":"not running"}"#);
            }
            Hijack::Stream(..) => panic!("expected an answer"),
        }
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(
            encode(r#"{"label":["a=b"]}"#),
            "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D"
        );
        assert_eq!(encode("vendetta-s1.x_y~"), "vendetta-s1.x_y~");
    }

    proptest::proptest! {
        /// Whatever the engine's socket answers: a response or an error,
        /// never a panic, and never a body past the cap.
        #[test]
        fn prop_any_answer_is_parsed_or_refused(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            step in 1usize..50,
        ) {
            if let Ok(r) = get(&raw, step) {
                proptest::prop_assert!(r.body.len() <= 1 << 20);
            }
        }

        /// A chunked body, chunked anyhow, comes back whole.
        #[test]
        fn prop_chunked_bodies_reassemble(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..100), 0..10),
            step in 1usize..40,
        ) {
            let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for c in &chunks {
                raw.extend(format!("{:x}\r\n", c.len()).as_bytes());
                raw.extend(c);
                raw.extend(b"\r\n");
            }
            raw.extend(b"0\r\n\r\n");
            let r = get(&raw, step).unwrap();
            proptest::prop_assert_eq!(r.body, chunks.concat());
        }
    }
}
