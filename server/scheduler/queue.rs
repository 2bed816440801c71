//! `QueueState`: the dynamic batcher's decisions as a pure, synchronous state machine
//! (Triton's `dynamic_batch_scheduler.cc` rules, reference section 6). The thread that owns
//! it feeds it requests and the clock; it never sleeps or locks, so every rule is unit-tested
//! with explicit instants.
//!
//! Rules, in Triton's words:
//! - walk the queue in priority order (level 1 first), FIFO within a level, adding requests
//!   to a pending batch; stop before exceeding `max_batch_size` or the largest preferred
//!   size, or at a request whose shape cannot join the batch (that forces a send);
//! - if a preferred size was reached and the oldest request has not waited the delay, send
//!   the largest preferred size reached — at once, even with a non-zero delay;
//! - else if the batch is full or a send is forced, or the delay is zero, or the oldest
//!   request has waited `max_queue_delay`, send everything pending;
//! - else wait until the delay runs out (or the next request timeout, whichever is first).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// What the batcher needs to know about a queued request.
pub trait Batchable {
    /// Rows this request adds to a batch (`max(1, batch)`).
    fn batch_size(&self) -> u64;
    /// When it entered the queue.
    fn enqueued(&self) -> Instant;
    /// Whether it may share a batch with `other` (same shapes where the model needs it).
    fn compatible(&self, other: &Self) -> bool;
    /// Why it must leave the queue without running, if it must (client gone, timed out).
    fn dead(&self, now: Instant) -> Option<Dead>;
    /// When it will time out in the queue, if ever.
    fn timeout_at(&self) -> Option<Instant>;
    /// Forgets its queue timeout (it was moved to the delayed queue by `timeout_action: DELAY`
    /// and may now wait indefinitely); its client deadline still applies.
    fn clear_queue_timeout(&mut self);
}

/// Why a request leaves the queue without running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dead {
    /// The client went away.
    Cancelled,
    /// The client's deadline passed.
    DeadlineExceeded,
    /// The queue policy's timeout passed (`timeout_action: REJECT`).
    TimedOut,
}

/// The batching limits of one model version (normalised config).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPolicy {
    /// 0: no batching, every request runs alone.
    pub max_batch_size: u64,
    /// Preferred batch sizes, ascending; `[max_batch_size]` when the config lists none.
    pub preferred: Vec<u64>,
    /// How long the oldest request may wait for a batch to fill (0 = send what is there).
    pub max_queue_delay: Duration,
}

impl BatchPolicy {
    fn max_preferred(&self) -> u64 {
        self.preferred
            .last()
            .copied()
            .unwrap_or(self.max_batch_size)
    }
}

/// What the owner should do next.
#[derive(Debug, PartialEq)]
pub enum Next<T> {
    /// Send these requests as one batch, now.
    Dispatch(Vec<T>),
    /// Nothing to send before this instant (unless a request arrives).
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

/// One priority level: its FIFO, then the requests its DELAY timeout action moved behind it.
#[derive(Debug)]
struct Level<T> {
    queue: VecDeque<T>,
    delayed: VecDeque<T>,
    /// `timeout_action: DELAY`: a timed-out request moves to `delayed` instead of failing.
    delay_on_timeout: bool,
}

impl<T> Level<T> {
    fn len(&self) -> usize {
        self.queue.len() + self.delayed.len()
    }

    /// In batching order: the level's queue, then its delayed requests.
    fn iter(&self) -> impl Iterator<Item = &T> {
        self.queue.iter().chain(self.delayed.iter())
    }

    fn pop_front(&mut self) -> Option<T> {
        self.queue.pop_front().or_else(|| self.delayed.pop_front())
    }

    /// Takes the first `n` in batching order.
    fn take(&mut self, n: usize, into: &mut Vec<T>) {
        let from_queue = n.min(self.queue.len());
        into.extend(self.queue.drain(..from_queue));
        into.extend(self.delayed.drain(..n - from_queue));
    }
}

/// Queued requests, one FIFO per priority level (index 0 = level 1, the highest).
#[derive(Debug)]
pub struct QueueState<T> {
    policy: BatchPolicy,
    levels: Vec<Level<T>>,
}

impl<T: Batchable> QueueState<T> {
    /// An empty queue with one priority level per entry of `delay_on_timeout` (at least one);
    /// an entry is true where that level's `timeout_action` is DELAY.
    pub fn new(policy: BatchPolicy, delay_on_timeout: &[bool]) -> Self {
        let mut levels: Vec<Level<T>> = delay_on_timeout
            .iter()
            .map(|&d| Level {
                queue: VecDeque::new(),
                delayed: VecDeque::new(),
                delay_on_timeout: d,
            })
            .collect();
        if levels.is_empty() {
            levels.push(Level {
                queue: VecDeque::new(),
                delayed: VecDeque::new(),
                delay_on_timeout: false,
            });
        }
        QueueState { policy, levels }
    }

