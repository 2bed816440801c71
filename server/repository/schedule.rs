//! `dynamic_batching` in config.pbtxt → [`SchedulerConfig`], refusing the combinations
//! Triton refuses, with the field named.

use std::time::Duration;

use crate::proto::inference::{
    model_config::SchedulingChoice, model_queue_policy::TimeoutAction, ModelConfig,
    ModelQueuePolicy,
};
use crate::scheduler::queue::BatchPolicy;
use crate::scheduler::{LevelPolicy, SchedulerConfig};

/// Builds the scheduler settings of a normalised config.
pub fn scheduler_config(
    config: &ModelConfig,
    default_queue: usize,
    hold_until: usize,
) -> Result<SchedulerConfig, String> {
    let model = &config.name;
    let mbs = config.max_batch_size.max(0) as u64;
    let Some(SchedulingChoice::DynamicBatching(db)) = &config.scheduling_choice else {
        if let Some(SchedulingChoice::SequenceBatching(_)) = &config.scheduling_choice {
            return Err(format!(
                "model '{model}': sequence_batching is not supported by Switchyard yet"
            ));
        }
        if let Some(SchedulingChoice::EnsembleScheduling(_)) = &config.scheduling_choice {
            return Err(format!(
                "model '{model}': ensemble_scheduling is not supported by Switchyard yet"
            ));
        }
        // Triton's default scheduler: every request runs alone.
        return Ok(SchedulerConfig {
            policy: BatchPolicy {
                max_batch_size: 0,
                preferred: Vec::new(),
                max_queue_delay: Duration::ZERO,
            },
            levels: vec![level_policy(&ModelQueuePolicy::default(), default_queue)],
            default_level: 0,
            preserve_ordering: false,
            hold_until,
        });
    };
    let mut preferred = Vec::with_capacity(db.preferred_batch_size.len());
    for &p in &db.preferred_batch_size {
        if p <= 0 || p as u64 > mbs {
            return Err(format!(
                "model '{model}': dynamic_batching.preferred_batch_size must be > 0 and <= max_batch_size ({mbs}), got {p}"
            ));
        }
        preferred.push(p as u64);
    }
    preferred.sort_unstable();
    preferred.dedup();
    if preferred.is_empty() && mbs > 0 {
        preferred.push(mbs);
    }
    let levels = db.priority_levels;
    if levels > 0 && (db.default_priority_level == 0 || db.default_priority_level > levels) {
        return Err(format!(
            "model '{model}': dynamic_batching.default_priority_level must be in [1, {levels}] when priority_levels is {levels}, got {}",
            db.default_priority_level
        ));
    }
    if levels == 0 && !db.priority_queue_policy.is_empty() {
        return Err(format!(
            "model '{model}': dynamic_batching.priority_queue_policy requires priority_levels > 0"
        ));
    }
    if let Some(k) = db
        .priority_queue_policy
        .keys()
        .find(|&&k| k == 0 || k > levels)
    {
        return Err(format!(
            "model '{model}': dynamic_batching.priority_queue_policy key {k} must be in [1, {levels}]"
        ));
    }
    let default_policy = db.default_queue_policy.unwrap_or_default();
    let policies: Vec<&ModelQueuePolicy> = (1..=levels.max(1))
        .map(|l| db.priority_queue_policy.get(&l).unwrap_or(&default_policy))
        .collect();
    if db.preserve_ordering {
        if levels > 1 {
            return Err(format!(
                "model '{model}': dynamic_batching.preserve_ordering: only one priority level is allowed when 'preserve_ordering' is true (priority_levels is {levels})"
            ));
        }
        if policies.iter().any(|p| {
            p.timeout_action == TimeoutAction::Delay as i32 && p.default_timeout_microseconds != 0
        }) {
            return Err(format!(
                "model '{model}': dynamic_batching.preserve_ordering: queue policy can not have DELAY as timeout_action when 'preserve_ordering' is true"
            ));
        }
    }
    Ok(SchedulerConfig {
        policy: BatchPolicy {
            max_batch_size: mbs,
            preferred,
            max_queue_delay: Duration::from_micros(db.max_queue_delay_microseconds),
        },
        levels: policies
            .into_iter()
            .map(|p| level_policy(p, default_queue))
            .collect(),
        default_level: db.default_priority_level.saturating_sub(1) as usize,
        preserve_ordering: db.preserve_ordering,
        hold_until,
    })
}

