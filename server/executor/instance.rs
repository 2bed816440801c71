//! One OS thread per model instance. Each owns its engine (its own ORT session), takes
//! batches from the version's queue, runs them, splits the outputs back per request and
//! answers each request's oneshot. Dropping the [`InstanceGuard`] waits for the thread,
//! which exits once the queue is closed and empty.

use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use tokio::time::Instant;

use super::{Engine, ExecError};
use crate::error::InferError;
use crate::model::ModelSpec;
use crate::request::InferResponse;
use crate::scheduler::{Batch, Job, Work};
use crate::stats::{FailureReason, ModelStats};
use crate::tensor::{element_count, split_bytes_elements, NamedTensor, Tensor};

/// Fault injection for tests and drills (model config parameters
/// `switchyard_fault_latency_ms`, `switchyard_fault_error_rate`, `switchyard_fault_versions`):
/// every execution sleeps `latency` first, and fails with probability `error_rate`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Fault {
    pub latency: std::time::Duration,
    /// 0.0 to 1.0.
    pub error_rate: f64,
}

impl Fault {
    fn is_off(&self) -> bool {
        self.latency.is_zero() && self.error_rate <= 0.0
    }

    /// Applies the fault to the `n`-th execution: sleeps, then says whether it fails.
    fn strike(&self, n: u64) -> bool {
        if !self.latency.is_zero() {
            std::thread::sleep(self.latency);
        }
        if self.error_rate <= 0.0 {
            return false;
        }
        let draw = xxhash_rust::xxh3::xxh3_64(&n.to_le_bytes()) as f64 / u64::MAX as f64;
        draw < self.error_rate
    }
}

/// Joins the instance thread on drop.
#[derive(Debug)]
pub struct InstanceGuard {
    thread: Option<JoinHandle<()>>,
}

impl InstanceGuard {
    /// The thread has exited (stopped, or its queue closed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            // A panicking engine must not take the server down with it.
            let _ = t.join();
        }
    }
}

/// Starts an instance thread named `name` running `engine` on batches from `rx`, announcing
/// each free slot on `slots`.
pub fn spawn_instance(
    name: String,
    mut engine: Box<dyn Engine>,
    rx: Receiver<Work>,
    slots: Sender<()>,
    spec: Arc<ModelSpec>,
    stats: Arc<ModelStats>,
    fault: Fault,
) -> std::io::Result<InstanceGuard> {
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        let mut executions = 0u64;
        // One token per free slot: the batcher forms a batch only while it holds one.
        while slots.send(()).is_ok() {
            match rx.recv() {
                Ok(Work::Run(batch)) => {
                    executions += 1;
                    let fail = !fault.is_off() && fault.strike(executions);
                    run_batch(engine.as_mut(), batch, &spec, &stats, fail)
                }
                Ok(Work::Stop) | Err(_) => break,
            }
        }
    })?;
    Ok(InstanceGuard {
        thread: Some(thread),
    })
}

/// Drops jobs nobody waits for any more and fails the ones past their deadline.
fn live_jobs(batch: Batch, stats: &ModelStats) -> Vec<Job> {
    let now = Instant::now();
    batch
        .jobs
        .into_iter()
        .filter_map(|job| {
            if job.reply.is_closed() {
                tracing::debug!(id = %job.request.id, "dropping request: client went away");
                stats.record_failure(now - job.received, FailureReason::Canceled);
                return None;
            }
            if job.deadline.is_some_and(|d| d <= now) {
                stats.record_failure(now - job.received, FailureReason::Canceled);
                job.reply.send(Err(InferError::DeadlineExceeded(
                    "Deadline exceeded before the request reached the model".into(),
                )));
                return None;
            }
            Some(job)
        })
        .collect()
}

fn run_batch(
    engine: &mut dyn Engine,
    batch: Batch,
    spec: &ModelSpec,
    stats: &ModelStats,
    injected_failure: bool,
) {
    let jobs = live_jobs(batch, stats);
    if jobs.is_empty() {
        return;
    }
    let exec_start = Instant::now();
    // Union of the outputs the batch's requests asked for, in model order.
    let mut wanted: Vec<usize> = jobs
        .iter()
        .flat_map(|j| j.request.outputs.iter().copied())
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let names: Vec<String> = wanted
        .iter()
        .map(|&i| spec.outputs[i].name.clone())
        .collect();

    let sizes: Vec<u64> = jobs.iter().map(|j| j.request.batch_size).collect();
    let result = if injected_failure {
        Err(ExecError::Run(
            "injected fault (switchyard_fault_error_rate in the model config)".into(),
        ))
    } else if jobs.len() == 1 {
        engine.execute(&jobs[0].request.inputs, &names)
    } else {
        concat_inputs(&jobs).and_then(|inputs| engine.execute(&inputs, &names))
    };
    let output = match result {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(model = %spec.name, version = spec.version, error = %e, "execution failed");
            let now = Instant::now();
            for job in jobs {
                stats.record_failure(now - job.received, FailureReason::Backend);
                job.reply.send(Err(InferError::Exec(e.clone())));
            }
            return;
        }
    };
    let total: u64 = sizes.iter().sum();
    stats.record_execution(total, &output.times);

    // Split every output along dim 0, one part per job (a single job keeps it whole).
    let mut per_output: Vec<Vec<Tensor>> = Vec::with_capacity(output.tensors.len());
    for t in output.tensors {
        if jobs.len() == 1 {
            per_output.push(vec![t.tensor]);
            continue;
        }
        match split_batch(&t.tensor, &sizes) {
            Ok(parts) => per_output.push(parts),
            Err(e) => {
                let now = Instant::now();
                for job in jobs {
                    stats.record_failure(now - job.received, FailureReason::Backend);
                    job.reply.send(Err(InferError::Exec(e.clone())));
                }
                return;
            }
        }
    }
    let now = Instant::now();
    for (j, job) in jobs.into_iter().enumerate() {
        let outputs = job
            .request
            .outputs
            .iter()
            .map(|&oi| {
                let pos = wanted.iter().position(|&w| w == oi).unwrap_or(0);
                let mut tensor = per_output[pos][j].clone();
                tensor.shape = api_output_shape(spec, oi, job.request.batch_size, tensor.shape);
                NamedTensor {
                    name: spec.outputs[oi].name.clone(),
                    tensor,
                }
            })
            .collect();
        stats.record_success(now - job.received, exec_start - job.enqueued, &output.times);
        job.reply.send(Ok(InferResponse {
            model_name: spec.name.clone(),
            model_version: spec.version,
            id: job.request.id,
            outputs,
        }));
    }
}