    /// Queues `item` at priority `level` (0-based; out-of-range levels go last).
    pub fn append(&mut self, item: T, level: usize) {
        let last = self.levels.len() - 1;
        self.levels[level.min(last)].queue.push_back(item);
    }

    /// Requests queued, all levels.
    pub fn len(&self) -> usize {
        self.levels.iter().map(Level::len).sum()
    }

    /// Requests queued at one level, delayed ones included.
    pub fn level_len(&self, level: usize) -> usize {
        self.levels.get(level).map_or(0, Level::len)
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(|l| l.len() == 0)
    }

    /// Removes every request that must not run, with the reason, for the owner to answer.
    /// A queue timeout at a DELAY level moves the request behind its level instead.
    pub fn remove_dead(&mut self, now: Instant) -> Vec<(T, Dead)> {
        let mut dead = Vec::new();
        for level in &mut self.levels {
            let mut kept = VecDeque::with_capacity(level.queue.len());
            for mut item in level.queue.drain(..) {
                match item.dead(now) {
                    Some(Dead::TimedOut) if level.delay_on_timeout => {
                        item.clear_queue_timeout();
                        level.delayed.push_back(item);
                    }
                    Some(why) => dead.push((item, why)),
                    None => kept.push_back(item),
                }
            }
            level.queue = kept;
            let mut kept = VecDeque::with_capacity(level.delayed.len());
            for item in level.delayed.drain(..) {
                match item.dead(now) {
                    Some(why) => dead.push((item, why)),
                    None => kept.push_back(item),
                }
            }
            level.delayed = kept;
        }
        dead
    }

    /// The next batch to send at `now`, if any. Call [`QueueState::remove_dead`] first.
    pub fn next_batch(&mut self, now: Instant) -> Next<T> {
        if self.is_empty() {
            return Next::Idle;
        }
        let policy = &self.policy;
        if policy.max_batch_size == 0 {
            // Default scheduler: one request at a time, highest level first.
            let item = self.levels.iter_mut().find_map(Level::pop_front);
            return item.map_or(Next::Idle, |i| Next::Dispatch(vec![i]));
        }
        let max_pref = policy.max_preferred().min(policy.max_batch_size);
        // Walk: (level, count) taken from each level in order.
        let mut taken: Vec<usize> = vec![0; self.levels.len()];
        let mut total = 0u64;
        let mut forced = false;
        let mut mark: Option<(Vec<usize>, u64)> = None;
        let mut oldest: Option<Instant> = None;
        let mut first: Option<&T> = None;
        'walk: for (li, level) in self.levels.iter().enumerate() {
            for item in level.iter() {
                let bs = item.batch_size().max(1);
                if total + bs > policy.max_batch_size || total + bs > max_pref {
                    forced = true;
                    break 'walk;
                }
                if let Some(f) = first {
                    if !f.compatible(item) {
                        forced = true;
                        break 'walk;
                    }
                } else {
                    first = Some(item);
                }
                total += bs;
                taken[li] += 1;
                oldest = Some(oldest.map_or(item.enqueued(), |o| o.min(item.enqueued())));
                if policy.preferred.contains(&total) {
                    mark = Some((taken.clone(), total));
                }
            }
        }
        let Some(oldest) = oldest else {
            // The head request alone is larger than the limits allow (validation prevents
            // this); send it alone rather than stall the queue.
            let item = self.levels.iter_mut().find_map(Level::pop_front);
            return item.map_or(Next::Idle, |i| Next::Dispatch(vec![i]));
        };
        let delay = policy.max_queue_delay;
        let delay_exceeded = !delay.is_zero() && now.saturating_duration_since(oldest) >= delay;
        let counts = match mark {
            Some((counts, _)) if !delay_exceeded => counts,
            _ if forced || total >= max_pref || delay.is_zero() || delay_exceeded => taken,
            _ => {
                let mut wake = oldest + delay;
                if let Some(t) = self.earliest_timeout() {
                    wake = wake.min(t);
                }
                return Next::WaitUntil(wake);
            }
        };
        let mut batch = Vec::with_capacity(counts.iter().sum());
        for (level, n) in self.levels.iter_mut().zip(counts) {
            level.take(n, &mut batch);
        }
        Next::Dispatch(batch)
    }

