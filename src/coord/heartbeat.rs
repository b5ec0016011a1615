//! The heartbeat thread: every `heartbeat.interval` (as the server may
//! steer it, with ±10% jitter so a fleet drifts apart), one small POST, on
//! its own connection so that a long poll never delays it. Up to
//! `heartbeat.retries` retries with backoff, each within `heartbeat.timeout`.
//! 404: the server forgot us, register again. 405: an older server; use
//! `PUT /api/v1/nodes/{id}` from then on.

use super::{new_backoff, node, sleep, Link};
use crossbeam_channel::Receiver;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub(crate) fn run(link: &Link, shutdown: &Receiver<()>) {
    let rt = &link.rt;
    // The first beat comes one (jittered) interval after start: registration
    // has just told the server everything a heartbeat would.
    loop {
        let interval = link.heartbeat_interval();
        let spread = interval / 5;
        let next = interval - interval / 10 + crate::os::random::jitter(spread);
        if !sleep(shutdown, next) {
            return;
        }
        if link.refused() || !link.registered() {
            continue;
        }
        let mut backoff = new_backoff(link);
        let outage = link
            .outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let body = node::heartbeat(rt, link.next_seq(), outage.as_deref());
        let path = format!("/api/v1/nodes/{}/heartbeat", rt.node_id);
        let put_path = format!("/api/v1/nodes/{}", rt.node_id);
        let timeout = rt.config.heartbeat.timeout;
        for attempt in 0..=rt.config.heartbeat.retries {
            let answer = if link.use_put.load(Ordering::Relaxed) {
                link.client.call("PUT", &put_path, Some(&body), timeout)
            } else {
                link.client.call("POST", &path, Some(&body), timeout)
            };
            let answer = match answer {
                Err(e) if e.status() == Some(405) && !link.use_put.load(Ordering::Relaxed) => {
                    log::info!("the server does not take heartbeat POSTs (405); using PUT /api/v1/nodes/{{id}} as older servers expect");
                    link.use_put.store(true, Ordering::Relaxed);
                    link.client.call("PUT", &put_path, Some(&body), timeout)
                }
                other => other,
            };
            match answer {
                Ok(reply) => {
                    rt.metrics.heartbeats_sent.inc();
                    link.up();
                    link.steer(reply.json().as_ref());
                    rt.update_link(|l| {
                        l.last_heartbeat = Some(crate::protocol::time::now_rfc3339())
                    });
                    if outage.is_some() {
                        *link.outage.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    }
                    break;
                }
                Err(e) => {
                    rt.metrics.heartbeat_failures.inc();
                    if e.status() == Some(404) {
                        link.lost_registration("404 on heartbeat");
                        break;
                    }
                    if e.refused() {
                        link.refuse(&e);
                        break;
                    }
                    link.down(&e);
                    log::debug!("heartbeat {attempt} failed: {e}");
                    if attempt < rt.config.heartbeat.retries
                        && !sleep(shutdown, backoff.next_delay().min(Duration::from_secs(30)))
                    {
                        return;
                    }
                }
            }
        }
    }
}
