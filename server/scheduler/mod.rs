//! Per-version schedulers: the queue between the front ends and the executor instances.
//!
//! Each loaded version has one batcher thread that owns a [`queue::QueueState`] (Triton's
//! dynamic batcher rules; models without `dynamic_batching` get Triton's default scheduler,
//! one request per execution). Handlers send [`Job`]s over a channel; admission is bounded
//! by `max_queue_size` (UNAVAILABLE "Exceeds maximum queue size" at once when full). The
//! batcher forms a batch only while it holds a free instance slot, so batches grow while the
//! instances are busy. Requests whose client went away, whose deadline passed or whose queue
//! timeout expired leave the queue before reaching an engine.

pub mod batcher;
pub mod queue;
pub mod reply;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::InferError;
use crate::request::ValidInferRequest;
use crate::stats::ModelStats;
use queue::{BatchPolicy, Batchable, Dead};
pub use reply::{Outcome, Reply, Sequencer};

/// One request on its way to an instance.
#[derive(Debug)]
pub struct Job {
    pub request: ValidInferRequest,
    /// Where the instance sends the result; the front-end handler awaits the receiver.
    /// A closed receiver means the client went away.
    pub reply: Reply,
    /// When the front end received the request (start of the end-to-end duration).
    pub received: Instant,
    /// When the request entered the queue (start of the queue duration).
    pub enqueued: Instant,
    /// The client's deadline, if it sent one.
    pub deadline: Option<Instant>,
    /// When the queue policy's timeout rejects it, if it has one.
    pub queue_timeout: Option<Instant>,
    /// Priority level, 0-based (level 1 in the config is 0 here).
    pub level: usize,
}

impl Batchable for Job {
    fn batch_size(&self) -> u64 {
        self.request.batch_size
    }

    fn enqueued(&self) -> Instant {
        self.enqueued
    }

    fn compatible(&self, other: &Self) -> bool {
        self.request.inputs.len() == other.request.inputs.len()
            && self
                .request
                .inputs
                .iter()
                .zip(&other.request.inputs)
                .all(|(a, b)| a.tensor.shape.get(1..) == b.tensor.shape.get(1..))
    }

    fn dead(&self, now: Instant) -> Option<Dead> {
        if self.reply.is_closed() {
            Some(Dead::Cancelled)
        } else if self.deadline.is_some_and(|d| d <= now) {
            Some(Dead::DeadlineExceeded)
        } else if self.queue_timeout.is_some_and(|t| t <= now) {
            Some(Dead::TimedOut)
        } else {
            None
        }
    }