/// The shape clients see for output `oi`: the config dims when the config reshapes the
/// output and its dims are fixed; otherwise what the engine produced.
fn api_output_shape(spec: &ModelSpec, oi: usize, batch: u64, engine_shape: Vec<i64>) -> Vec<i64> {
    let io = &spec.outputs[oi];
    if io.reshape.is_none() || io.dims.iter().any(|&d| d < 0) {
        return engine_shape;
    }
    let mut shape = Vec::with_capacity(io.dims.len() + 1);
    if spec.max_batch_size > 0 {
        shape.push(batch as i64);
    }
    shape.extend_from_slice(&io.dims);
    shape
}

/// Concatenates every job's inputs along dim 0.
fn concat_inputs(jobs: &[Job]) -> Result<Vec<NamedTensor>, ExecError> {
    let first = &jobs[0].request.inputs;
    let mut out = Vec::with_capacity(first.len());
    for (i, input) in first.iter().enumerate() {
        let mut data = Vec::new();
        let mut dim0 = 0i64;
        for job in jobs {
            let t = &job.request.inputs[i].tensor;
            data.extend_from_slice(&t.data);
            dim0 += t.shape.first().copied().unwrap_or(1);
        }
        let mut shape = input.tensor.shape.clone();
        if let Some(d) = shape.first_mut() {
            *d = dim0;
        } else {
            return Err(ExecError::Run(format!(
                "cannot batch scalar input '{}'",
                input.name
            )));
        }
        out.push(NamedTensor {
            name: input.name.clone(),
            tensor: Tensor {
                dtype: input.tensor.dtype,
                shape,
                data: Bytes::from(data),
            },
        });
    }
    Ok(out)
}

/// Splits `t` along dim 0 into parts of `sizes` rows.
pub fn split_batch(t: &Tensor, sizes: &[u64]) -> Result<Vec<Tensor>, ExecError> {
    let bad = || {
        ExecError::Run(format!(
            "cannot split output of shape {:?} into batches {sizes:?}",
            t.shape
        ))
    };
    let total: u64 = sizes.iter().sum();
    if t.shape.first().copied() != Some(total as i64) {
        return Err(bad());
    }
    let per_row = element_count(&t.shape[1..]).map_err(|_| bad())?;
    let mut parts = Vec::with_capacity(sizes.len());
    match t.dtype.element_size() {
        Some(es) => {
            let mut offset = 0usize;
            for &s in sizes {
                let len = (s * per_row) as usize * es;
                let data = t.data.get(offset..offset + len).ok_or_else(bad)?;
                parts.push(part(t, s, Bytes::copy_from_slice(data)));
                offset += len;
            }
        }
        None => {
            let elements = split_bytes_elements(&t.data, total * per_row).map_err(|_| bad())?;
            let mut it = elements.into_iter();
            for &s in sizes {
                let chunk: Vec<&[u8]> = it.by_ref().take((s * per_row) as usize).collect();
                parts.push(part(t, s, crate::tensor::join_bytes_elements(chunk).into()));
            }
        }
    }
    Ok(parts)
}

fn part(t: &Tensor, rows: u64, data: Bytes) -> Tensor {
    let mut shape = t.shape.clone();
    shape[0] = rows as i64;
    Tensor {
        dtype: t.dtype,
        shape,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{join_bytes_elements, DataType};

    #[test]
    fn split_fixed_and_bytes() {
        let t = Tensor {
            dtype: DataType::Int32,
            shape: vec![3, 2],
            data: (0..6i32)
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        };
        let parts = split_batch(&t, &[1, 2]).unwrap();
        assert_eq!(parts[0].shape, vec![1, 2]);
        assert_eq!(parts[1].shape, vec![2, 2]);
        assert_eq!(parts[1].data.len(), 16);
        assert_eq!(&parts[1].data[..4], &2i32.to_le_bytes());
        assert!(split_batch(&t, &[1, 1]).is_err());

        let s = Tensor {
            dtype: DataType::Bytes,
            shape: vec![3],
            data: join_bytes_elements(["a", "bb", "ccc"]).into(),
        };
        let parts = split_batch(&s, &[2, 1]).unwrap();
        assert_eq!(parts[0].data, Bytes::from(join_bytes_elements(["a", "bb"])));
        assert_eq!(parts[1].data, Bytes::from(join_bytes_elements(["ccc"])));
    }
}
