//! Capturing exec output up to a cap, and passing it on as it arrives.

/// Which output stream a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Receives output chunks as they arrive (for streaming to a client).
pub(crate) trait OutputSink {
    fn chunk(&mut self, stream: Stream, data: &[u8]);
}

/// A piece of output on its way to a streaming client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub(crate) stream: Stream,
    pub(crate) data: Vec<u8>,
}

/// A sink that drops everything (no one is streaming).
pub(crate) struct Discard;

impl OutputSink for Discard {
    fn chunk(&mut self, _: Stream, _: &[u8]) {}
}

/// Keeps the first `max` bytes of a stream and counts the rest; memory
/// never grows past `max` however much the process writes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Capture {
    pub(crate) data: Vec<u8>,
    pub(crate) max: usize,
    pub(crate) total: u64,
}

impl Capture {
    pub(crate) fn new(max: usize) -> Capture {
        Capture {
            data: Vec::new(),
            max,
            total: 0,
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let room = self.max.saturating_sub(self.data.len());
        self.data.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    pub(crate) fn truncated(&self) -> bool {
        self.total > self.data.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_flags() {
        let mut c = Capture::new(5);
        c.push(b"abc");
        assert!(!c.truncated());
        c.push(b"defgh");
        assert_eq!(c.data, b"abcde");
        assert!(c.truncated());
        assert_eq!(c.total, 8);
    }
}
