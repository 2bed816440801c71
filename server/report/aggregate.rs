//! Divergence records → per-group figures. Pure: no I/O, so every number the report prints
//! is unit-tested here.
//!
//! Memory: a group keeps one small `Sample` per record (time, the score pair, latencies,
//! agreement) for the percentiles, the PSI and the charts; request ids are kept only for the
//! running top N. Everything else is counted as records arrive.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};

use serde::Deserialize;

use crate::deploy::psi::psi;

/// One line of the divergence log as the report reads it; the writer is
/// `deploy::shadow::DivergenceRecord`. Unknown fields are ignored so newer logs still read;
/// a missing or mistyped required field makes the line malformed.
#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    pub time_ms: u64,
    pub model: String,
    pub request_id: String,
    pub kind: String,
    pub primary_version: i64,
    pub shadow_version: i64,
    pub primary_score: Option<f64>,
    pub shadow_score: Option<f64>,
    pub primary_decision: Option<bool>,
    pub shadow_decision: Option<bool>,
    pub threshold: Option<f64>,
    pub agree: bool,
    pub max_abs_diff: Option<f64>,
    #[serde(default)]
    pub exact_mismatch: bool,
    pub primary_latency_ms: Option<f64>,
    pub shadow_latency_ms: Option<f64>,
    /// "all" or "divergent": what the server was logging (absent in older logs).
    #[serde(default)]
    pub logged: Option<String>,
}

/// What the report groups by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub model: String,
    pub kind: String,
    pub primary_version: i64,
    pub shadow_version: i64,
}

/// Time buckets of the agreement-over-time series.
const TIME_BUCKETS: u64 = 40;
/// Bins of the text histogram of score deltas.
const TEXT_DELTA_BINS: usize = 10;
/// Bins of the charts (score distributions, deltas).
const CHART_BINS: usize = 30;
/// Distinct thresholds remembered per group (a threshold changes only with a config edit).
const MAX_THRESHOLDS: usize = 8;

/// What is kept of each record for the figures that need every value.
#[derive(Debug, Clone, Copy)]
struct Sample {
    time_ms: u64,
    agree: bool,
    /// (primary, shadow) when both sides have a score.
    scores: Option<(f64, f64)>,
    primary_latency_ms: Option<f64>,
    shadow_latency_ms: Option<f64>,
}

/// Decision confusion counts: `counts[primary][shadow]`, index 0 = true, 1 = false, 2 = none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    pub counts: [[u64; 3]; 3],
}

impl Confusion {
    fn index(d: Option<bool>) -> usize {
        match d {
            Some(true) => 0,
            Some(false) => 1,
            None => 2,
        }
    }

    /// The rows/columns worth showing: true and false, and none only when something is in it.
    pub fn shown(&self) -> Vec<usize> {
        (0..3)
            .filter(|i| *i < 2 || (0..3).any(|j| self.counts[*i][j] + self.counts[j][*i] > 0))
            .collect()
    }

    /// Some record carries a decision on either side.
    pub fn has_decisions(&self) -> bool {
        self.counts.iter().enumerate().any(|(p, row)| {
            row.iter()
                .enumerate()
                .any(|(s, n)| *n > 0 && (p < 2 || s < 2))
        })
    }
}

/// One of the most divergent requests of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergent {
    /// |shadow_score − primary_score|, or `max_abs_diff` when a score is missing.
    pub divergence: f64,
    /// `divergence` is the score delta (else it is `max_abs_diff`).
    pub by_score: bool,
    pub request_id: String,
    pub time_ms: u64,
    pub primary_score: Option<f64>,
    pub shadow_score: Option<f64>,
    pub primary_decision: Option<bool>,
    pub shadow_decision: Option<bool>,
    pub agree: bool,
}

/// Ranks [`Divergent`]s: larger divergence first, then the earlier, then by request id, so the
/// list does not depend on the order the files were read in.
#[derive(Debug)]
struct Ranked(Divergent);

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .divergence
            .total_cmp(&other.0.divergence)
            .then_with(|| other.0.time_ms.cmp(&self.0.time_ms))
            .then_with(|| other.0.request_id.cmp(&self.0.request_id))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

