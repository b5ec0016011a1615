//! The reporter thread: delivers the results the server has not
//! acknowledged (kept in the journal), oldest first.
//!
//! A result leaves the spool only on a 2xx from the server, or when the
//! server rejects it for good (a 4xx other than 408/429: logged and
//! dropped). Anything else is retried: up to `retry_policy.max_retries`
//! times with backoff in one round; then the round ends and the next one
//! starts after a backoff delay, when a new result arrives, or when the
//! link comes back. A spooled result is never given up on.

use super::{new_backoff, sleep, Link};
use crossbeam_channel::{select, Receiver};
use std::time::{Duration, Instant};

/// How often an idle reporter looks at the spool anyway.
const IDLE_TICK: Duration = Duration::from_secs(60);

pub(crate) fn run(link: &Link, shutdown: &Receiver<()>, wake: &Receiver<()>) {
    let mut pause = new_backoff(link);
    let mut wait = Duration::ZERO;
    loop {
        select! {
            recv(shutdown) -> _ => return,
            recv(wake) -> _ => {}
            default(wait) => {}
        }
        if link.refused() {
            wait = IDLE_TICK;
            continue;
        }
        match round(
            link,
            Some(shutdown),
            Instant::now() + Duration::from_secs(3600),
        ) {
            Round::Done => {
                pause.reset();
                wait = IDLE_TICK;
            }
            Round::Failed => wait = pause.next_delay(),
            Round::Shutdown => return,
        }
    }
}

pub(crate) enum Round {
    Done,
    Failed,
    Shutdown,
}

/// One pass over the results to deliver. With `shutdown`, retry delays end early when
/// it closes; `deadline` bounds the whole pass.
pub(crate) fn round(link: &Link, shutdown: Option<&Receiver<()>>, deadline: Instant) -> Round {
    let rt = &link.rt;
    let max_retries = rt.config.retry_policy.max_retries;
    let mut outcome = Round::Done;
    'results: for id in rt.ledger.reports() {
        let Some(result) = rt.ledger.report(&id) else {
            continue;
        };
        let body = match serde_json::to_value(&result) {
            Ok(v) => v,
            Err(e) => {
                log::error!(command_id = id.as_str(); "cannot encode a spooled result ({e}); leaving it in the spool");
                continue;
            }
        };
        let path = format!("/api/v1/commands/{id}/result");
        let mut backoff = new_backoff(link);
        let mut attempt = 0;
        loop {
            if Instant::now() >= deadline {
                return Round::Failed;
            }
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(30));
            match link.client.call("POST", &path, Some(&body), left) {
                Ok(_) => {
                    rt.ledger.acknowledge(&id);
                    rt.metrics.results_reported.inc(&["acked"]);
                    log::debug!(command_id = id.as_str(); "result delivered");
                    link.up();
                    break;
                }
                Err(e) => match e.status() {
                    // 401/403 mean our token, not the result, is the problem: keep it.
                    Some(s) if (400..500).contains(&s) && !matches!(s, 401 | 403 | 408 | 429) => {
                        log::warn!(command_id = id.as_str(); "the server rejected the result for good: {e}; dropping it");
                        rt.ledger.acknowledge(&id);
                        rt.metrics.results_reported.inc(&["dropped"]);
                        break;
                    }
                    _ => {
                        rt.metrics.results_reported.inc(&["retry"]);
                        if e.refused() {
                            link.refuse(&e);
                            return Round::Failed;
                        }
                        if e.status().is_none() {
                            link.down(&e);
                        }
                        attempt += 1;
                        if attempt > max_retries {
                            log::info!(command_id = id.as_str(); "result not delivered after {attempt} attempts ({e}); it stays in the spool for the next round");
                            if e.status().is_none() {
                                // The server cannot be reached: the others would fail too.
                                return Round::Failed;
                            }
                            // The server answers but not for this one: the
                            // results behind it must not wait for it.
                            outcome = Round::Failed;
                            continue 'results;
                        }
                        let delay = backoff
                            .next_delay()
                            .min(deadline.saturating_duration_since(Instant::now()));
                        let slept = match shutdown {
                            Some(s) => sleep(s, delay),
                            None => {
                                std::thread::sleep(delay);
                                true
                            }
                        };
                        if !slept {
                            return Round::Shutdown;
                        }
                    }
                },
            }
        }
    }
    outcome
}
