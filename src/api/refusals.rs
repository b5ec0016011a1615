//! Refused requests, logged so that a flood cannot flood the log: at most
//! one line per source address and reason a minute, saying how many were
//! refused since the last line. Every refusal is counted in
//! `vendetta_api_refusals_total`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Sources remembered at once; beyond it, old ones are forgotten first and
/// then new ones share one entry, so memory stays bounded.
const MAX_SOURCES: usize = 4096;

/// Why a request was refused before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Refused {
    /// Its address is outside `allowed_ips`.
    Address,
    /// No token, or not one the agent accepts.
    Token,
    /// A valid token without the scope the request needs.
    Scope,
}

impl Refused {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refused::Address => "forbidden",
            Refused::Token => "unauthorized",
            Refused::Scope => "forbidden_scope",
        }
    }
}

/// A source and why it was refused; None stands for the sources beyond
/// [`MAX_SOURCES`].
type Key = (Option<IpAddr>, Refused);

#[derive(Default)]
pub(crate) struct Refusals {
    /// When each key was last logged, and how many were refused since.
    seen: Mutex<HashMap<Key, (Instant, u64)>>,
}

impl Refusals {
    /// Notes a refusal; returns the line to log, if one is due: the first
    /// refusal from a source, or the first after a quiet minute (then
    /// with the count of those not logged).
    pub(crate) fn note(
        &self,
        from: Option<IpAddr>,
        why: Refused,
        detail: &str,
        now: Instant,
    ) -> Option<String> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_SOURCES && !seen.contains_key(&(from, why)) {
            seen.retain(|_, (at, _)| now.duration_since(*at) < WINDOW);
        }
        // Still full: every further source counts as one, unnamed.
        let key = if seen.len() >= MAX_SOURCES && !seen.contains_key(&(from, why)) {
            (None, why)
        } else {
            (from, why)
        };
        let source = key
            .0
            .map_or_else(|| "many addresses".to_string(), |ip| ip.to_string());
        let line = |held: u64| {
            let more = if held > 0 {
                format!(" ({held} more from there in the last minute, not logged)")
            } else {
                String::new()
            };
            format!("API request from {source} refused: {detail}{more}")
        };
        match seen.get_mut(&key) {
            Some((at, held)) if now.duration_since(*at) < WINDOW => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let out = line(*held);
                (*at, *held) = (now, 0);
                Some(out)
            }
            None => {
                seen.insert(key, (now, 0));
                Some(line(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_from_one_address_is_one_line_a_minute_with_its_count() {
        let r = Refusals::default();
        let t0 = Instant::now();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let first = r.note(Some(ip), Refused::Token, "token does not match", t0);
        assert_eq!(
            first.as_deref(),
            Some("API request from 10.1.2.3 refused: token does not match")
        );
        for i in 1..=6005 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(
                r.note(Some(ip), Refused::Token, "token does not match", at),
                None
            );
        }
        // Another reason or address is its own line.
        assert!(r
            .note(Some(ip), Refused::Address, "outside allowed_ips", t0)
            .is_some());
        assert!(r
            .note(None, Refused::Token, "no Authorization header", t0)
            .is_some());
        let later = r.note(
            Some(ip),
            Refused::Token,
            "token does not match",
            t0 + WINDOW,
        );
        assert_eq!(
            later.as_deref(),
            Some("API request from 10.1.2.3 refused: token does not match (6005 more from there in the last minute, not logged)")
        );
    }

    #[test]
    fn memory_stays_bounded_whatever_the_sources() {
        let r = Refusals::default();
        let t0 = Instant::now();
        let mut lines = 0;
        for i in 0..(MAX_SOURCES as u32 + 1000) {
            let ip = IpAddr::from(i.to_be_bytes());
            lines += r.note(Some(ip), Refused::Token, "x", t0).is_some() as usize;
        }
        // The named sources, and one entry (and line) all the others share.
        assert_eq!(r.seen.lock().unwrap().len(), MAX_SOURCES + 1);
        assert_eq!(lines, MAX_SOURCES + 1);
    }
}
