//! Population stability index (PSI) of two score samples: how far the `actual` distribution
//! has moved from the `expected` one. Bins are the deciles (or `bins`-quantiles) of
//! `expected`, so the index works for any score range; empty bins get a small floor so the
//! logarithm stays finite. Rules of thumb: below 0.1 no shift, 0.1-0.25 some, above 0.25 a
//! large shift. The canary gate (`max_psi`), the shadow metrics and `shadow-report` all use
//! this one function.

/// Bins used when none are given.
pub const DEFAULT_BINS: usize = 10;

/// Share given to an empty bin, so `ln(a / e)` stays finite.
const FLOOR: f64 = 1e-4;

/// PSI of `actual` against `expected` over `bins` quantile bins of `expected`.
/// `None` when either sample has no finite value or `bins` is below 2.
pub fn psi(expected: &[f64], actual: &[f64], bins: usize) -> Option<f64> {
    let mut e: Vec<f64> = expected.iter().copied().filter(|v| v.is_finite()).collect();
    let a: Vec<f64> = actual.iter().copied().filter(|v| v.is_finite()).collect();
    if e.is_empty() || a.is_empty() || bins < 2 {
        return None;
    }
    e.sort_by(f64::total_cmp);
    // Inner edges: the 1/bins .. (bins-1)/bins quantiles of `expected`, without repeats
    // (a score that takes few values yields fewer, wider bins).
    let mut edges: Vec<f64> = (1..bins)
        .map(|i| e[(i * e.len() / bins).min(e.len() - 1)])
        .collect();
    edges.dedup();
    let counts = |xs: &[f64]| {
        let mut c = vec![0usize; edges.len() + 1];
        for x in xs {
            // Bin i holds edges[i-1] <= x < edges[i].
            c[edges.partition_point(|edge| *edge <= *x)] += 1;
        }
        c
    };
    let (ce, ca) = (counts(&e), counts(&a));
    let (ne, na) = (e.len() as f64, a.len() as f64);
    Some(
        ce.iter()
            .zip(&ca)
            .map(|(x, y)| {
                let pe = (*x as f64 / ne).max(FLOOR);
                let pa = (*y as f64 / na).max(FLOOR);
                (pa - pe) * (pa / pe).ln()
            })
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|i| lo + (hi - lo) * (i as f64 + 0.5) / n as f64)
            .collect()
    }

    #[test]
    fn same_distribution_is_near_zero() {
        let a = uniform(1000, 0.0, 1.0);
        let b = uniform(700, 0.0, 1.0);
        assert!(psi(&a, &b, DEFAULT_BINS).unwrap() < 0.01);
    }

    #[test]
    fn shifted_distribution_is_large() {
        let a = uniform(1000, 0.0, 1.0);
        let small = psi(&a, &uniform(1000, 0.05, 1.05), DEFAULT_BINS).unwrap();
        let large = psi(&a, &uniform(1000, 0.5, 1.5), DEFAULT_BINS).unwrap();
        assert!(small > 0.0 && small < 0.1, "{small}");
        assert!(large > 0.25, "{large}");
        assert!(large > small);
    }

    #[test]
    fn known_value() {
        // Two bins (edge 0.5): expected 50/50, actual 80/20.
        let e = [0.0, 0.0, 1.0, 1.0];
        let a = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0];
        let v = psi(&e, &a, 2).unwrap();
        let want = (0.8 - 0.5) * (0.8f64 / 0.5).ln() + (0.2 - 0.5) * (0.2f64 / 0.5).ln();
        assert!((v - want).abs() < 1e-12, "{v} vs {want}");
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(psi(&[], &[1.0], 10), None);
        assert_eq!(psi(&[1.0], &[f64::NAN], 10), None);
        assert_eq!(psi(&[1.0], &[1.0], 1), None);
        // A constant score: one bin edge, no shift.
        assert!(psi(&[0.3; 50], &[0.3; 20], 10).unwrap().abs() < 1e-12);
    }
}
