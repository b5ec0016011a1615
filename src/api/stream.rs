//! `POST /api/v1/commands?stream=true`: the answer is NDJSON, written as
//! the command runs: `{"stream":"stdout","data":"..."}` lines for exec
//! output as it arrives, then one `{"result":{...}}` line, then the
//! connection closes. `vendetta session exec` reads it to pass output
//! through live.
//!
//! Output is split into chunks wherever the provider read it; a UTF-8
//! character cut at a chunk edge is held back and joined with the next
//! chunk, so every line is valid JSON text.

use super::reply::Reply;
use super::routes::{open_stream, WAIT_SLACK};
use crate::protocol::{CommandId, CommandResult};
use crate::providers::output::{Chunk, Stream};
use crate::runtime::Runtime;
use crate::store::ledger::State;
use crossbeam_channel::{select, Receiver};
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};
use tiny_http::Request;

const ROUTE: &str = "/api/v1/commands";

/// A queued command whose output is to be streamed.
pub(crate) struct Job {
    pub(crate) result: Receiver<CommandResult>,
    pub(crate) chunks: Receiver<Chunk>,
    pub(crate) timeout: Duration,
    pub(crate) id: CommandId,
}

/// Writes the NDJSON answer on the request's thread until the result (or
/// the command's timeout) comes.
pub(super) fn serve(rt: &Runtime, request: Request, job: Job) {
    let Job {
        result,
        chunks,
        timeout,
        id,
    } = job;
    let (mut w, mut alive) = open_stream(
        rt,
        request,
        ROUTE,
        "application/x-ndjson\r\nCache-Control: no-store",
        "",
    );
    let mut carry = Carry::default();
    let deadline = Instant::now() + timeout + WAIT_SLACK;
    // What a poll would say: the body of a 202.
    let running = || Reply::accepted(&id, State::Running).body_json();
    let last = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        select! {
            recv(chunks) -> c => match c {
                Ok(c) => {
                    if alive {
                        alive = write_chunk(&mut w, &mut carry, c).is_ok();
                    }
                }
                // The job ended; wait for its result alone.
                Err(_) => match result.recv_timeout(left) {
                    Ok(r) => break json!({"result": r}),
                    Err(_) => break running(),
                },
            },
            recv(result) -> r => {
                // Output sent before the result is still in the channel.
                while let Ok(c) = chunks.try_recv() {
                    if alive {
                        alive = write_chunk(&mut w, &mut carry, c).is_ok();
                    }
                }
                break match r {
                    Ok(r) => json!({"result": r}),
                    Err(_) => json!({"error": "the agent is shutting down", "code": "shutting_down"}),
                };
            }
            default(left) => break running(),
        }
    };
    if alive {
        let _ = flush_carry(&mut w, &mut carry)
            .and_then(|_| writeln!(w, "{last}"))
            .and_then(|_| w.flush());
    }
}

/// Bytes of a UTF-8 character cut at a chunk edge, per stream.
#[derive(Default)]
struct Carry {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn write_chunk(w: &mut dyn Write, carry: &mut Carry, c: Chunk) -> std::io::Result<()> {
    let held = match c.stream {
        Stream::Stdout => &mut carry.stdout,
        Stream::Stderr => &mut carry.stderr,
    };
    held.extend_from_slice(&c.data);
    let cut = complete_prefix(held);
    if cut == 0 {
        return Ok(());
    }
    let rest = held.split_off(cut);
    let text = String::from_utf8_lossy(held).into_owned();
    *held = rest;
    writeln!(w, "{}", json!({"stream": c.stream.as_str(), "data": text}))?;
    w.flush()
}

fn flush_carry(w: &mut dyn Write, carry: &mut Carry) -> std::io::Result<()> {
    for (stream, held) in [
        (Stream::Stdout, &mut carry.stdout),
        (Stream::Stderr, &mut carry.stderr),
    ] {
        if !held.is_empty() {
            let text = String::from_utf8_lossy(held).into_owned();
            held.clear();
            writeln!(w, "{}", json!({"stream": stream.as_str(), "data": text}))?;
        }
    }
    Ok(())
}

/// Length of the longest prefix that does not end inside a UTF-8
/// character (invalid bytes count as complete; they become U+FFFD).
fn complete_prefix(b: &[u8]) -> usize {
    let n = b.len();
    // A character is at most 4 bytes: look at the last 3 for a lead byte.
    for back in 1..=3.min(n) {
        let byte = b[n - back];
        if byte & 0xC0 == 0x80 {
            continue; // continuation byte
        }
        let need = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if need > back { n - back } else { n };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_a_cut_character() {
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(complete_prefix(b"abc"), 3);
        assert_eq!(complete_prefix(&[b'a', euro[0]]), 1);
        assert_eq!(complete_prefix(&[b'a', euro[0], euro[1]]), 1);
        assert_eq!(complete_prefix(&[b'a', euro[0], euro[1], euro[2]]), 4);
        let mut out = Vec::new();
        let mut carry = Carry::default();
        write_chunk(
            &mut out,
            &mut carry,
            Chunk {
                stream: Stream::Stdout,
                data: vec![b'x', euro[0]],
            },
        )
        .unwrap();
        write_chunk(
            &mut out,
            &mut carry,
            Chunk {
                stream: Stream::Stdout,
                data: vec![euro[1], euro[2], b'y'],
            },
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"data\":\"x\",\"stream\":\"stdout\"}\n{\"data\":\"€y\",\"stream\":\"stdout\"}\n"
        );
    }
}
