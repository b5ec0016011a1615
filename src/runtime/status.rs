//! The documents behind `system status`, `system info`, `system health`
//! and `GET /health`, built from live state and real host values.

use super::Runtime;
use crate::protocol::link::LinkStatus;
use crate::protocol::ProviderKind;
use crate::VERSION;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;

/// Free space below this on the cache_dir file system makes health degraded.
const MIN_DISK_FREE: u64 = 256 << 20;
/// Available memory below this makes health degraded.
const MIN_MEM_AVAILABLE: u64 = 64 << 20;

pub(crate) fn status(rt: &Runtime) -> Value {
    let (total, running) = rt.sessions.counts();
    json!({
        "node_id": rt.node_id,
        "node_name": rt.node_name,
        "version": VERSION,
        "pid": std::process::id(),
        "uptime_s": rt.uptime().as_secs(),
        "started": crate::protocol::time::rfc3339(rt.started_at),
        "config": rt.config_source.to_string(),
        "default_provider": rt.config.provider,
        "providers": rt.registry.usable(),
        "enabled_providers": rt.registry.kinds(),
        "sessions": {"total": total, "running": running},
        "queue": {"depth": rt.queue_depth(), "capacity": rt.queue_capacity()},
        "workers": {"busy": rt.busy_workers(), "total": rt.config.workers},
        "pending_results": rt.ledger.pending_reports(),
        "accepting": rt.accepting(),
        "link": rt.link(),
    })
}

pub(crate) fn info(rt: &Runtime) -> Value {
    let host = crate::os::host::host_info();
    let cache_dir = rt.config.cache_dir();
    let disk = crate::os::host::disk(&cache_dir);
    json!({
        "os": host.os,
        "arch": host.arch,
        "kernel": host.kernel,
        "hostname": host.hostname,
        "cpus": host.cpus,
        "memory_total_bytes": host.memory_total_bytes,
        "memory_available_bytes": host.memory_available_bytes,
        "host_uptime_s": host.uptime_s,
        "load1": crate::os::host::load1(),
        "disk": {
            "path": cache_dir,
            "total_bytes": disk.map(|d| d.total_bytes),
            "available_bytes": disk.map(|d| d.available_bytes),
        },
        "agent": {
            "version": VERSION,
            "pid": std::process::id(),
            "rss_bytes": crate::os::host::rss_bytes(),
            "threads": crate::os::host::threads(),
        },
    })
}

/// The health document and whether the agent counts as healthy: the agent
/// runs, is not stopping, and its default provider works. Low disk or
/// memory, or a down coordination link, degrade it without failing it.
pub(crate) fn health(rt: &Runtime) -> (bool, Value) {
    let providers = rt.registry.health();
    let mut per_provider = Map::new();
    for (kind, h) in &providers {
        per_provider.insert(
            kind.to_string(),
            serde_json::to_value(h).unwrap_or(Value::Null),
        );
    }
    let default: ProviderKind = rt.config.provider;
    let default_ok = providers.get(&default).is_some_and(|h| h.ok);
    let cache_dir = rt.config.cache_dir();
    let disk = crate::os::host::disk(&cache_dir);
    let disk_ok = disk.is_none_or(|d| d.available_bytes >= MIN_DISK_FREE);
    let mem = crate::os::host::meminfo();
    let mem_ok = mem.is_none_or(|m| m.1 >= MIN_MEM_AVAILABLE);
    let link = rt.link();
    // Offline is healthy when meant (offline_mode, no URL), not when the
    // link could not be set up (TLS files): that leaves an error.
    let link_ok = link.ok();
    let stopping = !rt.accepting();
    let status = if stopping {
        "stopping"
    } else if !default_ok {
        "down"
    } else if disk_ok && mem_ok && link_ok {
        "ok"
    } else {
        "degraded"
    };
    let mut problems = Vec::new();
    if stopping {
        problems.push("the agent is shutting down".to_string());
    }
    if !default_ok {
        let why = providers
            .get(&default)
            .map(|h| h.message.clone())
            .unwrap_or_else(|| "not enabled".into());
        problems.push(format!("default provider {default} is not usable: {why}"));
    }
    if !disk_ok {
        problems.push(format!(
            "less than {} MiB free in {}",
            MIN_DISK_FREE >> 20,
            cache_dir.display()
        ));
    }
    if !mem_ok {
        problems.push(format!(
            "less than {} MiB of memory available",
            MIN_MEM_AVAILABLE >> 20
        ));
    }
    if !link_ok {
        problems.push(format!(
            "coordination link is {}: {}",
            link.state, link.last_error
        ));
    }
    let doc = json!({
        "status": status,
        "node_id": rt.node_id,
        "version": VERSION,
        "uptime_s": rt.uptime().as_secs(),
        "default_provider": default,
        "providers": per_provider,
        "checks": {
            "disk": {"ok": disk_ok, "path": cache_dir, "available_bytes": disk.map(|d| d.available_bytes)},
            "memory": {"ok": mem_ok, "available_bytes": mem.map(|m| m.1)},
            "link": {"ok": link_ok},
        },
        "link": link,
        "pending_results": rt.ledger.pending_reports(),
        "problems": problems,
    });
    (default_ok && !stopping, doc)
}