    fn timeout_at(&self) -> Option<Instant> {
        match (self.deadline, self.queue_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn clear_queue_timeout(&mut self) {
        self.queue_timeout = None;
    }
}

/// Requests an instance executes together. Every job in a batch has the same item shapes.
#[derive(Debug)]
pub struct Batch {
    pub jobs: Vec<Job>,
}

/// What the batcher hands an instance that announced a free slot.
#[derive(Debug)]
pub enum Work {
    Run(Batch),
    /// The instance count went down: this instance stops (it holds no work).
    Stop,
}

/// The queue policy of one priority level (`ModelQueuePolicy`).
#[derive(Debug, Clone, PartialEq)]
pub struct LevelPolicy {
    /// Requests queued at this level before new ones are refused.
    pub max_queue_size: usize,
    /// The queue timeout (None: none).
    pub default_timeout: Option<Duration>,
    /// Whether a request's `timeout` parameter may lower the default.
    pub allow_timeout_override: bool,
    /// `timeout_action: DELAY`: a timed-out request waits behind its level instead of
    /// failing with "Request timeout expired".
    pub delay_on_timeout: bool,
}

/// How one version schedules, from its normalised config.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub policy: BatchPolicy,
    /// One policy per priority level (at least one); index 0 is level 1, the highest.
    pub levels: Vec<LevelPolicy>,
    /// 0-based level for requests without a valid `priority`.
    pub default_level: usize,
    /// Answer in the order requests were admitted (`preserve_ordering`).
    pub preserve_ordering: bool,
    /// Test hook (Triton's TRITONSERVER_DELAY_SCHEDULER): hold batching until this many
    /// requests are queued, once. 0 = off.
    pub hold_until: usize,
}

/// Handle to a version's queue. Dropping it closes the queue: the batcher sends what is
/// queued, then stops, and the instances stop after it.
#[derive(Debug)]
pub struct Scheduler {
    /// Jobs to the batcher thread. `None` once closed.
    tx: Option<Sender<Job>>,
    /// Per level: requests admitted and not yet dispatched or dropped (the queue sizes).
    queued: Arc<[AtomicUsize]>,
    /// Set when answers must keep the admission order.
    sequencer: Option<Arc<Sequencer>>,
    config: SchedulerConfig,
    model: String,
    batcher: Option<JoinHandle<()>>,
    /// Instances still to stop (the batcher sends each a `Work::Stop` for a free slot).
    retire: Arc<AtomicUsize>,
    /// Wakes the batcher when `retire` grows.
    nudge: Sender<()>,
}

/// Channels the instances use: work in, free-slot tokens out. Cloned for every instance.
#[derive(Debug, Clone)]
pub struct InstanceChannels {
    pub batches: Receiver<Work>,
    pub slots: Sender<()>,
}

impl Scheduler {
    /// Starts the batcher thread of `model` for `instances` executor instances.
    pub fn start(
        model: &str,
        config: SchedulerConfig,
        instances: usize,
        stats: Arc<ModelStats>,
    ) -> std::io::Result<(Scheduler, InstanceChannels)> {
        let (tx, job_rx) = crossbeam_channel::unbounded();
        let (batch_tx, batches) = crossbeam_channel::bounded(0);
        // Unbounded: each instance holds at most one token, and instances can be added.
        let _ = instances;
        let (slots, slot_rx) = crossbeam_channel::unbounded();
        let (nudge, nudge_rx) = crossbeam_channel::bounded(1);
        let retire = Arc::new(AtomicUsize::new(0));
        let queued: Arc<[AtomicUsize]> =
            config.levels.iter().map(|_| AtomicUsize::new(0)).collect();
        let delays: Vec<bool> = config.levels.iter().map(|l| l.delay_on_timeout).collect();
        let task = batcher::BatcherTask {
            jobs: job_rx,
            slots: slot_rx,
            batches: batch_tx,
            state: queue::QueueState::new(config.policy.clone(), &delays),
            queued: queued.clone(),
            stats,
            hold_until: config.hold_until,
            retire: retire.clone(),
            nudge: nudge_rx,
        };
        let batcher = std::thread::Builder::new()
            .name(format!("{model}-batcher"))
            .spawn(move || task.run())?;
        Ok((
            Scheduler {
                tx: Some(tx),
                queued,
                sequencer: config
                    .preserve_ordering
                    .then(|| Arc::new(Sequencer::default())),
                config,
                model: model.to_string(),
                batcher: Some(batcher),
                retire,
                nudge,
            },
            InstanceChannels { batches, slots },
        ))
    }

    /// Queues a validated request without waiting. Fails at once when the queue is full or
    /// the scheduler has stopped.
    pub fn enqueue(
        &self,
        request: ValidInferRequest,
        reply: oneshot::Sender<Outcome>,
        received: Instant,
        deadline: Option<Instant>,
    ) -> Result<(), InferError> {
        let c = &self.config;
        let level = match request.priority {
            p if p >= 1 && p <= c.levels.len() as u64 => (p - 1) as usize,
            _ => c.default_level,
        };
        let lp = &c.levels[level.min(c.levels.len() - 1)];
        let timeout = match (lp.default_timeout, request.timeout_us) {
            (Some(d), Some(t)) if lp.allow_timeout_override && t > 0 => {
                Some(d.min(Duration::from_micros(t)))
            }
            (d, _) => d,
        };
        let now = Instant::now();
        let admitted = self.queued[level]
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                (q < lp.max_queue_size).then_some(q + 1)
            })
            .is_ok();
        if !admitted {
            return Err(InferError::Unavailable(format!(
                "Exceeds maximum queue size ({}) for model '{}'",
                lp.max_queue_size, self.model
            )));
        }
        let reply = match &self.sequencer {
            Some(seq) => Reply::ordered(reply, seq),
            None => Reply::direct(reply),
        };
        let job = Job {
            request,
            reply,
            received,
            enqueued: now,
            deadline,
            queue_timeout: timeout.and_then(|t| now.checked_add(t)),
            level,
        };
        let sent = self
            .tx
            .as_ref()
            .map(|tx| tx.send(job).is_ok())
            .unwrap_or(false);
        if !sent {
            self.queued[level].fetch_sub(1, Ordering::SeqCst);
            return Err(InferError::Unavailable(format!(
                "Server is stopping, scheduler for model '{}' has stopped accepting new inference requests",
                self.model
            )));
        }
        Ok(())
    }

    /// Stops `n` instances as they become free (none is interrupted mid-batch).
    pub fn stop_instances(&self, n: usize) {
        self.retire.fetch_add(n, Ordering::SeqCst);
        let _ = self.nudge.try_send(());
    }

    /// Requests waiting in the queue, all levels.
    pub fn pending(&self) -> usize {
        self.queued.iter().map(|q| q.load(Ordering::SeqCst)).sum()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Closing the job channel lets the batcher flush the queue and exit.
        self.tx.take();
        if let Some(b) = self.batcher.take() {
            let _ = b.join();
        }
    }
}
