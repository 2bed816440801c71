//! The batcher thread of one version: owns the [`QueueState`], waits for a request, a free
//! instance slot or the batch deadline, and hands batches to the instances.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{never, Receiver, Select, Sender, TryRecvError};
use tokio::time::Instant;

use super::queue::{Dead, Next, QueueState};
use super::{Batch, Job, Work};
use crate::error::InferError;
use crate::stats::{FailureReason, ModelStats};

/// How often a waiting batcher looks for requests whose client went away.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// Everything the batcher thread owns.
pub struct BatcherTask {
    /// Jobs from the handlers; disconnected when the scheduler closes.
    pub jobs: Receiver<Job>,
    /// A token per free instance; an instance sends one whenever it is ready for a batch.
    pub slots: Receiver<()>,
    /// Work to the instances (rendezvous: only sent while a slot is held).
    pub batches: Sender<Work>,
    pub state: QueueState<Job>,
    /// Shared with the scheduler handle, per level: admitted and not yet dispatched.
    pub queued: Arc<[AtomicUsize]>,
    pub stats: Arc<ModelStats>,
    /// Hold dispatch until this many are queued (test hook), then 0.
    pub hold_until: usize,
    /// Instances to stop: each free slot goes to a `Work::Stop` while this is above 0.
    pub retire: Arc<AtomicUsize>,
    /// Signalled when `retire` grows.
    pub nudge: Receiver<()>,
}

impl BatcherTask {
    fn fail_dead(&self, dead: Vec<(Job, Dead)>) {
        for (job, why) in dead {
            self.queued[job.level].fetch_sub(1, Ordering::SeqCst);
            let err = match why {
                Dead::Cancelled => {
                    tracing::debug!(id = %job.request.id, "request cancelled while queued");
                    self.stats
                        .record_failure(job.received.elapsed(), FailureReason::Canceled);
                    continue;
                }
                Dead::DeadlineExceeded => InferError::DeadlineExceeded(
                    "Deadline exceeded before the request reached the model".into(),
                ),
                Dead::TimedOut => InferError::Unavailable("Request timeout expired".into()),
            };
            self.stats
                .record_failure(job.received.elapsed(), FailureReason::of(&err));
            job.reply.send(Err(err));
        }
    }

    /// Runs until the scheduler closes and the queue is empty.
    pub fn run(mut self) {
        let mut have_slot = false;
        let mut closed = false;
        loop {
            loop {
                match self.jobs.try_recv() {
                    Ok(job) => {
                        let level = job.level;
                        self.state.append(job, level);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let now = Instant::now();
            let dead = self.state.remove_dead(now);
            self.fail_dead(dead);
            if self.hold_until > 0 && (closed || self.state.len() >= self.hold_until) {
                self.hold_until = 0;
            }
            if !have_slot {
                have_slot = self.slots.try_recv().is_ok();
            }
            if have_slot
                && self
                    .retire
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
                    .is_ok()
            {
                if self.batches.send(Work::Stop).is_err() {
                    return;
                }
                have_slot = false;
                continue;
            }
            let mut wake = self.state.earliest_timeout();
            if have_slot && self.hold_until == 0 {
                match self.state.next_batch(now) {
                    Next::Dispatch(jobs) => {
                        for j in &jobs {
                            self.queued[j.level].fetch_sub(1, Ordering::SeqCst);
                        }
                        if self.batches.send(Work::Run(Batch { jobs })).is_err() {
                            return;
                        }
                        have_slot = false;
                        continue;
                    }
                    Next::WaitUntil(t) => wake = Some(wake.map_or(t, |w| w.min(t))),
                    Next::Idle => {}
                }
            }
            if closed && self.state.is_empty() {
                return;
            }
            // Sleep until a request arrives, a slot frees up, or something is due.
            let mut timeout = wake.map(|w| w.saturating_duration_since(now));
            if !self.state.is_empty() {
                timeout = Some(timeout.map_or(CANCEL_POLL, |t| t.min(CANCEL_POLL)));
            }
            let never_jobs = never();
            let never_slots = never();
            let jobs = if closed { &never_jobs } else { &self.jobs };
            let slots = if have_slot { &never_slots } else { &self.slots };
            let mut sel = Select::new();
            let ji = sel.recv(jobs);
            let si = sel.recv(slots);
            let ni = sel.recv(&self.nudge);
            let op = match timeout {
                Some(t) => match sel.select_timeout(t) {
                    Ok(op) => op,
                    Err(_) => continue,
                },
                None => sel.select(),
            };
            match op.index() {
                i if i == ji => match op.recv(jobs) {
                    Ok(job) => {
                        let level = job.level;
                        self.state.append(job, level);
                    }
                    Err(_) => closed = true,
                },
                i if i == si => {
                    if op.recv(slots).is_err() {
                        // Every instance is gone: nothing can run what is queued. Dropping
                        // the jobs answers their handlers with an internal error.
                        tracing::error!("all instances stopped; dropping queued requests");
                        return;
                    }
                    have_slot = true;
                }
                i if i == ni => {
                    let _ = op.recv(&self.nudge);
                }
                _ => {}
            }
        }
    }
}