/// The `n` highest-ranked requests seen so far: a min-heap of at most `n`.
#[derive(Debug)]
struct TopN {
    n: usize,
    heap: BinaryHeap<Reverse<Ranked>>,
}

impl TopN {
    fn push(&mut self, d: Divergent) {
        if self.n == 0 {
            return;
        }
        let item = Ranked(d);
        if self.heap.len() == self.n {
            match self.heap.peek() {
                Some(Reverse(min)) if item <= *min => return,
                _ => {}
            }
            self.heap.pop();
        }
        self.heap.push(Reverse(item));
    }

    /// Highest first.
    fn into_sorted(self) -> Vec<Divergent> {
        // `Reverse` sorts descending by rank.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.0 .0)
            .collect()
    }
}

/// Running state of one group.
#[derive(Debug)]
struct GroupAcc {
    samples: Vec<Sample>,
    agreed: u64,
    /// Some record says every compared pair was logged.
    all_logged: bool,
    exact_mismatches: u64,
    confusion: Confusion,
    thresholds: Vec<f64>,
    more_thresholds: bool,
    top: TopN,
}

/// Reads records one at a time; [`Aggregator::finish`] computes the figures.
#[derive(Debug)]
pub struct Aggregator {
    groups: BTreeMap<GroupKey, GroupAcc>,
    top_n: usize,
    malformed: u64,
}

impl Aggregator {
    /// `top_n`: most divergent requests kept per group.
    pub fn new(top_n: usize) -> Self {
        Aggregator {
            groups: BTreeMap::new(),
            top_n,
            malformed: 0,
        }
    }

    /// Counts a line that is not a record.
    pub fn malformed_line(&mut self) {
        self.malformed += 1;
    }

    pub fn add(&mut self, r: Record) {
        let key = GroupKey {
            model: r.model,
            kind: r.kind,
            primary_version: r.primary_version,
            shadow_version: r.shadow_version,
        };
        let top_n = self.top_n;
        let g = self.groups.entry(key).or_insert_with(|| GroupAcc {
            samples: Vec::new(),
            agreed: 0,
            all_logged: false,
            exact_mismatches: 0,
            confusion: Confusion::default(),
            thresholds: Vec::new(),
            more_thresholds: false,
            top: TopN {
                n: top_n,
                heap: BinaryHeap::new(),
            },
        });
        let scores = match (r.primary_score, r.shadow_score) {
            (Some(p), Some(s)) if p.is_finite() && s.is_finite() => Some((p, s)),
            _ => None,
        };
        g.samples.push(Sample {
            time_ms: r.time_ms,
            agree: r.agree,
            scores,
            primary_latency_ms: r.primary_latency_ms.filter(|v| v.is_finite()),
            shadow_latency_ms: r.shadow_latency_ms.filter(|v| v.is_finite()),
        });
        g.agreed += u64::from(r.agree);
        g.all_logged |= r.logged.as_deref() == Some("all");
        g.exact_mismatches += u64::from(r.exact_mismatch);
        g.confusion.counts[Confusion::index(r.primary_decision)]
            [Confusion::index(r.shadow_decision)] += 1;
        if let Some(t) = r.threshold {
            if !g.thresholds.iter().any(|x| x.to_bits() == t.to_bits()) {
                if g.thresholds.len() < MAX_THRESHOLDS {
                    g.thresholds.push(t);
                } else {
                    g.more_thresholds = true;
                }
            }
        }
        let (divergence, by_score) = match scores {
            Some((p, s)) => ((s - p).abs(), true),
            None => (r.max_abs_diff.unwrap_or(0.0), false),
        };
        // Identical answers are not "divergent", however many there are.
        if r.agree && divergence == 0.0 && !r.exact_mismatch {
            return;
        }
        g.top.push(Divergent {
            divergence,
            by_score,
            request_id: r.request_id,
            time_ms: r.time_ms,
            primary_score: r.primary_score,
            shadow_score: r.shadow_score,
            primary_decision: r.primary_decision,
            shadow_decision: r.shadow_decision,
            agree: r.agree,
        });
    }

    /// The figures of every group (ordered by model, kind, versions); `bins` is the PSI's.
    pub fn finish(self, bins: usize) -> Report {
        let mut records = 0;
        let groups = self
            .groups
            .into_iter()
            .map(|(key, acc)| {
                records += acc.samples.len() as u64;
                summarize(key, acc, bins)
            })
            .collect();
        Report {
            groups,
            records,
            malformed: self.malformed,
        }
    }
}

