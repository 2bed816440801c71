//! Per-version schedulers: the queue between the front ends and the executor instances.
//!
//! Today every version uses Triton's *default scheduler*: requests run one at a time, each
//! alone, on whichever instance is free. The queue is a bounded channel shared by the
//! instance threads, so it never grows past its capacity; a full queue refuses new requests
//! with UNAVAILABLE "Exceeds maximum queue size" at once. Requests whose client went away or
//! whose deadline passed while queued are dropped before they reach the engine.

pub mod queue;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::InferError;
use crate::request::{InferResponse, ValidInferRequest};

/// One request on its way to an instance.
#[derive(Debug)]
pub struct Job {
    pub request: ValidInferRequest,
    /// Where the instance sends the result; the front-end handler awaits the receiver.
    /// A closed receiver means the client went away.
    pub reply: oneshot::Sender<Result<InferResponse, InferError>>,
    /// When the front end received the request (start of the end-to-end duration).
    pub received: Instant,
    /// When the request entered the queue (start of the queue duration).
    pub enqueued: Instant,
    /// The client's deadline, if it sent one.
    pub deadline: Option<Instant>,
}

/// Requests an instance executes together. Every job in a batch has the same item shapes.
#[derive(Debug)]
pub struct Batch {
    pub jobs: Vec<Job>,
}

/// Handle to a version's queue. Dropping every handle closes the queue: instances finish
/// what is queued and then stop.
#[derive(Debug)]
pub struct Scheduler {
    /// Sends batches to the instance threads, which all receive from the other end.
    tx: Sender<Batch>,
    model: String,
    capacity: usize,
}

impl Scheduler {
    /// A queue holding at most `capacity` requests, and the receiver the instances share.
    pub fn new(model: &str, capacity: usize) -> (Scheduler, Receiver<Batch>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        (
            Scheduler {
                tx,
                model: model.to_string(),
                capacity: capacity.max(1),
            },
            rx,
        )
    }

    /// Queues `job` without waiting. Fails at once when the queue is full or closed.
    pub fn enqueue(&self, job: Job) -> Result<(), InferError> {
        match self.tx.try_send(Batch { jobs: vec![job] }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(InferError::Unavailable(format!(
                "Exceeds maximum queue size ({}) for model '{}'",
                self.capacity, self.model
            ))),
            Err(TrySendError::Disconnected(_)) => Err(InferError::Unavailable(format!(
                "Server is stopping, scheduler for model '{}' has stopped accepting new inference requests",
                self.model
            ))),
        }
    }

    /// Requests waiting for an instance.
    pub fn pending(&self) -> usize {
        self.tx.len()
    }
}
