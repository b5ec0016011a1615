//! A test double for the socket clients (HTTP, QMP, QGA): the
//! peer's bytes are canned, what the client writes is recorded. Unit tests
//! only.

use std::io::{self, Cursor, Read, Write};
use std::time::Duration;

pub(crate) struct Canned {
    pub(crate) input: Cursor<Vec<u8>>,
    pub(crate) written: Vec<u8>,
    /// After the input runs out: block (WouldBlock) instead of EOF, like a
    /// peer that says nothing more.
    pub(crate) hang: bool,
    /// The most one read returns, to split heads, chunk sizes and frames
    /// across reads.
    pub(crate) step: usize,
}

impl Canned {
    pub(crate) fn new(input: impl Into<Vec<u8>>) -> Canned {
        Canned {
            input: Cursor::new(input.into()),
            written: Vec::new(),
            hang: false,
            step: usize::MAX,
        }
    }

    /// Serves `input` at most `step` bytes per read, then EOF.
    pub(crate) fn in_pieces(input: impl Into<Vec<u8>>, step: usize) -> Canned {
        Canned {
            step,
            ..Canned::new(input)
        }
    }

    pub(crate) fn hanging(input: impl Into<Vec<u8>>) -> Canned {
        Canned {
            hang: true,
            ..Canned::new(input)
        }
    }
}

impl Read for Canned {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = buf.len().min(self.step);
        let n = self.input.read(&mut buf[..max])?;
        if n == 0 && self.hang {
            std::thread::sleep(Duration::from_millis(5));
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }
}

impl Write for Canned {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
