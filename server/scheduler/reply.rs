//! Where a request's answer goes. Usually straight to the waiting handler; with
//! `preserve_ordering` through a [`Sequencer`] that releases answers in the order the
//! scheduler admitted the requests, holding back any that finish early.
//!
//! Every [`Reply`] completes its place in the order exactly once: by [`Reply::send`] or,
//! if it is dropped unsent (request cancelled, scheduler stopped), by its `Drop`. So a
//! request that never runs cannot hold back the ones behind it.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::InferError;
use crate::request::InferResponse;

/// A request's result.
pub type Outcome = Result<InferResponse, InferError>;

/// The answer channel of one queued request.
#[derive(Debug)]
pub struct Reply {
    tx: Option<oneshot::Sender<Outcome>>,
    /// Ticket and sequencer when responses must keep the admission order.
    order: Option<(u64, Arc<Sequencer>)>,
}

impl Reply {
    /// Answers go straight to `tx`.
    pub fn direct(tx: oneshot::Sender<Outcome>) -> Self {
        Reply {
            tx: Some(tx),
            order: None,
        }
    }

    /// Answers wait for every earlier ticket of `sequencer`.
    pub fn ordered(tx: oneshot::Sender<Outcome>, sequencer: &Arc<Sequencer>) -> Self {
        Reply {
            tx: Some(tx),
            order: Some((sequencer.ticket(), sequencer.clone())),
        }
    }

    /// True when the handler stopped waiting (the client went away).
    pub fn is_closed(&self) -> bool {
        self.tx.as_ref().is_none_or(oneshot::Sender::is_closed)
    }

    /// Delivers the answer (now, or once every earlier request has been answered).
    pub fn send(mut self, outcome: Outcome) {
        let Some(tx) = self.tx.take() else { return };
        match self.order.take() {
            None => {
                let _ = tx.send(outcome);
            }
            Some((ticket, seq)) => seq.complete(ticket, tx, Some(outcome)),
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let (Some(tx), Some((ticket, seq))) = (self.tx.take(), self.order.take()) {
            // Unanswered: free the ticket; dropping `tx` tells the handler no answer comes.
            seq.complete(ticket, tx, None);
        }
    }
}

#[derive(Debug, Default)]
struct SequencerState {
    /// Next ticket to hand out.
    issued: u64,
    /// Next ticket to deliver.
    next: u64,
    /// Finished out of order, waiting for `next`.
    done: BTreeMap<u64, (oneshot::Sender<Outcome>, Option<Outcome>)>,
}

/// Releases answers in ticket order (`preserve_ordering`).
#[derive(Debug, Default)]
pub struct Sequencer {
    state: Mutex<SequencerState>,
}

impl Sequencer {
    fn ticket(&self) -> u64 {
        let mut s = self.state.lock();
        let t = s.issued;
        s.issued += 1;
        t
    }

    /// Answers held back, waiting for an earlier one.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.state.lock().done.len()
    }

    fn complete(&self, ticket: u64, tx: oneshot::Sender<Outcome>, outcome: Option<Outcome>) {
        let mut s = self.state.lock();
        s.done.insert(ticket, (tx, outcome));
        loop {
            let next = s.next;
            let Some((tx, outcome)) = s.done.remove(&next) else {
                break;
            };
            s.next += 1;
            if let Some(o) = outcome {
                // A oneshot send never blocks; a gone receiver is fine.
                let _ = tx.send(o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(n: u32) -> Outcome {
        Err(InferError::Internal(n.to_string()))
    }

    fn got(rx: &mut oneshot::Receiver<Outcome>) -> Option<String> {
        rx.try_recv().ok().map(|o| match o {
            Err(e) => e.to_string(),
            Ok(_) => "ok".into(),
        })
    }

    #[test]
    fn ordered_answers_wait_for_earlier_ones() {
        let seq = Arc::new(Sequencer::default());
        let (t0, mut r0) = oneshot::channel();
        let (t1, mut r1) = oneshot::channel();
        let (t2, mut r2) = oneshot::channel();
        let a = Reply::ordered(t0, &seq);
        let b = Reply::ordered(t1, &seq);
        let c = Reply::ordered(t2, &seq);
        c.send(err(2));
        b.send(err(1));
        assert_eq!(got(&mut r1), None);
        assert_eq!(got(&mut r2), None);
        assert_eq!(seq.held(), 2);
        a.send(err(0));
        assert_eq!(got(&mut r0).as_deref(), Some("0"));
        assert_eq!(got(&mut r1).as_deref(), Some("1"));
        assert_eq!(got(&mut r2).as_deref(), Some("2"));
        assert_eq!(seq.held(), 0);
    }

    #[test]
    fn a_dropped_reply_releases_the_ones_behind_it() {
        let seq = Arc::new(Sequencer::default());
        let (t0, mut r0) = oneshot::channel();
        let (t1, mut r1) = oneshot::channel();
        let a = Reply::ordered(t0, &seq);
        let b = Reply::ordered(t1, &seq);
        b.send(err(1));
        drop(a);
        assert!(matches!(
            r0.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert_eq!(got(&mut r1).as_deref(), Some("1"));
    }

    #[test]
    fn direct_replies_and_closed_receivers() {
        let (tx, rx) = oneshot::channel();
        let r = Reply::direct(tx);
        assert!(!r.is_closed());
        drop(rx);
        assert!(r.is_closed());
        r.send(err(0));
    }
}
