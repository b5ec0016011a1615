//! The worker pool: takes jobs off the bounded queue and runs them.
//!
//! Commands of one session keep their order (`lanes`). A worker finishes
//! the command in hand when shutdown comes and takes no new one; what is
//! still queued or parked stays journaled and runs after the restart. A panic inside a command becomes a `failed` result;
//! the worker lives on.

use super::intake::command_event;
use super::intake::Job;
use super::threads::{self, Control, Thread};
use super::{dispatch, Runtime};
use crate::protocol::event::CommandState;
use crate::protocol::{Code, CommandResult};
use crate::providers::output::{Chunk, Discard, OutputSink, Stream};
use crossbeam_channel::{select_biased, Receiver, Sender};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub(crate) fn spawn(
    rt: &Arc<Runtime>,
    queue: &Receiver<Job>,
    shutdown: &Receiver<()>,
    control: &Sender<Control>,
) -> std::io::Result<Vec<Thread>> {
    (0..rt.config.workers)
        .map(|i| {
            let (rt, queue, shutdown) = (rt.clone(), queue.clone(), shutdown.clone());
            threads::spawn(&format!("worker-{i}"), Some(control.clone()), move || {
                worker_loop(&rt, &queue, &shutdown)
            })
        })
        .collect()
}

fn worker_loop(rt: &Runtime, queue: &Receiver<Job>, shutdown: &Receiver<()>) {
    loop {
        // Biased: once shutdown is signalled no new job is taken, even if
        // the queue is ready too.
        // Jobs that waited for others of their session go first.
        select_biased! {
            recv(shutdown) -> _ => return,
            recv(rt.lanes.ready()) -> job => {
                if let Ok(job) = job {
                    let ticket = rt.lanes.ticket_for(&job);
                    run_job(rt, job);
                    rt.lanes.done(ticket);
                }
            }
            recv(queue) -> job => match job {
                Ok(job) => {
                    if let Some((job, ticket)) = rt.lanes.admit(job) {
                        run_job(rt, job);
                        rt.lanes.done(ticket);
                    }
                }
                Err(_) => return,
            },
        }
    }
}

pub(crate) fn run_job(rt: &Runtime, job: Job) {
    let cmd = &job.command;
    let id = cmd.id.as_str();
    rt.busy.fetch_add(1, Ordering::Relaxed);
    let started = SystemTime::now();
    let clock = Instant::now();
    let result = match rt.ledger.mark_running(&cmd.id) {
        Err(e) => {
            log::error!(command_id = id; "cannot journal the command before running it: {e}");
            // It does not run, so its "queued" record must not run it at
            // the next start either.
            rt.ledger.forget(&cmd.id);
            CommandResult::failure(
                cmd,
                &rt.node_id,
                started,
                Code::Internal,
                format!("not run: the agent could not record it first ({e})"),
            )
        }
        Ok(()) => {
            rt.events.publish(command_event(
                id,
                &cmd.kind,
                &cmd.action,
                &job.from.tenancy,
                CommandState::Running,
            ));
            log::debug!(command_id = id, command = cmd.name().as_str(); "command started");
            let run = || match &job.stream {
                Some(tx) => dispatch::execute(
                    rt,
                    cmd,
                    &job.from.tenancy,
                    &mut ChannelSink {
                        tx: Some(tx.clone()),
                    },
                ),
                None => dispatch::execute(rt, cmd, &job.from.tenancy, &mut Discard),
            };
            std::panic::catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|panic| {
                let what = super::panic_text(panic.as_ref());
                log::error!(command_id = id; "command panicked: {what}");
                CommandResult::failure(
                    cmd,
                    &rt.node_id,
                    started,
                    Code::Internal,
                    format!("internal error while running the command ({what}); the agent keeps running, please report this"),
                )
            })
        }
    };
    rt.metrics
        .command_duration
        .observe(&[&cmd.kind, &cmd.action], clock.elapsed());
    let result = rt.complete(cmd, &job.from, result);
    // Read-only commands (status polls, lists) would drown the log at info.
    let level = if cmd.read_only() {
        log::Level::Debug
    } else {
        log::Level::Info
    };
    log::log!(
        level,
        command_id = id, command = cmd.name().as_str(), status = result.status.as_str(),
        duration = format!("{:?}", clock.elapsed()).as_str();
        "command finished"
    );
    if let Some(reply) = job.reply {
        // The waiter may have given up; the result is stored either way.
        let _ = reply.try_send(result);
    }
    rt.busy.fetch_sub(1, Ordering::Relaxed);
}

/// Passes exec output to a streaming client, blocking while the client
/// reads slowly (as a terminal would). The API side stops taking chunks
/// only once its client is gone, and then this sink stops sending; the
/// output is still captured for the result either way.
struct ChannelSink {
    tx: Option<Sender<Chunk>>,
}

impl OutputSink for ChannelSink {
    fn chunk(&mut self, stream: Stream, data: &[u8]) {
        if let Some(tx) = &self.tx {
            let chunk = Chunk {
                stream,
                data: data.to_vec(),
            };
            if tx.send(chunk).is_err() {
                log::debug!("streaming client gone; output is still captured for the result");
                self.tx = None;
            }
        }
    }
}
