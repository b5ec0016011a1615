//! Counters, gauges and histograms, rendered in Prometheus text format 0.0.4.
//!
//! Hand-written because we need a dozen families and no exporter: each
//! family is a named static with labelled children behind a mutex (cheap at
//! our rates: one lock per command, not per byte). Gauges that mirror live
//! state (queue depth, sessions) are not stored here; the renderer asks the
//! runtime for them at scrape time, so they cannot drift.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A counter with label values, e.g. `{type="session",action="exec"}`.
pub(crate) struct CounterVec {
    children: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterVec {
    pub(crate) const fn new() -> Self {
        CounterVec {
            children: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn inc(&self, labels: &[&str]) {
        self.add(labels, 1);
    }

    pub(crate) fn add(&self, labels: &[&str], n: u64) {
        let key: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        let mut map = self.children.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(key).or_insert(0) += n;
    }

    fn snapshot(&self) -> Vec<(Vec<String>, u64)> {
        let map = self.children.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

impl Default for CounterVec {
    fn default() -> Self {
        Self::new()
    }
}

/// Upper bounds in seconds, from 1 ms to 5 min: local commands take
/// milliseconds, execs and long polls take seconds to minutes.
pub(crate) const BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0, 300.0,
];

#[derive(Clone, Default)]
struct Hist {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// A histogram with label values.
pub(crate) struct HistogramVec {
    children: Mutex<BTreeMap<Vec<String>, Hist>>,
}

impl HistogramVec {
    pub(crate) const fn new() -> Self {
        HistogramVec {
            children: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn observe(&self, labels: &[&str], d: Duration) {
        let secs = d.as_secs_f64();
        let key: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        let mut map = self.children.lock().unwrap_or_else(|p| p.into_inner());
        let h = map.entry(key).or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    fn snapshot(&self) -> Vec<(Vec<String>, Hist)> {
        let map = self.children.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl Default for HistogramVec {
    fn default() -> Self {
        Self::new()
    }
}

/// A plain counter.
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

/// Every metric the agent keeps. One instance lives in the runtime state.
#[derive(Default)]
pub(crate) struct Metrics {
    /// type, action, source (api | coordination)
    pub(crate) commands_received: CounterVec,
    /// type, action, status
    pub(crate) commands_executed: CounterVec,
    /// type, action
    pub(crate) command_duration: HistogramVec,
    /// reason (queue_full, shutting_down, store_failed, duplicate, invalid, policy)
    pub(crate) commands_refused: CounterVec,
    /// route, code
    pub(crate) api_requests: CounterVec,
    /// reason (forbidden, unauthorized)
    pub(crate) api_refusals: CounterVec,
    pub(crate) heartbeat_failures: Counter,
    pub(crate) heartbeats_sent: Counter,
    pub(crate) reconnects: Counter,
    pub(crate) registrations: Counter,
    /// result (ok | empty | error)
    pub(crate) poll_duration: HistogramVec,
    /// outcome (acked | dropped | retry)
    pub(crate) results_reported: CounterVec,
    pub(crate) sse_clients_dropped: Counter,
    /// Results answered `not_durable`: they could not be stored.
    pub(crate) results_unstored: Counter,
    /// Latency of the journal's flushes (fdatasync), fed by the journal.
    pub(crate) journal_flush: std::sync::Arc<HistogramVec>,
}

/// Builds the exposition text. Each family is written whole (HELP, TYPE,
/// then its samples), which is what the format requires.
pub(crate) struct Exposition {
    out: String,
}

impl Exposition {
    pub(crate) fn new() -> Self {
        Exposition {
            out: String::with_capacity(8192),
        }
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(
        &mut self,
        name: &str,
        names: &[&str],
        values: &[String],
        extra: Option<(&str, &str)>,
        v: f64,
    ) {
        self.out.push_str(name);
        let mut pairs: Vec<(&str, &str)> = names
            .iter()
            .copied()
            .zip(values.iter().map(String::as_str))
            .collect();
        if let Some(e) = extra {
            pairs.push(e);
        }
        if !pairs.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in pairs.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", fmt_value(v));
    }

    pub(crate) fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.header(name, "gauge", help);
        self.sample(name, &[], &[], None, v);
    }

    pub(crate) fn counter(&mut self, name: &str, help: &str, v: f64) {
        self.header(name, "counter", help);
        self.sample(name, &[], &[], None, v);
    }

    /// A gauge family whose children the caller computed.
    pub(crate) fn gauge_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        children: &[(Vec<String>, f64)],
    ) {
        self.header(name, "gauge", help);
        for (values, v) in children {
            self.sample(name, labels, values, None, *v);
        }
    }

    pub(crate) fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str], c: &CounterVec) {
        self.header(name, "counter", help);
        for (values, v) in c.snapshot() {
            self.sample(name, labels, &values, None, v as f64);
        }
    }

    pub(crate) fn histogram_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        h: &HistogramVec,
    ) {
        self.header(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (values, hist) in h.snapshot() {
            for (i, le) in BUCKETS.iter().enumerate() {
                let le = fmt_value(*le);
                self.sample(
                    &bucket,
                    labels,
                    &values,
                    Some(("le", &le)),
                    hist.counts[i] as f64,
                );
            }
            self.sample(
                &bucket,
                labels,
                &values,
                Some(("le", "+Inf")),
                hist.count as f64,
            );
            self.sample(&format!("{name}_sum"), labels, &values, None, hist.sum);
            self.sample(
                &format!("{name}_count"),
                labels,
                &values,
                None,
                hist.count as f64,
            );
        }
    }

    pub(crate) fn finish(self) -> String {
        self.out
    }
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new()
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Metrics {
    /// Renders the families this struct owns; the runtime adds live gauges.
    pub(crate) fn render_into(&self, e: &mut Exposition) {
        e.counter_vec(
            "vendetta_commands_received_total",
            "Commands received, by type, action and source.",
            &["type", "action", "source"],
            &self.commands_received,
        );
        e.counter_vec(
            "vendetta_commands_executed_total",
            "Commands executed, by type, action and result status.",
            &["type", "action", "status"],
            &self.commands_executed,
        );
        e.counter_vec(
            "vendetta_commands_refused_total",
            "Commands not executed, by reason (queue_full, shutting_down, store_failed, duplicate, invalid, policy).",
            &["reason"],
            &self.commands_refused,
        );
        e.histogram_vec(
            "vendetta_command_duration_seconds",
            "Time from the start of a command to its result.",
            &["type", "action"],
            &self.command_duration,
        );
        e.counter_vec(
            "vendetta_api_requests_total",
            "Local API requests, by route and status code.",
            &["route", "code"],
            &self.api_requests,
        );
        for (name, help, counter) in [
            (
                "vendetta_heartbeats_total",
                "Heartbeats the server acknowledged.",
                &self.heartbeats_sent,
            ),
            (
                "vendetta_heartbeat_failures_total",
                "Heartbeats that failed (network error or non-2xx answer).",
                &self.heartbeat_failures,
            ),
            (
                "vendetta_reconnects_total",
                "Times the link to the coordination server came back after being down.",
                &self.reconnects,
            ),
            (
                "vendetta_registrations_total",
                "Successful registrations with the server.",
                &self.registrations,
            ),
        ] {
            e.counter(name, help, counter.get() as f64);
        }
        e.histogram_vec(
            "vendetta_poll_duration_seconds",
            "Duration of command fetches (long polls), by outcome.",
            &["result"],
            &self.poll_duration,
        );
        e.counter_vec(
            "vendetta_results_reported_total",
            "Result deliveries to the server, by outcome (acked, dropped, retry).",
            &["outcome"],
            &self.results_reported,
        );
        e.counter_vec(
            "vendetta_api_refusals_total",
            "Local API requests refused before they were served, by reason (forbidden: allowed_ips; unauthorized: the token).",
            &["reason"],
            &self.api_refusals,
        );
        e.counter(
            "vendetta_sse_clients_dropped_total",
            "Event-stream clients dropped because they read too slowly.",
            self.sse_clients_dropped.get() as f64,
        );
        e.counter(
            "vendetta_results_not_durable_total",
            "Results answered with code not_durable: the command ran and its result could not be stored.",
            self.results_unstored.get() as f64,
        );
        e.histogram_vec(
            "vendetta_journal_flush_duration_seconds",
            "How long a flush (fdatasync) of the journal took.",
            &[],
            &self.journal_flush,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_inf_equals_count_and_buckets_are_cumulative() {
        let m = Metrics::default();
        m.command_duration
            .observe(&["system", "status"], Duration::from_micros(300));
        m.command_duration
            .observe(&["system", "status"], Duration::from_millis(30));
        m.command_duration
            .observe(&["system", "status"], Duration::from_secs(1000));
        let mut e = Exposition::new();
        m.render_into(&mut e);
        let text = e.finish();
        assert!(text.contains("vendetta_command_duration_seconds_bucket{type=\"system\",action=\"status\",le=\"0.001\"} 1\n"));
        assert!(text.contains("vendetta_command_duration_seconds_bucket{type=\"system\",action=\"status\",le=\"0.05\"} 2\n"));
        assert!(text.contains("vendetta_command_duration_seconds_bucket{type=\"system\",action=\"status\",le=\"+Inf\"} 3\n"));
        assert!(text.contains(
            "vendetta_command_duration_seconds_count{type=\"system\",action=\"status\"} 3\n"
        ));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn labels_are_escaped() {
        let mut e = Exposition::new();
        e.gauge_vec("x", "h", &["l"], &[(vec!["a\"b\\c\nd".into()], 1.0)]);
        assert!(e.finish().contains(r#"x{l="a\"b\\c\nd"} 1"#));
    }
}