    /// The soonest queue timeout or deadline of any queued request.
    pub fn earliest_timeout(&self) -> Option<Instant> {
        self.levels
            .iter()
            .flat_map(Level::iter)
            .filter_map(Batchable::timeout_at)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Req {
        id: u32,
        bs: u64,
        at: Instant,
        shape: u32,
        dead: Option<Dead>,
        timeout: Option<Instant>,
    }

    impl Batchable for Req {
        fn batch_size(&self) -> u64 {
            self.bs
        }
        fn enqueued(&self) -> Instant {
            self.at
        }
        fn compatible(&self, other: &Self) -> bool {
            self.shape == other.shape
        }
        fn dead(&self, now: Instant) -> Option<Dead> {
            self.dead
                .or(self.timeout.filter(|t| *t <= now).map(|_| Dead::TimedOut))
        }
        fn timeout_at(&self) -> Option<Instant> {
            self.timeout
        }
        fn clear_queue_timeout(&mut self) {
            self.timeout = None;
        }
    }

    fn req(id: u32, bs: u64, at: Instant) -> Req {
        Req {
            id,
            bs,
            at,
            shape: 0,
            dead: None,
            timeout: None,
        }
    }

    fn policy(max: u64, preferred: &[u64], delay_us: u64) -> BatchPolicy {
        BatchPolicy {
            max_batch_size: max,
            preferred: preferred.to_vec(),
            max_queue_delay: Duration::from_micros(delay_us),
        }
    }

    fn ids(n: Next<Req>) -> Vec<u32> {
        match n {
            Next::Dispatch(v) => v.into_iter().map(|r| r.id).collect(),
            other => panic!("expected a dispatch, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn zero_delay_sends_everything_pending_up_to_max() {
        let t = Instant::now();
        let mut q = QueueState::new(policy(8, &[8], 0), &[false]);
        for i in 0..10 {
            q.append(req(i, 1, t), 0);
        }
        assert_eq!(ids(q.next_batch(t)), (0..8).collect::<Vec<_>>());
        assert_eq!(ids(q.next_batch(t)), vec![8, 9]);
        assert_eq!(q.next_batch(t), Next::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn largest_preferred_size_goes_at_once_even_with_delay() {
        let t = Instant::now();
        let mut q = QueueState::new(policy(8, &[2, 4, 8], 10_000), &[false]);
        for i in 0..5 {
            q.append(req(i, 1, t), 0);
        }
        // 4 is the largest preferred size reached; the fifth waits.
        assert_eq!(ids(q.next_batch(t)), vec![0, 1, 2, 3]);
        assert_eq!(
            q.next_batch(t),
            Next::WaitUntil(t + Duration::from_micros(10_000))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn delay_holds_until_the_oldest_has_waited() {
        let t = Instant::now();
        let mut q = QueueState::new(policy(8, &[4], 1_000), &[false]);
        q.append(req(0, 1, t), 0);
        q.append(req(1, 1, t + Duration::from_micros(300)), 0);
        let now = t + Duration::from_micros(500);
        assert_eq!(
            q.next_batch(now),
            Next::WaitUntil(t + Duration::from_micros(1_000))
        );
        // Once the oldest has waited the delay, whatever is pending goes.
        assert_eq!(
            ids(q.next_batch(t + Duration::from_micros(1_000))),
            vec![0, 1]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_exceeds_max_batch_size_and_counts_rows() {
        let t = Instant::now();
        let mut q = QueueState::new(policy(8, &[8], 0), &[false]);
        q.append(req(0, 3, t), 0);
        q.append(req(1, 4, t), 0);
        q.append(req(2, 2, t), 0); // 3+4+2 = 9 > 8: forced send of the first two
        assert_eq!(ids(q.next_batch(t)), vec![0, 1]);
        assert_eq!(ids(q.next_batch(t)), vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn preferred_mark_is_exact_row_count() {
        let t = Instant::now();
        let mut q = QueueState::new(policy(8, &[4, 6], 10_000), &[false]);
        q.append(req(0, 3, t), 0);
        q.append(req(1, 3, t), 0); // 6 rows: preferred
        q.append(req(2, 1, t), 0);
        assert_eq!(ids(q.next_batch(t)), vec![0, 1]);
        // 1 row pending, delay not passed: wait.
        assert!(matches!(q.next_batch(t), Next::WaitUntil(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn incompatible_shapes_are_not_merged() {
        let t = Instant::now();
        let mut q = QueueState::new(policy(8, &[8], 10_000), &[false]);
        q.append(req(0, 1, t), 0);
        q.append(
            Req {
                shape: 7,
                ..req(1, 1, t)
            },
            0,
        );
        q.append(req(2, 1, t), 0);
        // Different shape at position 1 forces the pending batch out alone.
        assert_eq!(ids(q.next_batch(t)), vec![0]);
        assert_eq!(ids(q.next_batch(t)), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn higher_priority_levels_batch_first() {
        let t = Instant::now();
        let mut q = QueueState::new(policy(4, &[4], 0), &[false, false]);
        q.append(req(10, 1, t), 1);
        q.append(req(11, 1, t), 1);
        q.append(req(0, 1, t + Duration::from_micros(5)), 0);
        q.append(req(1, 1, t + Duration::from_micros(6)), 0);
        q.append(req(2, 1, t + Duration::from_micros(7)), 0);
        assert_eq!(
            ids(q.next_batch(t + Duration::from_micros(10))),
            vec![0, 1, 2, 10]
        );
        assert_eq!(ids(q.next_batch(t + Duration::from_micros(10))), vec![11]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_batching_sends_one_at_a_time() {
        let t = Instant::now();
        let mut q = QueueState::new(policy(0, &[], 0), &[false]);
        q.append(req(0, 1, t), 0);
        q.append(req(1, 1, t), 0);
        assert_eq!(ids(q.next_batch(t)), vec![0]);
        assert_eq!(ids(q.next_batch(t)), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn dead_requests_leave_and_timeouts_shorten_the_wait() {
        let t = Instant::now();
        let mut q = QueueState::new(policy(8, &[8], 10_000), &[false]);
        q.append(
            Req {
                dead: Some(Dead::Cancelled),
                ..req(0, 1, t)
            },
            0,
        );
        q.append(
            Req {
                timeout: Some(t + Duration::from_micros(2_000)),
                ..req(1, 1, t)
            },
            0,
        );
        q.append(req(2, 1, t), 0);
        let dead = q.remove_dead(t);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1, Dead::Cancelled);
        // The wake-up is the timeout of request 1, not the 10 ms delay.
        assert_eq!(
            q.next_batch(t),
            Next::WaitUntil(t + Duration::from_micros(2_000))
        );
        let dead = q.remove_dead(t + Duration::from_micros(2_000));
        assert_eq!(dead[0].0.id, 1);
        assert_eq!(dead[0].1, Dead::TimedOut);
        assert_eq!(q.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_action_moves_timed_out_requests_behind_their_level() {
        let t = Instant::now();
        // Level 1 delays on timeout; level 2 rejects. Batches of at most 2.
        let mut q = QueueState::new(policy(2, &[2], 0), &[true, false]);
        q.append(
            Req {
                timeout: Some(t + Duration::from_micros(100)),
                ..req(0, 1, t)
            },
            0,
        );
        q.append(req(1, 1, t + Duration::from_micros(10)), 0);
        q.append(req(2, 1, t + Duration::from_micros(20)), 0);
        q.append(req(20, 1, t), 1);
        let later = t + Duration::from_micros(200);
        // Nothing dies: request 0 moves behind 1 and 2, and no longer has a timeout.
        assert!(q.remove_dead(later).is_empty());
        assert_eq!(q.level_len(0), 3);
        assert_eq!(q.earliest_timeout(), None);
        assert_eq!(ids(q.next_batch(later)), vec![1, 2]);
        // The delayed request still goes before every lower-priority request.
        assert_eq!(ids(q.next_batch(later)), vec![0, 20]);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn reject_action_fails_timed_out_requests_and_delayed_ones_can_still_be_cancelled() {
        let t = Instant::now();
        let mut q = QueueState::new(policy(4, &[4], 10_000), &[false, true]);
        q.append(
            Req {
                timeout: Some(t + Duration::from_micros(5)),
                ..req(0, 1, t)
            },
            0,
        );
        q.append(
            Req {
                timeout: Some(t + Duration::from_micros(5)),
                ..req(10, 1, t)
            },
            1,
        );
        let dead = q.remove_dead(t + Duration::from_micros(5));
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].0.id, dead[0].1), (0, Dead::TimedOut));
        assert_eq!(q.level_len(1), 1);
        // The delayed request's client goes away: it leaves like any other.
        q.levels[1].delayed[0].dead = Some(Dead::Cancelled);
        let dead = q.remove_dead(t + Duration::from_micros(6));
        assert_eq!((dead[0].0.id, dead[0].1), (10, Dead::Cancelled));
        assert!(q.is_empty());
    }
}
