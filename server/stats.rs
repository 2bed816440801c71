//! Per-version statistics, counted exactly as Triton counts them (`ModelStatistics`):
//! `inference_count` += batch size per request, `execution_count` += 1 per executed batch,
//! `batch_stats[n]` per batch size, `queue` from enqueue to execution start, and `success`
//! carrying the end-to-end request duration. perf_analyzer relies on `queue.count` rising
//! with every successful request.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::executor::PhaseTimes;

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
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ModelStats {
    /// One batch of `batch_size` inferences ran with these phase times.
    pub fn record_execution(&self, batch_size: u64, times: &PhaseTimes) {
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
        let mut s = self.inner.lock();
        s.last_inference_ms = now_ms();
        s.success.add(total);
        s.queue.add(queue);
        s.compute_input.add(times.input);
        s.compute_infer.add(times.infer);
        s.compute_output.add(times.output);
    }

    /// One request failed after `total`.
    pub fn record_failure(&self, total: Duration) {
        let mut s = self.inner.lock();
        s.last_inference_ms = now_ms();
        s.fail.add(total);
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
        s.record_failure(Duration::from_nanos(7));
        let snap = s.snapshot();
        assert_eq!(snap.inference_count, 3);
        assert_eq!(snap.execution_count, 1);
        assert_eq!(snap.success, CountNs { count: 2, ns: 900 });
        assert_eq!(snap.queue, CountNs { count: 2, ns: 90 });
        assert_eq!(snap.fail, CountNs { count: 1, ns: 7 });
        assert_eq!(snap.batch[&3].compute_infer, CountNs { count: 1, ns: 100 });
        assert!(snap.last_inference_ms > 0);
    }
}
