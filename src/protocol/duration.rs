//! Durations as the contract and the config spell them.
//!
//! Strings use Go's syntax (`"250ms"`, `"30s"`, `"1h30m"`, `"1.5s"`), because
//! existing vendetta servers and configs do. On the wire an integer means
//! nanoseconds (Go's `time.Duration` encoding); in the config a bare number is
//! refused, because `interval: 30` reads as seconds to a person and as
//! nanoseconds to Go.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::time::Duration;

use super::ValueError;

/// Parses Go-style duration strings. `"0"` alone is allowed, as in Go.
pub(crate) fn parse(s: &str) -> Result<Duration, ValueError> {
    let err = || ValueError {
        what: "duration",
        value: s.to_string(),
        hint: "use a number with a unit, e.g. \"250ms\", \"30s\", \"5m\", \"1h30m\"",
    };
    let text = s.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() || text.starts_with('-') {
        return Err(err());
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    let bytes = text.as_bytes();
    let mut i = 0;
    // Exact integer nanoseconds: "9155250383651849ns" must not move by one.
    let mut total: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let (whole, fraction) = match text[start..i].split_once('.') {
            Some((w, f)) => (w, f),
            None => (&text[start..i], ""),
        };
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') || whole.len() > 20 {
            return Err(err());
        }
        let unit_start = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let per_unit: u128 = match &text[unit_start..i] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| err())?
        };
        // The fraction to nanoseconds, digits beyond them dropped.
        let mut part: u128 = 0;
        let mut scale = per_unit;
        for d in fraction.bytes().take(20) {
            scale /= 10;
            part += u128::from(d - b'0') * scale;
        }
        total = whole
            .checked_mul(per_unit)
            .and_then(|n| n.checked_add(part))
            .and_then(|n| n.checked_add(total))
            .ok_or_else(err)?;
    }
    // Ten years is far past any timeout or interval we take.
    if total > 315_360_000_000_000_000 {
        return Err(err());
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration the way `parse` reads it, choosing the largest exact
/// unit, so that printed configs round-trip.
pub(crate) fn format(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_string();
    }
    if !ns.is_multiple_of(1_000_000_000) {
        // Sub-second precision is written in one unit: "1500ms", not "1s500ms".
        for (size, unit) in [(1_000_000, "ms"), (1_000, "us"), (1, "ns")] {
            if ns.is_multiple_of(size) {
                return format!("{}{}", ns / size, unit);
            }
        }
    }
    let secs = ns / 1_000_000_000;
    let mut out = String::new();
    for (value, unit) in [(secs / 3600, "h"), (secs / 60 % 60, "m"), (secs % 60, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    out
}

/// Deserializes a duration from a string, or from an integer of nanoseconds.
/// For wire types (commands from servers).
pub(crate) fn deserialize_wire<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurVisitor { allow_int: true })
}

/// Like [`deserialize_wire`] but for `Option<Duration>` fields.
pub(crate) fn deserialize_wire_opt<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    struct OptVisitor;
    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<Duration>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"30s\", integer nanoseconds, or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            deserialize_wire(d).map(Some)
        }
    }
    d.deserialize_option(OptVisitor)
}

/// Deserializes a duration from a string only. For the config file.
/// `#[serde(with = "duration::config")]`: the config's spelling both ways.
pub(crate) mod config {
    pub(crate) use super::{deserialize_config as deserialize, serialize_config as serialize};
}

pub(crate) fn deserialize_config<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurVisitor { allow_int: false })
}

struct DurVisitor {
    allow_int: bool,
}

impl Visitor<'_> for DurVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.allow_int {
            f.write_str("a duration such as \"30s\" or an integer of nanoseconds")
        } else {
            f.write_str("a duration string with a unit, such as \"250ms\", \"30s\" or \"5m\"")
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        if self.allow_int {
            Ok(Duration::from_nanos(v))
        } else if v == 0 {
            Ok(Duration::ZERO)
        } else {
            Err(E::custom(format!(
                "duration {v} has no unit: write e.g. \"{v}s\" or \"{v}ms\""
            )))
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        if v < 0 {
            return Err(E::custom(format!("duration {v} is negative")));
        }
        self.visit_u64(v as u64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "duration {v} has no unit: write e.g. \"{v}s\""
        )))
    }
}

/// Serializes as a human string ("30s"); used when printing configs.
pub(crate) fn serialize_config<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_bad_durations() {
        for bad in [
            "",
            "5",
            "5x",
            "-1s",
            "s",
            "1h-30m",
            "ms",
            "1.2.3s",
            "99999999999h",
        ] {
            assert_eq!(
                parse(bad).unwrap_err().to_string(),
                format!("invalid duration {bad:?}: use a number with a unit, e.g. \"250ms\", \"30s\", \"5m\", \"1h30m\""),
            );
        }
    }

    #[test]
    fn format_round_trips() {
        for s in [
            "30s", "5m", "1h30m", "250ms", "1500ms", "1h", "10us", "0s", "2m5s",
        ] {
            let d = parse(s).unwrap();
            assert_eq!(format(d), s);
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }

    #[test]
    fn wire_takes_nanoseconds_config_does_not() {
        #[derive(serde::Deserialize)]
        struct W {
            #[serde(deserialize_with = "deserialize_wire")]
            d: Duration,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct C {
            #[serde(deserialize_with = "deserialize_config")]
            d: Duration,
        }
        let w: W = serde_json::from_str(r#"{"d": 1200000000}"#).unwrap();
        assert_eq!(w.d, Duration::from_millis(1200));
        let w: W = serde_json::from_str(r#"{"d": "2s"}"#).unwrap();
        assert_eq!(w.d, Duration::from_secs(2));
        let e = serde_json::from_str::<C>(r#"{"d": 30}"#).unwrap_err();
        assert!(e.to_string().contains("no unit"), "{e}");
    }

    proptest::proptest! {
        /// Anything a server or a config file may write: refused or
        /// parsed, never a panic.
        #[test]
        fn prop_parse_never_panics(s in ".{0,40}") {
            let _ = parse(&s);
        }

        /// What the agent writes, it reads back exactly, to the
        /// nanosecond, up to the ten years it accepts.
        #[test]
        fn prop_format_parses_back(ns in 0u64..=315_360_000_000_000_000) {
            let d = Duration::from_nanos(ns);
            proptest::prop_assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