/// Everything the report shows.
#[derive(Debug)]
pub struct Report {
    pub groups: Vec<GroupSummary>,
    /// Records read, over all groups.
    pub records: u64,
    /// Lines that were not records (bad JSON, missing fields, too long), skipped.
    pub malformed: u64,
}

/// Agreement of a group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Agreement {
    /// agree=true records / all records.
    Rate(f64),
    /// No record agrees: the log holds only diverging pairs (the writer's behaviour before
    /// `[shadow.compare] log = "all"`), so the rate cannot be computed.
    OnlyDiverging,
}

/// Nearest-rank percentiles of one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Percentiles {
    /// `None` for an empty sample. Sorts `v`.
    pub fn of(v: &mut [f64]) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Percentiles {
            n: v.len(),
            p50: nearest_rank(v, 50),
            p90: nearest_rank(v, 90),
            p99: nearest_rank(v, 99),
        })
    }
}

/// The `pct`-th percentile of a sorted, non-empty sample by nearest rank: the value at
/// 1-based rank ceil(pct/100 × n), computed in integers.
pub fn nearest_rank(sorted: &[f64], pct: usize) -> f64 {
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Counts over `bins` equal bins of [lo, hi]; a value equal to `hi` is in the last bin.
/// `lo == hi` (a constant sample) gives one bin.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub lo: f64,
    pub hi: f64,
    pub counts: Vec<u64>,
}

impl Histogram {
    pub fn new(values: impl IntoIterator<Item = f64>, lo: f64, hi: f64, bins: usize) -> Self {
        let bins = if hi > lo { bins.max(1) } else { 1 };
        let mut counts = vec![0u64; bins];
        let width = (hi - lo) / bins as f64;
        for v in values {
            let i = if bins == 1 {
                0
            } else {
                (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1)
            };
            counts[i] += 1;
        }
        Histogram { lo, hi, counts }
    }

    /// Lower and upper edge of bin `i`.
    pub fn edges(&self, i: usize) -> (f64, f64) {
        let w = (self.hi - self.lo) / self.counts.len() as f64;
        (self.lo + w * i as f64, self.lo + w * (i + 1) as f64)
    }
}

/// Score deltas (shadow − primary) of the pairs where both sides have a score.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaStats {
    pub mean: f64,
    pub percentiles: Percentiles,
    pub max_abs: f64,
    /// Over [−max_abs, max_abs], `TEXT_DELTA_BINS` bins.
    pub histogram: Histogram,
    /// Same range, `CHART_BINS` bins.
    pub chart: Histogram,
}

/// One bucket of the agreement-over-time series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBucket {
    pub start_ms: u64,
    pub records: u64,
    pub agreed: u64,
}

/// The figures of one group.
#[derive(Debug)]
pub struct GroupSummary {
    pub key: GroupKey,
    pub records: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    pub agreed: u64,
    /// The server logged every compared pair (so 0 agreed means 0 %).
    pub all_logged: bool,
    pub exact_mismatches: u64,
    /// Distinct thresholds seen (in order of appearance); `more_thresholds` if there were
    /// more than fit.
    pub thresholds: Vec<f64>,
    pub more_thresholds: bool,
    pub confusion: Confusion,
    /// Pairs where both sides have a score: the sample of the PSI and the deltas.
    pub scored_pairs: usize,
    pub bins: usize,
    /// PSI of the shadow scores against the primary scores.
    pub psi: Option<f64>,
    pub delta: Option<DeltaStats>,
    /// (primary, shadow) score histograms over their common range.
    pub score_histograms: Option<(Histogram, Histogram)>,
    pub primary_latency: Option<Percentiles>,
    pub shadow_latency: Option<Percentiles>,
    /// Width of a [`TimeBucket`] in milliseconds.
    pub bucket_ms: u64,
    pub timeline: Vec<TimeBucket>,
    /// Most divergent first.
    pub top: Vec<Divergent>,
}

impl GroupSummary {
    pub fn agreement(&self) -> Agreement {
        if self.agreed == 0 && !self.all_logged {
            Agreement::OnlyDiverging
        } else {
            Agreement::Rate(self.agreed as f64 / self.records as f64)
        }
    }
}

