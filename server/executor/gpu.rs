//! Instances that run Switchyard's own engine: an ONNX model compiled into an engine
//! (`engine::cache`, loaded from `--engine-cache-dir` or compiled and stored there), lowered
//! per input shape into programs (`engine::lower`) and run by the GPU executor
//! (`switchyard_kernels::gpu`) — KIND_GPU instances — or, with the model parameter
//! `switchyard_engine_cpu: "true"` on a KIND_CPU model, by the CPU runner of programs
//! (`switchyard_kernels::program_cpu`: slow, exact, the kernels' semantics). The CPU target
//! exists so the whole serving path of the engine (padding to buckets, programs per shape,
//! outputs cut back) is tested through real clients without a GPU.
//!
//! - One [`ProgramEngine`] per instance: on the GPU its own stream, pinned staging and arena.
//! - Shapes: with a batching model and CUDA graphs, a batch is padded with zero rows to the
//!   next bucket (`cuda.graph_spec` batch sizes, or powers of two up to `max_batch_size`), so
//!   a handful of programs — each one captured CUDA graph — serve every batch; the rows added
//!   are dropped from the outputs. Programs are built at load for the buckets of shapes the
//!   config fixes, and lazily (then kept, up to [`MAX_PROGRAMS`]) for shapes it leaves open.
//! - Nothing is allocated on the device per request: the arena is sized at load for the
//!   largest program built then; a later, larger shape (a longer sequence) grows it once.
//!
//! Verified on CPU: everything up to the program (`tests/engine_lower.rs`). The device side
//! needs a GPU (`benches/gpu/run.sh`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tokio::time::Instant;

use switchyard_kernels::gpu::{GpuDevice, GpuEngine, GpuProgram, LoadOptions};
use switchyard_kernels::program::Program;

use super::{Engine, EngineIo, EngineOutput, ExecError, PhaseTimes};
use crate::engine::cache::{self, CacheOutcome};
use crate::engine::calibrate::CalibrationTable;
use crate::engine::ir::{DType, Dim};
use crate::engine::lower::lower;
use crate::repository::gpu::{GpuPlan, Precision};
use crate::tensor::{DataType, NamedTensor, Tensor};

/// Programs kept per instance (shapes seen); the oldest is dropped past it.
pub const MAX_PROGRAMS: usize = 64;

/// The compiled engine one model version's GPU instances share.
#[derive(Debug)]
pub struct CompiledModel {
    pub engine: cache::Engine,
    pub outcome: Option<CacheOutcome>,
    pub inputs: Vec<EngineIo>,
    pub outputs: Vec<EngineIo>,
}

fn wire_type(d: DType) -> Option<DataType> {
    Some(match d {
        DType::F32 => DataType::Fp32,
        DType::F64 => DataType::Fp64,
        DType::I32 => DataType::Int32,
        DType::I64 => DataType::Int64,
        DType::Bool => DataType::Bool,
    })
}

/// Where an engine's programs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The GPU of this ordinal, through `switchyard_kernels::gpu`.
    Gpu(usize),
    /// `switchyard_kernels::program_cpu` (verification; `switchyard_engine_cpu`).
    Cpu,
}

