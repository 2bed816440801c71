//! Per-version statistics, counted exactly as Triton counts them (`ModelStatistics`):
//! `inference_count` += batch size per request, `execution_count` += 1 per executed batch,
//! `batch_stats[n]` per batch size, `queue` from enqueue to execution start, and `success`
//! carrying the end-to-end request duration. perf_analyzer relies on `queue.count` rising
//! with every successful request.
//!
//! The same numbers feed the Prometheus endpoint (`crate::metrics`): counters are read from
//! a snapshot at scrape time, so `/metrics` and the statistics API never disagree; the
//! latency and batch-size histograms are recorded here as each request finishes.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::executor::PhaseTimes;
use crate::metrics::{ArmSeries, VersionHistograms};

/// The `reason` label of `nv_inference_request_failure`, as Triton classifies failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Refused by the scheduler: queue full or queue timeout.
    Rejected,
    /// The client went away or its deadline passed.
    Canceled,
    /// The engine failed.
    Backend,
    /// Anything else.
    Other,
}

impl FailureReason {
    /// Every reason, in the order of [`StatsSnapshot::failures`].
    pub const ALL: [FailureReason; 4] = [
        FailureReason::Rejected,
        FailureReason::Canceled,
        FailureReason::Backend,
        FailureReason::Other,
    ];

    /// The label value Triton uses.
    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Rejected => "REJECTED",
            FailureReason::Canceled => "CANCELED",
            FailureReason::Backend => "BACKEND",
            FailureReason::Other => "OTHER",
        }
    }

    /// How Triton classifies a request that failed with `err`.
    pub fn of(err: &crate::error::InferError) -> Self {
        use crate::error::InferError as E;
        match err {
            E::Unavailable(_) => FailureReason::Rejected,
            E::Cancelled(_) | E::DeadlineExceeded(_) => FailureReason::Canceled,
            E::Exec(_) => FailureReason::Backend,
            _ => FailureReason::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A count and a total duration, as in `StatisticDuration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountNs {
    pub count: u64,
    pub ns: u64,
}

impl CountNs {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns = self
            .ns
            .saturating_add(d.as_nanos().min(u64::MAX as u128) as u64);
    }
}

/// Compute phases of executions at one batch size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStat {
    pub compute_input: CountNs,
    pub compute_infer: CountNs,
    pub compute_output: CountNs,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Milliseconds since the epoch of the last request; 0 if none.
    pub last_inference_ms: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: CountNs,
    pub fail: CountNs,
    /// Failed requests by reason, indexed like [`FailureReason::ALL`].
    pub failures: [u64; 4],
    pub queue: CountNs,
    pub compute_input: CountNs,
    pub compute_infer: CountNs,
    pub compute_output: CountNs,
    pub batch: BTreeMap<u64, BatchStat>,
}

/// Counters of one model version. One short lock per request or batch; never held across
/// anything slow.
#[derive(Debug, Default)]
pub struct ModelStats {
    inner: Mutex<StatsSnapshot>,
    histograms: VersionHistograms,
    /// Per-arm series when the version serves in a deployment.
    arms: ArmSeries,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ModelStats {
    /// Counters for one version, with its Prometheus histograms.
    pub fn new(model: &str, version: i64) -> Self {
        ModelStats {
            inner: Mutex::default(),
            histograms: VersionHistograms::new(model, version),
            arms: ArmSeries::new(model, version),
        }
    }

    /// One request this version answered as deployment arm `arm` ("stable", "canary",
    /// "shadow").
    pub fn record_arm(&self, arm: &'static str, ok: bool, latency: Duration) {
        self.arms.record(arm, ok, latency);
    }

    /// One batch of `batch_size` inferences ran with these phase times.
    pub fn record_execution(&self, batch_size: u64, times: &PhaseTimes) {
        self.histograms.batch(batch_size);
        let mut s = self.inner.lock();
        s.execution_count += 1;
        s.inference_count += batch_size;
        let b = s.batch.entry(batch_size).or_default();
        b.compute_input.add(times.input);
        b.compute_infer.add(times.infer);
        b.compute_output.add(times.output);
    }

    /// One request succeeded after `total` end to end, `queue` of it waiting.
    pub fn record_success(&self, total: Duration, queue: Duration, times: &PhaseTimes) {
        self.histograms
            .success(total, queue, times.input + times.infer + times.output);
        let mut s = self.inner.lock();
        s.last_inference_ms = now_ms();
        s.success.add(total);
        s.queue.add(queue);
        s.compute_input.add(times.input);
        s.compute_infer.add(times.infer);
        s.compute_output.add(times.output);
    }

    /// One request failed after `total`.
    pub fn record_failure(&self, total: Duration, reason: FailureReason) {
        let mut s = self.inner.lock();
        s.last_inference_ms = now_ms();
        s.fail.add(total);
        s.failures[reason.index()] += 1;
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.inner.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_like_triton() {
        let s = ModelStats::default();
        let t = PhaseTimes {
            input: Duration::from_nanos(10),
            infer: Duration::from_nanos(100),
            output: Duration::from_nanos(5),
        };
        // One batch of 3 made of two requests (batch 1 and batch 2).
        s.record_execution(3, &t);
        s.record_success(Duration::from_nanos(500), Duration::from_nanos(50), &t);
        s.record_success(Duration::from_nanos(400), Duration::from_nanos(40), &t);
        s.record_failure(Duration::from_nanos(7), FailureReason::Rejected);
        let snap = s.snapshot();
        assert_eq!(snap.inference_count, 3);
        assert_eq!(snap.execution_count, 1);
        assert_eq!(snap.success, CountNs { count: 2, ns: 900 });
        assert_eq!(snap.queue, CountNs { count: 2, ns: 90 });
        assert_eq!(snap.fail, CountNs { count: 1, ns: 7 });
        assert_eq!(snap.failures, [1, 0, 0, 0]);
        assert_eq!(snap.batch[&3].compute_infer, CountNs { count: 1, ns: 100 });
        assert!(snap.last_inference_ms > 0);
    }
}