/// `/metrics`: the stored families plus gauges read from live state.
pub(crate) fn metrics_text(rt: &Runtime) -> String {
    use crate::metrics::Exposition;
    let mut e = Exposition::new();
    e.gauge_vec(
        "vendetta_build_info",
        "Agent version, always 1.",
        &["version"],
        &[(vec![VERSION.to_string()], 1.0)],
    );
    e.gauge(
        "vendetta_uptime_seconds",
        "Seconds since the agent started.",
        rt.uptime().as_secs_f64(),
    );
    e.gauge(
        "vendetta_queue_depth",
        "Commands waiting in the queue.",
        rt.queue_depth() as f64,
    );
    e.gauge(
        "vendetta_queue_capacity",
        "Size of the command queue (queue_size).",
        rt.queue_capacity() as f64,
    );
    e.gauge(
        "vendetta_execs",
        "Execs queued or running (limits.max_concurrent_execs caps them).",
        rt.execs.in_use() as f64,
    );
    e.gauge(
        "vendetta_workers_busy",
        "Workers running a command.",
        rt.busy_workers() as f64,
    );
    e.gauge(
        "vendetta_workers",
        "Workers in the pool (workers).",
        rt.config.workers as f64,
    );
    e.gauge(
        "vendetta_results_pending",
        "Results for the server it has not acknowledged yet.",
        rt.ledger.pending_reports() as f64,
    );
    e.gauge(
        "vendetta_results_unstored",
        "Results held in memory because they could not be stored (disk full); retried by the monitor.",
        rt.ledger.unstored() as f64,
    );
    let journal = rt.ledger.journal();
    e.counter(
        "vendetta_journal_flushes_total",
        "Flushes (fdatasync) of the journal; one serves every record appended before it.",
        journal.stats.flushes.load(Ordering::Relaxed) as f64,
    );
    e.counter(
        "vendetta_journal_records_total",
        "Records appended to the journal.",
        journal.stats.records.load(Ordering::Relaxed) as f64,
    );
    e.counter(
        "vendetta_journal_written_bytes_total",
        "Bytes appended to the journal.",
        journal.stats.bytes.load(Ordering::Relaxed) as f64,
    );
    e.gauge(
        "vendetta_journal_bytes",
        "Bytes the journal's segments take on disk.",
        journal.disk_bytes() as f64,
    );

    let health = rt.registry.health();
    let up: Vec<(Vec<String>, f64)> = health
        .iter()
        .map(|(k, h)| (vec![k.to_string()], if h.ok { 1.0 } else { 0.0 }))
        .collect();
    e.gauge_vec(
        "vendetta_provider_up",
        "Whether a provider is usable (1) or not (0).",
        &["provider"],
        &up,
    );
    let sessions: Vec<(Vec<String>, f64)> = rt
        .sessions
        .by_status()
        .into_iter()
        .map(|((p, s), n)| (vec![p.to_string(), s.as_str().to_string()], n as f64))
        .collect();
    e.gauge_vec(
        "vendetta_sessions",
        "Sessions by provider and status.",
        &["provider", "status"],
        &sessions,
    );
    let connected = if rt.link_status() == LinkStatus::Connected {
        1.0
    } else {
        0.0
    };
    e.gauge(
        "vendetta_link_connected",
        "Whether the coordination link is up (1) or not (0).",
        connected,
    );
    e.gauge(
        "vendetta_event_subscribers",
        "Clients on /api/v1/events.",
        rt.events.subscribers() as f64,
    );
    rt.metrics.render_into(&mut e);
    e.gauge(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch.",
        rt.started_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    if let Some(rss) = crate::os::host::rss_bytes() {
        e.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            rss as f64,
        );
    }
    if let Some(cpu) = crate::os::host::cpu_seconds() {
        e.counter(
            "process_cpu_seconds_total",
            "User and system CPU time spent in seconds.",
            cpu,
        );
    }
    if let Some(fds) = crate::os::host::open_fds() {
        e.gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            fds as f64,
        );
    }
    e.finish()
}