/// One level's `ModelQueuePolicy`; `max_queue_size: 0` (Triton: unlimited) becomes the
/// server's `--max-pending-requests`, so no queue is unbounded.
fn level_policy(p: &ModelQueuePolicy, default_queue: usize) -> LevelPolicy {
    LevelPolicy {
        max_queue_size: if p.max_queue_size > 0 {
            p.max_queue_size as usize
        } else {
            default_queue.max(1)
        },
        default_timeout: (p.default_timeout_microseconds > 0)
            .then(|| Duration::from_micros(p.default_timeout_microseconds)),
        allow_timeout_override: p.allow_timeout_override,
        delay_on_timeout: p.timeout_action == TimeoutAction::Delay as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::pbtxt::parse_model_config;

    fn cfg(text: &str) -> Result<SchedulerConfig, String> {
        let mut c = parse_model_config(text).unwrap().config;
        c.name = "m".into();
        scheduler_config(&c, 100, 0)
    }

    #[test]
    fn triton_batching_config() {
        let s = cfg("max_batch_size: 8 dynamic_batching { preferred_batch_size: [ 8, 4 ] max_queue_delay_microseconds: 100 default_queue_policy { max_queue_size: 3 default_timeout_microseconds: 50 allow_timeout_override: true } }").unwrap();
        assert_eq!(s.policy.preferred, vec![4, 8]);
        assert_eq!(s.policy.max_queue_delay, Duration::from_micros(100));
        assert_eq!(s.levels.len(), 1);
        assert_eq!(s.levels[0].max_queue_size, 3);
        assert_eq!(s.levels[0].default_timeout, Some(Duration::from_micros(50)));
        assert!(s.levels[0].allow_timeout_override);
        assert!(!s.levels[0].delay_on_timeout);
        let s = cfg("max_batch_size: 8 dynamic_batching { }").unwrap();
        assert_eq!(s.policy.preferred, vec![8]);
        assert_eq!(s.levels[0].max_queue_size, 100);
        let s = cfg("max_batch_size: 8").unwrap();
        assert_eq!(s.policy.max_batch_size, 0);
    }

    #[test]
    fn rejected_combinations_name_the_field() {
        assert!(
            cfg("max_batch_size: 8 dynamic_batching { preferred_batch_size: [ 16 ] }")
                .unwrap_err()
                .contains("preferred_batch_size")
        );
        assert!(cfg(
            "max_batch_size: 8 dynamic_batching { priority_levels: 2 default_priority_level: 3 }"
        )
        .unwrap_err()
        .contains("default_priority_level"));
        assert!(cfg("max_batch_size: 8 dynamic_batching { priority_levels: 2 default_priority_level: 1 preserve_ordering: true }").unwrap_err().contains("preserve_ordering"));
        let ok = cfg(
            "max_batch_size: 8 dynamic_batching { priority_levels: 2 default_priority_level: 2 }",
        )
        .unwrap();
        assert_eq!((ok.levels.len(), ok.default_level), (2, 1));
        assert!(cfg("max_batch_size: 8 dynamic_batching { default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 5 } preserve_ordering: true }").unwrap_err().contains("DELAY"));
        assert!(cfg("max_batch_size: 8 dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 3 value { max_queue_size: 1 } } }").unwrap_err().contains("priority_queue_policy key 3"));
        assert!(cfg("max_batch_size: 8 dynamic_batching { priority_queue_policy { key: 1 value { max_queue_size: 1 } } }").unwrap_err().contains("priority_levels"));
    }

    #[test]
    fn per_level_queue_policies() {
        let s = cfg("max_batch_size: 8 dynamic_batching { priority_levels: 3 default_priority_level: 2 default_queue_policy { max_queue_size: 7 } priority_queue_policy { key: 1 value { max_queue_size: 2 default_timeout_microseconds: 1000 timeout_action: DELAY } } priority_queue_policy { key: 3 value { allow_timeout_override: true default_timeout_microseconds: 9 } } }").unwrap();
        assert_eq!(s.levels.len(), 3);
        assert_eq!(s.levels[0].max_queue_size, 2);
        assert!(s.levels[0].delay_on_timeout);
        assert_eq!(
            s.levels[0].default_timeout,
            Some(Duration::from_micros(1000))
        );
        assert_eq!(s.levels[1].max_queue_size, 7);
        assert!(!s.levels[1].delay_on_timeout);
        // max_queue_size 0 (Triton: unlimited) is bounded by --max-pending-requests.
        assert_eq!(s.levels[2].max_queue_size, 100);
        assert!(s.levels[2].allow_timeout_override);
        let o = cfg("max_batch_size: 8 dynamic_batching { preserve_ordering: true }").unwrap();
        assert!(o.preserve_ordering);
    }
}