fn summarize(key: GroupKey, acc: GroupAcc, bins: usize) -> GroupSummary {
    let samples = acc.samples;
    let first_ms = samples.iter().map(|s| s.time_ms).min().unwrap_or(0);
    let last_ms = samples.iter().map(|s| s.time_ms).max().unwrap_or(0);
    let (primary, shadow): (Vec<f64>, Vec<f64>) = samples.iter().filter_map(|s| s.scores).unzip();
    let psi = psi(&primary, &shadow, bins);
    let mut deltas: Vec<f64> = primary.iter().zip(&shadow).map(|(p, s)| s - p).collect();
    let delta = delta_stats(&mut deltas);
    let score_histograms = (!primary.is_empty()).then(|| {
        let (lo, hi) = primary
            .iter()
            .chain(&shadow)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            });
        (
            Histogram::new(primary.iter().copied(), lo, hi, CHART_BINS),
            Histogram::new(shadow.iter().copied(), lo, hi, CHART_BINS),
        )
    });
    let mut lat: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.primary_latency_ms)
        .collect();
    let primary_latency = Percentiles::of(&mut lat);
    let mut lat: Vec<f64> = samples.iter().filter_map(|s| s.shadow_latency_ms).collect();
    let shadow_latency = Percentiles::of(&mut lat);
    let bucket_ms = (last_ms - first_ms) / TIME_BUCKETS + 1;
    let mut timeline: Vec<TimeBucket> = (0..=(last_ms - first_ms) / bucket_ms)
        .map(|i| TimeBucket {
            start_ms: first_ms + i * bucket_ms,
            records: 0,
            agreed: 0,
        })
        .collect();
    for s in &samples {
        let b = &mut timeline[((s.time_ms - first_ms) / bucket_ms) as usize];
        b.records += 1;
        b.agreed += u64::from(s.agree);
    }
    GroupSummary {
        key,
        records: samples.len() as u64,
        first_ms,
        last_ms,
        agreed: acc.agreed,
        all_logged: acc.all_logged,
        exact_mismatches: acc.exact_mismatches,
        thresholds: acc.thresholds,
        more_thresholds: acc.more_thresholds,
        confusion: acc.confusion,
        scored_pairs: primary.len(),
        bins,
        psi,
        delta,
        score_histograms,
        primary_latency,
        shadow_latency,
        bucket_ms,
        timeline,
        top: acc.top.into_sorted(),
    }
}