/// Compiles (or, for a GPU, loads from `cache_dir`) the engine of `model_path` for `target`.
pub fn compile_model(
    model_path: &Path,
    plan: &GpuPlan,
    target: Target,
    cache_dir: &Path,
) -> Result<(CompiledModel, Option<Arc<GpuDevice>>), ExecError> {
    let load = |e: String| ExecError::Load(e);
    let device = match target {
        Target::Gpu(ordinal) => Some(GpuDevice::new(ordinal).map_err(|e| load(e.to_string()))?),
        Target::Cpu => None,
    };
    let (precision, calibration_path, use_cache) = match &plan.engine {
        Some(e) => (e.precision, e.calibration.clone(), e.engine_cache),
        None => (Precision::Fp32, None, true),
    };
    let calibration = match calibration_path {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(&p).map_err(|e| {
                load(format!(
                    "cannot read calibration table {}: {e}",
                    p.display()
                ))
            })?;
            Some(
                CalibrationTable::from_json(&text)
                    .map_err(|e| load(format!("calibration table {}: {e}", p.display())))?,
            )
        }
    };
    let (engine, outcome) = if let Some(device) = &device {
        let cc = device.compute_capability();
        if use_cache {
            let (e, o) =
                cache::get_or_compile(cache_dir, model_path, cc, precision, calibration.as_ref())
                    .map_err(|e| load(e.to_string()))?;
            (e, Some(o))
        } else {
            let bytes = std::fs::read(model_path)
                .map_err(|e| load(format!("cannot read {}: {e}", model_path.display())))?;
            let e = cache::Engine::compile(&bytes, cc, precision, calibration.as_ref())
                .map_err(|e| load(e.to_string()))?;
            (e, None)
        }
    } else {
        // The CPU runner needs no PTX and no cache.
        let bytes = std::fs::read(model_path)
            .map_err(|e| load(format!("cannot read {}: {e}", model_path.display())))?;
        let graph = crate::engine::compile(&bytes).map_err(|e| load(e.to_string()))?;
        let plan = crate::engine::precision::assign_with(&graph, precision, calibration.as_ref());
        if precision == Precision::Int8 && calibration.is_none() {
            return Err(load("INT8 needs int8_calibration_table_name".into()));
        }
        // Refuses a table lacking a scale now, as the GPU compile does.
        crate::engine::emulate::Emulator::new(&graph, plan.clone(), calibration.as_ref())
            .map_err(|e| load(e.to_string()))?;
        let e = cache::Engine {
            graph,
            precision: plan,
            calibration,
            compute_capability: (0, 0),
            kernels: Vec::new(),
        };
        (e, None)
    };
    let io = |ids: &[usize]| -> Vec<EngineIo> {
        ids.iter()
            .map(|&v| {
                let val = &engine.graph.values[v];
                EngineIo {
                    name: val.name.clone(),
                    dtype: wire_type(val.dtype),
                    dims: val
                        .shape
                        .as_ref()
                        .map(|s| {
                            s.iter()
                                .map(|d| match d {
                                    Dim::Known(n) => *n as i64,
                                    _ => -1,
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect()
    };
    let inputs = io(&engine.graph.inputs);
    let outputs = io(&engine.graph.outputs);
    Ok((
        CompiledModel {
            engine,
            outcome,
            inputs,
            outputs,
        },
        device,
    ))
}

/// The batch sizes a padded batch is rounded up to: the config's CUDA graph batch sizes, or
/// powers of two up to `max_batch_size` (which is always one).
pub fn batch_buckets(plan: &GpuPlan, max_batch_size: usize) -> Vec<usize> {
    let mut b: Vec<usize> = plan
        .graph_batch_sizes
        .iter()
        .filter_map(|&n| usize::try_from(n).ok())
        .filter(|&n| n > 0 && n <= max_batch_size)
        .collect();
    if b.is_empty() {
        let mut n = 1;
        while n < max_batch_size {
            b.push(n);
            n *= 2;
        }
    }
    b.push(max_batch_size);
    b.sort_unstable();
    b.dedup();
    b
}

/// The bucket a batch of `n` runs in (`None`: larger than every bucket, run as it is).
pub fn bucket_for(buckets: &[usize], n: usize) -> Option<usize> {
    buckets.iter().copied().find(|&b| b >= n)
}

/// Input shapes of one program.
type ShapeKey = Vec<Vec<usize>>;

/// A program ready to run on its target.
enum Loaded {
    Gpu(GpuProgram),
    Cpu(Program),
}

/// One instance of an engine-compiled model.
pub struct ProgramEngine {
    model: Arc<CompiledModel>,
    /// The device and the engine's arena and weights on it; `None` on the CPU target.
    gpu: Option<(Arc<GpuDevice>, GpuEngine)>,
    /// Loaded programs by input shapes, with their output shapes.
    programs: HashMap<ShapeKey, (Loaded, Vec<Vec<usize>>)>,
    order: Vec<Vec<Vec<usize>>>,
    /// Padding buckets (batching models with CUDA graphs), else empty.
    buckets: Vec<usize>,
    cuda_graphs: bool,
}

impl ProgramEngine {
    /// An instance for `model` on `device` (`None`: the CPU runner); programs for
    /// `warm_shapes` are built now.
    pub fn new(
        model: Arc<CompiledModel>,
        device: Option<Arc<GpuDevice>>,
        plan: &GpuPlan,
        max_batch_size: usize,
        warm_shapes: &[Vec<Vec<usize>>],
    ) -> Result<ProgramEngine, ExecError> {
        let gpu = match device {
            Some(d) => Some((
                d.clone(),
                GpuEngine::new(d, 0).map_err(|e| ExecError::Load(e.to_string()))?,
            )),
            None => None,
        };
        let mut engine = ProgramEngine {
            model,
            gpu,
            programs: HashMap::new(),
            order: Vec::new(),
            buckets: if plan.cuda_graphs && max_batch_size > 0 {
                batch_buckets(plan, max_batch_size)
            } else {
                Vec::new()
            },
            cuda_graphs: plan.cuda_graphs,
        };
        // Lower every warm shape first, so the arena is allocated once at its largest.
        let lowered: Vec<_> = warm_shapes
            .iter()
            .map(|s| engine.lower(s).map(|p| (s.clone(), p)))
            .collect::<Result<_, _>>()?;
        let biggest = lowered
            .iter()
            .map(|(_, p)| p.arena_bytes)
            .max()
            .unwrap_or(0);
        engine.grow(biggest)?;
        for (shape, p) in lowered {
            engine.insert(shape, p)?;
        }
        Ok(engine)
    }

    fn lower(&self, shapes: &[Vec<usize>]) -> Result<Program, ExecError> {
        let e = &self.model.engine;
        let named: Vec<(&str, Vec<usize>)> = self
            .model
            .inputs
            .iter()
            .map(|i| i.name.as_str())
            .zip(shapes.iter().cloned())
            .collect();
        lower(&e.graph, &named, e.precision.mode, e.calibration.as_ref()).map_err(|e| match e {
            // Shapes the model does not take are the caller's; anything else is ours.
            crate::engine::EngineError::Input(m) => ExecError::InvalidInput(m),
            e => ExecError::Run(e.to_string()),
        })
    }

    /// Replaces the arena by one of `bytes` when the current one is smaller (programs built
    /// for the old arena are dropped and rebuilt on use).
    fn grow(&mut self, bytes: usize) -> Result<(), ExecError> {
        let Some((device, gpu)) = &mut self.gpu else {
            return Ok(());
        };
        if bytes <= gpu.arena_bytes() {
            return Ok(());
        }
        // Geometric growth: a run of ever longer sequences regrows a few times, not each time.
        let size = bytes.max(gpu.arena_bytes().saturating_mul(2));
        self.programs.clear();
        self.order.clear();
        // The old arena and weights go first, so peak memory is the new arena alone.
        *gpu = GpuEngine::new(device.clone(), 0).map_err(|e| ExecError::Load(e.to_string()))?;
        *gpu = GpuEngine::new(device.clone(), size).map_err(|e| ExecError::Load(e.to_string()))?;
        Ok(())
    }

    fn insert(&mut self, shape: Vec<Vec<usize>>, p: Program) -> Result<(), ExecError> {
        let out_shapes = p.outputs.iter().map(|b| b.shape.clone()).collect();
        let loaded = match &mut self.gpu {
            Some((_, gpu)) => Loaded::Gpu(
                gpu.load(
                    &p,
                    LoadOptions {
                        cuda_graph: self.cuda_graphs,
                    },
                )
                .map_err(|e| ExecError::Run(e.to_string()))?,
            ),
            None => Loaded::Cpu(p),
        };
        if self.order.len() >= MAX_PROGRAMS {
            let old = self.order.remove(0);
            self.programs.remove(&old);
        }
        self.order.push(shape.clone());
        self.programs.insert(shape, (loaded, out_shapes));
        Ok(())
    }
}

/// Appends zero rows so `t`'s first dim becomes `rows`.
fn pad_rows(t: &Tensor, rows: usize) -> Vec<u8> {
    let mut data = t.data.to_vec();
    let now = t.shape.first().copied().unwrap_or(1).max(1) as usize;
    let row_bytes = data.len() / now;
    data.resize(row_bytes * rows, 0);
    data
}

impl Engine for ProgramEngine {
    fn inputs(&self) -> &[EngineIo] {
        &self.model.inputs
    }

    fn outputs(&self) -> &[EngineIo] {
        &self.model.outputs
    }

    fn execute(
        &mut self,
        inputs: &[NamedTensor],
        outputs: &[String],
    ) -> Result<EngineOutput, ExecError> {
        let t0 = Instant::now();
        let mut ordered = Vec::with_capacity(self.model.inputs.len());
        for io in &self.model.inputs {
            let t = inputs.iter().find(|t| t.name == io.name).ok_or_else(|| {
                ExecError::InvalidInput(format!("input '{}' is missing", io.name))
            })?;
            if Some(t.tensor.dtype) != io.dtype {
                return Err(ExecError::InvalidInput(format!(
                    "input '{}' has type {:?}, the engine takes {:?}",
                    io.name, t.tensor.dtype, io.dtype
                )));
            }
            ordered.push(&t.tensor);
        }
        let batch = ordered
            .first()
            .and_then(|t| t.shape.first())
            .map_or(1, |&b| b.max(0) as usize);
        let padded = if self.buckets.is_empty() {
            None
        } else {
            bucket_for(&self.buckets, batch).filter(|&b| b != batch)
        };
        let mut shapes = Vec::with_capacity(ordered.len());
        // Borrowed unless padded: no copy of a request's inputs on the way to the staging buffers.
        let mut bytes: Vec<std::borrow::Cow<'_, [u8]>> = Vec::with_capacity(ordered.len());
        for t in &ordered {
            let mut s: Vec<usize> = t.shape.iter().map(|&d| d.max(0) as usize).collect();
            match padded {
                Some(rows) => {
                    bytes.push(std::borrow::Cow::Owned(pad_rows(t, rows)));
                    if let Some(first) = s.first_mut() {
                        *first = rows;
                    }
                }
                None => bytes.push(std::borrow::Cow::Borrowed(&t.data[..])),
            }
            shapes.push(s);
        }
        if !self.programs.contains_key(&shapes) {
            let p = self.lower(&shapes)?;
            self.grow(p.arena_bytes)?;
            self.insert(shapes.clone(), p)?;
        }
        let (program, out_shapes) = self
            .programs
            .get_mut(&shapes)
            .ok_or_else(|| ExecError::Run("program missing after load".into()))?;
        let named: Vec<(&str, &[u8])> = self
            .model
            .inputs
            .iter()
            .map(|i| i.name.as_str())
            .zip(bytes.iter().map(|b| &b[..]))
            .collect();
        let t1 = Instant::now();
        let outs = match program {
            Loaded::Gpu(g) => g.run(&named).map_err(|e| match e {
                switchyard_kernels::gpu::GpuError::Input(m) => ExecError::InvalidInput(m),
                e => ExecError::Run(e.to_string()),
            })?,
            Loaded::Cpu(p) => {
                // An out-of-range id is the caller's error, as on the GPU.
                switchyard_kernels::program_cpu::check_indices(p, &named)
                    .map_err(ExecError::InvalidInput)?;
                switchyard_kernels::program_cpu::run(p, &named).map_err(ExecError::Run)?
            }
        };
        let t2 = Instant::now();
        let mut tensors = Vec::with_capacity(outputs.len());
        for want in outputs {
            let (i, io) = self
                .model
                .outputs
                .iter()
                .enumerate()
                .find(|(_, o)| &o.name == want)
                .ok_or_else(|| ExecError::InvalidInput(format!("unknown output '{want}'")))?;
            let dtype = io
                .dtype
                .ok_or_else(|| ExecError::Run(format!("output '{want}' has no wire type")))?;
            let mut data = outs.get(i).cloned().unwrap_or_default();
            let mut shape: Vec<i64> = out_shapes
                .get(i)
                .map(|s| s.iter().map(|&d| d as i64).collect())
                .unwrap_or_default();
            if let Some(rows) = padded {
                let row_bytes = data.len() / rows.max(1);
                data.truncate(row_bytes * batch);
                if let Some(first) = shape.first_mut() {
                    *first = batch as i64;
                }
            }
            tensors.push(NamedTensor {
                name: want.clone(),
                tensor: Tensor {
                    dtype,
                    shape,
                    data: data.into(),
                },
            });
        }
        Ok(EngineOutput {
            tensors,
            times: PhaseTimes {
                input: t1 - t0,
                infer: t2 - t1,
                output: t2.elapsed(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_or_the_configured_sizes() {
        let plan = GpuPlan::default();
        assert_eq!(batch_buckets(&plan, 8), vec![1, 2, 4, 8]);
        assert_eq!(batch_buckets(&plan, 6), vec![1, 2, 4, 6]);
        assert_eq!(batch_buckets(&plan, 1), vec![1]);
        let plan = GpuPlan {
            graph_batch_sizes: vec![16, 4, 64, 0, -1],
            ..GpuPlan::default()
        };
        assert_eq!(batch_buckets(&plan, 32), vec![4, 16, 32]);
        assert_eq!(bucket_for(&[1, 2, 4, 8], 3), Some(4));
        assert_eq!(bucket_for(&[1, 2, 4, 8], 8), Some(8));
        assert_eq!(bucket_for(&[1, 2, 4, 8], 9), None);
    }

    #[test]
    fn padding_appends_zero_rows() {
        let t = Tensor {
            dtype: DataType::Fp32,
            shape: vec![1, 2],
            data: vec![1u8; 8].into(),
        };
        let p = pad_rows(&t, 3);
        assert_eq!(p.len(), 24);
        assert!(p[8..].iter().all(|&b| b == 0));
    }
}
