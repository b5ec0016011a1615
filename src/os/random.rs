//! Randomness from the kernel: ids, tokens and jitter.

use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Random bytes from the kernel. Falls back to a time- and pid-seeded mix
/// only if /dev/urandom cannot be read (then ids are unique, not secret).
pub(crate) fn random_bytes(buf: &mut [u8]) {
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(buf).is_ok() {
            return;
        }
    }
    let mut x = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()) << 32;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    random_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A uniform random duration in [0, max]: "full jitter" for backoff.
pub(crate) fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 8];
    random_bytes(&mut b);
    let r = u64::from_le_bytes(b) as f64 / u64::MAX as f64;
    max.mul_f64(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_bounded() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(10)) <= Duration::from_millis(10));
        }
    }
}