fn delta_stats(deltas: &mut [f64]) -> Option<DeltaStats> {
    let mean = deltas.iter().sum::<f64>() / deltas.len() as f64;
    let percentiles = Percentiles::of(deltas)?;
    let max_abs = deltas.iter().fold(0.0f64, |m, d| m.max(d.abs()));
    Some(DeltaStats {
        mean,
        percentiles,
        max_abs,
        histogram: Histogram::new(deltas.iter().copied(), -max_abs, max_abs, TEXT_DELTA_BINS),
        chart: Histogram::new(deltas.iter().copied(), -max_abs, max_abs, CHART_BINS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shadow record of fraud v1 → v2 with threshold 0.5.
    fn rec(id: &str, t: u64, p: f64, s: f64) -> Record {
        Record {
            time_ms: t,
            model: "fraud".into(),
            request_id: id.into(),
            kind: "shadow".into(),
            primary_version: 1,
            shadow_version: 2,
            primary_score: Some(p),
            shadow_score: Some(s),
            primary_decision: Some(p > 0.5),
            shadow_decision: Some(s > 0.5),
            threshold: Some(0.5),
            agree: (p > 0.5) == (s > 0.5),
            max_abs_diff: Some((p - s).abs()),
            exact_mismatch: false,
            primary_latency_ms: Some(1.0),
            shadow_latency_ms: Some(2.0),
            logged: None,
        }
    }

    fn one_group(records: Vec<Record>, top: usize) -> GroupSummary {
        let mut a = Aggregator::new(top);
        for r in records {
            a.add(r);
        }
        let mut rep = a.finish(10);
        assert_eq!(rep.groups.len(), 1);
        rep.groups.remove(0)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 50), 50.0);
        assert_eq!(nearest_rank(&v, 99), 99.0);
        assert_eq!(nearest_rank(&v, 100), 100.0);
        assert_eq!(nearest_rank(&[7.0], 50), 7.0);
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0, 4.0], 50), 2.0);
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0, 4.0], 90), 4.0);
        let mut w = vec![3.0, 1.0, 2.0];
        let p = Percentiles::of(&mut w).unwrap();
        assert_eq!((p.n, p.p50, p.p99), (3, 2.0, 3.0));
        assert_eq!(Percentiles::of(&mut []), None);
    }

    #[test]
    fn groups_are_keyed_by_model_kind_and_versions() {
        let mut a = Aggregator::new(3);
        a.add(rec("a", 1, 0.1, 0.2));
        let mut other = rec("b", 2, 0.1, 0.2);
        other.kind = "canary_check".into();
        a.add(other);
        let mut v3 = rec("c", 3, 0.1, 0.2);
        v3.shadow_version = 3;
        a.add(v3);
        a.add(rec("d", 4, 0.1, 0.9));
        a.malformed_line();
        let rep = a.finish(10);
        assert_eq!((rep.records, rep.malformed), (4, 1));
        let keys: Vec<(&str, i64, u64)> = rep
            .groups
            .iter()
            .map(|g| (g.key.kind.as_str(), g.key.shadow_version, g.records))
            .collect();
        assert_eq!(
            keys,
            vec![("canary_check", 2, 1), ("shadow", 2, 2), ("shadow", 3, 1)]
        );
    }

    #[test]
    fn agreement_rate_and_only_diverging_logs() {
        let g = one_group(
            vec![
                rec("a", 1, 0.1, 0.2),
                rec("b", 2, 0.6, 0.7),
                rec("c", 3, 0.6, 0.4),
                rec("d", 4, 0.3, 0.8),
            ],
            10,
        );
        assert_eq!(g.agreement(), Agreement::Rate(0.5));
        // A log of diverging pairs only: no rate, not 0 %.
        let g = one_group(vec![rec("c", 3, 0.6, 0.4), rec("d", 4, 0.3, 0.8)], 10);
        assert_eq!(g.agreement(), Agreement::OnlyDiverging);
        // The same pairs from a server that logged everything: a shadow that never agrees.
        let all = |mut r: Record| {
            r.logged = Some("all".into());
            r
        };
        let g = one_group(
            vec![all(rec("c", 3, 0.6, 0.4)), all(rec("d", 4, 0.3, 0.8))],
            10,
        );
        assert_eq!(g.agreement(), Agreement::Rate(0.0));
    }

    #[test]
    fn confusion_counts_decisions() {
        let mut none = rec("e", 5, 0.1, 0.2);
        none.shadow_decision = None;
        let g = one_group(
            vec![
                rec("a", 1, 0.9, 0.8),
                rec("b", 2, 0.9, 0.1),
                rec("c", 3, 0.1, 0.9),
                rec("d", 4, 0.1, 0.2),
                rec("d2", 4, 0.1, 0.3),
                none,
            ],
            10,
        );
        assert_eq!(
            g.confusion.counts,
            [[1, 1, 0], [1, 2, 1], [0, 0, 0]],
            "rows primary true/false/none, columns shadow"
        );
        assert!(g.confusion.has_decisions());
        assert_eq!(g.confusion.shown(), vec![0, 1, 2]);
        let mut c = Confusion::default();
        c.counts[2][2] = 5;
        assert!(!c.has_decisions());
        c.counts = [[1, 0, 0], [0, 1, 0], [0, 0, 0]];
        assert_eq!(c.shown(), vec![0, 1]);
    }

    #[test]
    fn deltas_psi_and_latency() {
        let recs: Vec<Record> = (0..100)
            .map(|i| {
                let p = i as f64 / 100.0;
                let mut r = rec(&format!("r{i}"), i, p, p + 0.01);
                r.primary_latency_ms = Some(i as f64 + 1.0);
                r
            })
            .collect();
        let g = one_group(recs, 3);
        assert_eq!(g.scored_pairs, 100);
        let d = g.delta.as_ref().unwrap();
        assert!((d.mean - 0.01).abs() < 1e-9);
        assert!((d.percentiles.p50 - 0.01).abs() < 1e-9);
        assert!((d.max_abs - 0.01).abs() < 1e-9);
        assert_eq!(d.histogram.counts.iter().sum::<u64>(), 100);
        // Every delta is +max_abs: the last bin.
        assert_eq!(d.histogram.counts[9], 100);
        let primary: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        let shadow: Vec<f64> = primary.iter().map(|p| p + 0.01).collect();
        assert_eq!(g.psi, psi(&primary, &shadow, 10));
        let lat = g.primary_latency.unwrap();
        assert_eq!((lat.p50, lat.p99), (50.0, 99.0));
        assert_eq!(g.shadow_latency.unwrap().p99, 2.0);
        let (hp, hs) = g.score_histograms.as_ref().unwrap();
        assert_eq!(hp.counts.iter().sum::<u64>(), 100);
        assert_eq!(hs.counts.iter().sum::<u64>(), 100);
        assert_eq!((hp.lo, hs.hi), (0.0, 0.99 + 0.01));
    }

    #[test]
    fn top_n_ranks_by_score_delta_then_max_abs_diff() {
        let mut no_score = rec("noscore", 9, 0.0, 0.0);
        no_score.primary_score = None;
        no_score.max_abs_diff = Some(0.65);
        let g = one_group(
            vec![
                rec("small", 1, 0.5, 0.51),
                rec("big", 2, 0.1, 0.9),
                no_score,
                rec("mid", 3, 0.2, 0.6),
                rec("tie-later", 5, 0.2, 0.6),
            ],
            3,
        );
        let ids: Vec<&str> = g.top.iter().map(|d| d.request_id.as_str()).collect();
        assert_eq!(ids, vec!["big", "noscore", "mid"]);
        assert!(g.top[0].by_score && !g.top[1].by_score);
        assert!((g.top[0].divergence - 0.8).abs() < 1e-12);
        assert!(one_group(vec![rec("a", 1, 0.1, 0.9)], 0).top.is_empty());
        let mut same = rec("same", 1, 0.3, 0.3);
        same.agree = true;
        assert!(one_group(vec![same], 3).top.is_empty());
    }

    #[test]
    fn histogram_bins_and_edges() {
        let h = Histogram::new([0.0, 0.1, 0.5, 0.99, 1.0, -3.0, 7.0], 0.0, 1.0, 4);
        assert_eq!(h.counts, vec![3, 0, 1, 3]);
        assert_eq!(h.edges(1), (0.25, 0.5));
        let constant = Histogram::new([0.3, 0.3], 0.3, 0.3, 10);
        assert_eq!(constant.counts, vec![2]);
        let g = one_group(vec![rec("a", 1, 0.4, 0.4)], 1);
        assert_eq!(g.delta.unwrap().histogram.counts, vec![1]);
    }

    #[test]
    fn timeline_buckets_cover_the_span() {
        let recs: Vec<Record> = (0..1000u64)
            .map(|i| rec("x", 10_000 + i * 7, 0.1, if i % 4 == 0 { 0.9 } else { 0.2 }))
            .collect();
        let g = one_group(recs, 1);
        assert_eq!((g.first_ms, g.last_ms), (10_000, 10_000 + 999 * 7));
        assert!(g.timeline.len() as u64 <= TIME_BUCKETS);
        assert_eq!(g.timeline.iter().map(|b| b.records).sum::<u64>(), 1000);
        assert_eq!(g.timeline.iter().map(|b| b.agreed).sum::<u64>(), 750);
        assert_eq!(g.timeline[0].start_ms, 10_000);
        // One instant: one bucket.
        let g = one_group(vec![rec("a", 5, 0.1, 0.2), rec("b", 5, 0.1, 0.2)], 1);
        assert_eq!(g.timeline.len(), 1);
        assert_eq!(g.timeline[0].records, 2);
    }

    #[test]
    fn thresholds_are_collected_and_bounded() {
        let recs: Vec<Record> = (0..20)
            .map(|i| {
                let mut r = rec("x", i, 0.1, 0.2);
                r.threshold = Some(if i < 10 { 0.5 } else { i as f64 });
                r
            })
            .collect();
        let g = one_group(recs, 1);
        assert_eq!(g.thresholds.len(), MAX_THRESHOLDS);
        assert_eq!(g.thresholds[0], 0.5);
        assert!(g.more_thresholds);
    }
}
