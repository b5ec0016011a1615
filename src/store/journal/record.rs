//! One journal record on disk:
//!
//! ```text
//! u32 LE  length of the payload
//! u32 LE  CRC-32C of the payload
//! payload:
//!   u8      op (intake, start, result, ack, forget, report)
//!   u8      flags (bit 0 on a result: the server still waits for it)
//!   u64 LE  seq: the command's place in acceptance order
//!   u64 LE  time: Unix seconds when the command reached this step
//!   u8      id length, then the id's bytes
//!   ...     body: JSON, or nothing
//! ```
//!
//! The header is binary so that a start-up scan learns what each record
//! is without parsing megabytes of JSON output.

/// Bytes before the payload.
pub(crate) const FRAME: usize = 8;
/// The largest payload taken as real: a longer length is damage.
pub(crate) const MAX_PAYLOAD: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Accepted: the body holds sender and command.
    Intake = 1,
    /// About to run: a crash from here on means "outcome unknown".
    Start = 2,
    /// Finished: the body holds sender and result.
    Result = 3,
    /// The server acknowledged the result (or rejected it for good).
    Ack = 4,
    /// Accepted, then withdrawn before it ran (queue full, not startable).
    Forget = 5,
    /// The server asked again for a result it has not acknowledged.
    Report = 6,
}

impl Op {
    fn from_u8(b: u8) -> Option<Op> {
        Some(match b {
            1 => Op::Intake,
            2 => Op::Start,
            3 => Op::Result,
            4 => Op::Ack,
            5 => Op::Forget,
            6 => Op::Report,
            _ => return None,
        })
    }
}

/// Flag on a result record: it is to be delivered to the server.
pub(crate) const REPORT: u8 = 1;

/// A record as read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub(crate) op: Op,
    pub(crate) flags: u8,
    pub(crate) seq: u64,
    pub(crate) time: u64,
    pub(crate) id: String,
    pub(crate) body: Vec<u8>,
}

/// Frames a record: length, checksum, payload.
pub(crate) fn encode(op: Op, flags: u8, seq: u64, time: u64, id: &str, body: &[u8]) -> Vec<u8> {
    let id = &id.as_bytes()[..id.len().min(255)];
    let len = 1 + 1 + 8 + 8 + 1 + id.len() + body.len();
    let mut out = Vec::with_capacity(FRAME + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(op as u8);
    out.push(flags);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time.to_le_bytes());
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.extend_from_slice(body);
    let crc = crc32c(&out[FRAME..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Sets the flags of an encoded record, fixing its checksum.
pub(crate) fn set_flags(frame: &mut [u8], flags: u8) {
    if frame.len() > FRAME + 1 {
        frame[FRAME + 1] = flags;
        let crc = crc32c(&frame[FRAME..]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// What the bytes at the start of `buf` hold.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// A whole record, `len` bytes long with its frame.
    Record(Record, usize),
    /// The bytes end inside a record: a write cut short.
    Torn,
    /// A record whose checksum or contents are wrong.
    Damaged(&'static str),
}

pub(crate) fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < FRAME {
        return Decoded::Torn;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > MAX_PAYLOAD {
        return Decoded::Damaged("impossible length");
    }
    if buf.len() < FRAME + len {
        return Decoded::Torn;
    }
    let payload = &buf[FRAME..FRAME + len];
    if crc32c(payload) != crc {
        return Decoded::Damaged("checksum mismatch");
    }
    match parse_payload(payload) {
        Some(r) => Decoded::Record(r, FRAME + len),
        None => Decoded::Damaged("malformed payload"),
    }
}

fn parse_payload(p: &[u8]) -> Option<Record> {
    let op = Op::from_u8(*p.first()?)?;
    let flags = *p.get(1)?;
    let seq = u64::from_le_bytes(p.get(2..10)?.try_into().ok()?);
    let time = u64::from_le_bytes(p.get(10..18)?.try_into().ok()?);
    let id_len = *p.get(18)? as usize;
    let id = std::str::from_utf8(p.get(19..19 + id_len)?).ok()?;
    Some(Record {
        op,
        flags,
        seq,
        time,
        id: id.to_string(),
        body: p[19 + id_len..].to_vec(),
    })
}

/// CRC-32C (Castagnoli), the checksum of iSCSI, ext4 and LevelDB logs.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn round_trip_and_damage() {
        let frame = encode(Op::Result, REPORT, 7, 1_700_000_000, "c-1", b"{\"a\":1}");
        let Decoded::Record(r, n) = decode(&frame) else {
            panic!("not decoded")
        };
        assert_eq!(n, frame.len());
        assert_eq!(
            (
                r.op,
                r.flags,
                r.seq,
                r.time,
                r.id.as_str(),
                r.body.as_slice()
            ),
            (
                Op::Result,
                REPORT,
                7,
                1_700_000_000,
                "c-1",
                b"{\"a\":1}".as_slice()
            )
        );
        assert_eq!(decode(&frame[..frame.len() - 1]), Decoded::Torn);
        assert_eq!(decode(&frame[..3]), Decoded::Torn);
        let mut bad = frame.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(decode(&bad), Decoded::Damaged("checksum mismatch"));
        let mut cleared = frame.clone();
        set_flags(&mut cleared, 0);
        assert!(matches!(decode(&cleared), Decoded::Record(r, _) if r.flags == 0));
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
            Decoded::Damaged("impossible length")
        );
    }
}
