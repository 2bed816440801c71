//! Which version answers an unversioned request. Pure functions of the deployment, the model
//! name and the request's sticky key, so every replica with the same `deployment.toml` makes
//! the same choice for the same key.

use xxhash_rust::xxh3::xxh3_64;

use super::config::Deployment;
use super::gates::Live;

/// Basis points in 100 %.
pub const BASIS_POINTS: u32 = 10_000;

/// The routing decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// This version (stable or canary).
    Version(i64),
    /// No deployment preference: the highest READY version that is not switched off.
    Highest,
}

/// The bucket (0..10 000) of a sticky key. XXH3 of `model \0 key`: stable across processes,
/// machines and releases of the hash crate (XXH3 is a fixed specification).
pub fn key_bucket(model: &str, key: &str) -> u32 {
    let mut buf = Vec::with_capacity(model.len() + key.len() + 1);
    buf.extend_from_slice(model.as_bytes());
    buf.push(0);
    buf.extend_from_slice(key.as_bytes());
    (xxh3_64(&buf) % u64::from(BASIS_POINTS)) as u32
}

/// The bucket of the `seq`-th request without a key: uniform, so splits match the weight.
pub fn seq_bucket(seq: u64) -> u32 {
    (xxh3_64(&seq.to_le_bytes()) % u64::from(BASIS_POINTS)) as u32
}

/// Routes one unversioned request. `live` is the rollout's state (weight in effect, rollback,
/// promotion); `killed` says which versions are switched off now.
pub fn pick(
    d: &Deployment,
    model: &str,
    key: Option<&str>,
    seq: u64,
    live: Option<Live>,
    killed: impl Fn(i64) -> bool,
) -> Pick {
    if let Some((canary, file_weight)) = d.canary {
        let live = live.unwrap_or(Live {
            weight_bp: None,
            promoted: false,
        });
        if live.promoted && !killed(canary) {
            return Pick::Version(canary);
        }
        let weight = live.weight_bp.unwrap_or(file_weight);
        if weight > 0 && !killed(canary) {
            let bucket = match key {
                Some(k) => key_bucket(model, k),
                None => seq_bucket(seq),
            };
            if bucket < weight {
                return Pick::Version(canary);
            }
        }
    }
    d.stable.map_or(Pick::Highest, Pick::Version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(weight_bp: u32) -> Deployment {
        Deployment {
            stable: Some(1),
            canary: Some((2, weight_bp)),
            ..Default::default()
        }
    }

    #[test]
    fn split_follows_the_weight() {
        let d = canary(2_000);
        let n = 100_000;
        let to_canary = (0..n)
            .filter(|s| pick(&d, "m", None, *s, None, |_| false) == Pick::Version(2))
            .count();
        let share = to_canary as f64 / n as f64;
        assert!((share - 0.2).abs() < 0.01, "{share}");
        let keyed = (0..n)
            .filter(|k| {
                pick(&d, "m", Some(&format!("user-{k}")), 0, None, |_| false) == Pick::Version(2)
            })
            .count();
        assert!(((keyed as f64 / n as f64) - 0.2).abs() < 0.01);
    }

    #[test]
    fn sticky_keys_are_stable_and_monotone_in_the_weight() {
        // Same key, same answer, whatever the request sequence number.
        let d = canary(5_000);
        for k in ["alice", "bob", "carol"] {
            let first = pick(&d, "m", Some(k), 0, None, |_| false);
            assert!((1..100).all(|s| pick(&d, "m", Some(k), s, None, |_| false) == first));
        }
        // Raising the weight only moves users from stable to canary, never back.
        for k in 0..1000 {
            let key = format!("u{k}");
            if pick(&canary(500), "m", Some(&key), 0, None, |_| false) == Pick::Version(2) {
                assert_eq!(
                    pick(&canary(2_000), "m", Some(&key), 0, None, |_| false),
                    Pick::Version(2)
                );
            }
        }
        // Pinned: the bucket is part of the cross-replica contract; it must never change.
        assert_eq!(key_bucket("fraud_mlp", "user-42"), 3969);
        assert_ne!(key_bucket("a", "bc"), key_bucket("ab", "c"));
    }

    #[test]
    fn killed_canary_and_defaults() {
        let d = canary(10_000);
        assert_eq!(pick(&d, "m", None, 7, None, |_| false), Pick::Version(2));
        assert_eq!(pick(&d, "m", None, 7, None, |v| v == 2), Pick::Version(1));
        let off = Live {
            weight_bp: Some(0),
            promoted: false,
        };
        assert_eq!(
            pick(&d, "m", None, 7, Some(off), |_| false),
            Pick::Version(1)
        );
        let promoted = Live {
            weight_bp: Some(100),
            promoted: true,
        };
        assert_eq!(
            pick(&canary(0), "m", None, 7, Some(promoted), |_| false),
            Pick::Version(2)
        );
        assert_eq!(
            pick(&Deployment::default(), "m", None, 0, None, |_| false),
            Pick::Highest
        );
        assert_eq!(
            pick(&canary(0), "m", None, 3, None, |_| false),
            Pick::Version(1)
        );
    }
}
