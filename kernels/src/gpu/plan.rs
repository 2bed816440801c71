//! Step → device operations, without a device: every [`Step`] of a validated [`Program`]
//! becomes kernel launches (entry point, launch configuration, arguments) and cuBLASLt
//! matmul specifications, at the device addresses of a [`Memory`]. Pure, so the mapping and
//! the kernels' argument lists are tested on machines without a GPU (the argument lists
//! against the PTX NVRTC produces, `tests/gpu_plan_abi.rs`); [`super::program`] only loads
//! the functions and plans the matmuls.
//!
//! # Step mapping
//! - `Gemm` → one cuBLASLt matmul (row-major via the swap, see [`super::gemm`]); bias with
//!   `CUBLASLT_EPILOGUE_BIAS`, bias + ReLU with `RELU_BIAS`; sigmoid, tanh and exact GELU
//!   (cuBLASLt's GELU is the tanh approximation) by a plain matmul then `bias_<act>_<t>` in
//!   place (one launch when the batches of Y are contiguous, else one per batch).
//! - `GemmInt8` → `quantize_sym_<t>`, then the INT8 cuBLASLt matmul (TN, i8 × i8 → i32) or,
//!   for shapes it refuses, `gemm_i8_i32`, then `dequant_bias_act_<t>`.
//! - `Attention` → strided-batched matmul `q · k'` into `scores` (alpha 1),
//!   `scale_mask_softmax_<t>` (scale, mask, softmax; F16 probabilities into `probs`), then
//!   the strided-batched matmul `probs · v`.
//! - `Elementwise` → `elementwise`; `Softmax` → `softmax_<t>`; `LayerNorm` →
//!   `add_layer_norm_<t>`; `Reduce` → `reduce_<t>`; `Gather` → `gather_<i64|i32>`;
//!   `ArgMax` → `argmax`. Launch configurations: [`super::launch`].

use cudarc::driver::LaunchConfig;

use super::gemm::{
    int8_lt_eligible, lt_gemm, lt_gemm_int8, Epilogue, MatmulSpec, RowMajorGemm, Scale,
};
use super::launch::{
    act_code, bias_act_entry, ew_params, grid_1d, grid_rows, mask_view, EwParams, MaskView,
};
use super::GpuError;
use crate::program::{Act, AttentionStep, Buf, Elem, GemmInt8Step, GemmStep, Loc, Program, Step};

/// Where a program's buffers are on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// Address of the arena's first byte.
    pub arena: u64,
    /// Address of each weight, by index.
    pub weights: Vec<u64>,
}

impl Memory {
    /// The address of a buffer of a validated program.
    pub fn ptr(&self, b: &Buf) -> u64 {
        match b.loc {
            Loc::Arena(off) => self.arena + off as u64,
            Loc::Weight(w) => self.weights.get(w).copied().unwrap_or(0),
        }
    }

    fn opt(&self, b: &Option<Buf>) -> u64 {
        b.as_ref().map_or(0, |b| self.ptr(b))
    }
}

/// One argument of a kernel launch.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// A device address (a kernel pointer parameter; 0 is null).
    Ptr(u64),
    I64(i64),
    I32(i32),
    F32(f32),
    Ew(Box<EwParams>),
    Mask(MaskView),
}

impl Arg {
    /// The PTX parameter this argument fills: its class (`"b64"` for 64-bit integers and
    /// pointers, `"b32"` for 32-bit integers, `"f32"`, `"struct"` for a by-value struct) and
    /// size in bytes.
    pub fn ptx_param(&self) -> (&'static str, usize) {
        match self {
            Arg::Ptr(_) | Arg::I64(_) => ("b64", 8),
            Arg::I32(_) => ("b32", 4),
            Arg::F32(_) => ("f32", 4),
            Arg::Ew(_) => ("struct", super::launch::EW_PARAMS_BYTES),
            Arg::Mask(_) => ("struct", super::launch::MASK_VIEW_BYTES),
        }
    }
}

/// One kernel launch, resolved but for the function handle.
#[derive(Debug, Clone)]
pub struct KernelLaunch {
    pub entry: String,
    pub cfg: LaunchConfig,
    pub args: Vec<Arg>,
}

/// One device operation of a program, before the device is involved.
#[derive(Debug, Clone)]
pub enum Planned {
    Kernel(KernelLaunch),
    Matmul(MatmulSpec),
    /// The INT8 GEMM: the cuBLASLt matmul when the shape qualifies and cuBLASLt finds an
    /// algorithm for it, else the exact fallback kernel.
    Int8Matmul {
        spec: Option<MatmulSpec>,
        fallback: KernelLaunch,
    },
}

/// Plans every step of a validated program at `mem`'s addresses. Errors name the step.
pub fn plan_program(program: &Program, mem: &Memory) -> Result<Vec<Planned>, GpuError> {
    let mut planner = Planner {
        mem,
        ops: Vec::new(),
    };
    for (i, s) in program.steps.iter().enumerate() {
        planner
            .step(s)
            .map_err(|e| e.context(&format!("step {i} ({})", s.kind())))?;
    }
    Ok(planner.ops)
}

impl GpuError {
    /// The same error with `what: ` in front of its message.
    pub(crate) fn context(self, what: &str) -> GpuError {
        match self {
            GpuError::Cuda(e) => GpuError::Cuda(format!("{what}: {e}")),
            GpuError::Cublas(e) => GpuError::Cublas(format!("{what}: {e}")),
            GpuError::Program(e) => GpuError::Program(format!("{what}: {e}")),
            GpuError::Input(e) => GpuError::Input(format!("{what}: {e}")),
        }
    }
}

fn n64(v: usize) -> Result<i64, GpuError> {
    i64::try_from(v).map_err(|_| GpuError::Program(format!("{v} does not fit in i64")))
}

fn float_suffix(e: Elem, what: &str) -> Result<&'static str, GpuError> {
    match e {
        Elem::F32 => Ok("f32"),
        Elem::F16 => Ok("f16"),
        other => Err(GpuError::Program(format!(
            "{what} is {other:?}; the GPU executor takes F32 or F16"
        ))),
    }
}

fn same(elems: &[Elem], what: &str) -> Result<Elem, GpuError> {
    let first = elems[0];
    if elems.iter().any(|&e| e != first) {
        return Err(GpuError::Program(format!(
            "{what} mix element types {elems:?}; the GPU kernel takes one"
        )));
    }
    Ok(first)
}

/// Turns steps into planned operations.
struct Planner<'a> {
    mem: &'a Memory,
    ops: Vec<Planned>,
}

impl Planner<'_> {
    fn kernel(
        &mut self,
        entry: &str,
        cfg: Option<LaunchConfig>,
        args: Vec<Arg>,
    ) -> Result<(), GpuError> {
        let Some(cfg) = cfg else {
            return Ok(()); // nothing to compute
        };
        self.ops.push(Planned::Kernel(KernelLaunch {
            entry: entry.to_string(),
            cfg,
            args,
        }));
        Ok(())
    }

    fn matmul(&mut self, spec: MatmulSpec) -> Result<(), GpuError> {
        self.ops.push(Planned::Matmul(spec));
        Ok(())
    }

    fn rows(rows: usize, cols: usize) -> Result<Option<LaunchConfig>, GpuError> {
        grid_rows(rows, cols).map_err(GpuError::Program)
    }

    fn step(&mut self, s: &Step) -> Result<(), GpuError> {
        let p = |b: &Buf| Arg::Ptr(self.mem.ptr(b));
        match s {
            Step::Gemm(g) => self.gemm(g),
            Step::GemmInt8(g) => self.gemm_int8(g),
            Step::Attention(a) => self.attention(a),
            Step::Elementwise {
                op,
                ins,
                out,
                shape,
            } => {
                let ins: Vec<(u64, &crate::program::View)> =
                    ins.iter().map(|v| (self.mem.ptr(&v.buf), v)).collect();
                let params = ew_params(*op, &ins, (self.mem.ptr(&out.buf), out), shape)
                    .map_err(GpuError::Program)?;
                let n = shape.iter().product();
                self.kernel("elementwise", grid_1d(n), vec![Arg::Ew(Box::new(params))])
            }
            Step::Softmax { x, y, rows, cols } => {
                let t = float_suffix(same(&[x.elem, y.elem], "softmax x and y")?, "softmax")?;
                let args = vec![p(y), p(x), Arg::I64(n64(*cols)?)];
                self.kernel(&format!("softmax_{t}"), Self::rows(*rows, *cols)?, args)
            }
            Step::LayerNorm {
                x,
                residual,
                gamma,
                beta,
                y,
                rows,
                cols,
                eps,
            } => {
                let mut elems = vec![x.elem, gamma.elem, y.elem];
                elems.extend(residual.iter().chain(beta.iter()).map(|b| b.elem));
                let t = float_suffix(same(&elems, "layer norm operands")?, "layer norm")?;
                let args = vec![
                    p(y),
                    p(x),
                    Arg::Ptr(self.mem.opt(residual)),
                    p(gamma),
                    Arg::Ptr(self.mem.opt(beta)),
                    Arg::I64(n64(*cols)?),
                    Arg::F32(*eps),
                ];
                self.kernel(
                    &format!("add_layer_norm_{t}"),
                    Self::rows(*rows, *cols)?,
                    args,
                )
            }
            Step::Reduce {
                x,
                y,
                outer,
                len,
                inner,
                mean,
            } => {
                let t = float_suffix(same(&[x.elem, y.elem], "reduce x and y")?, "reduce")?;
                let args = vec![
                    p(y),
                    p(x),
                    Arg::I64(n64(*outer)?),
                    Arg::I64(n64(*len)?),
                    Arg::I64(n64(*inner)?),
                    Arg::F32(if *mean { *len as f32 } else { 1.0 }),
                ];
                self.kernel(&format!("reduce_{t}"), grid_1d(outer * inner), args)
            }
            Step::Gather {
                data,
                indices,
                y,
                outer,
                axis_len,
                inner,
                count,
            } => {
                same(&[data.elem, y.elem], "gather data and y")?;
                let entry = match indices.elem {
                    Elem::I64 => "gather_i64",
                    Elem::I32 => "gather_i32",
                    other => {
                        return Err(GpuError::Program(format!(
                            "gather indices are {other:?}, not I64 or I32"
                        )))
                    }
                };
                let args = vec![
                    p(y),
                    p(data),
                    p(indices),
                    Arg::I64(n64(*outer)?),
                    Arg::I64(n64(*axis_len)?),
                    Arg::I64(n64(*inner)?),
                    Arg::I64(n64(*count)?),
                    Arg::I32(data.elem.size() as i32),
                ];
                self.kernel(entry, grid_1d(outer * count * inner), args)
            }
            Step::ArgMax {
                x,
                y,
                outer,
                len,
                inner,
                select_last,
            } => {
                if y.elem != Elem::I64 {
                    return Err(GpuError::Program(format!(
                        "argmax writes I64, y is {:?}",
                        y.elem
                    )));
                }
                let args = vec![
                    p(y),
                    p(x),
                    Arg::I32(x.elem.code()),
                    Arg::I64(n64(*outer)?),
                    Arg::I64(n64(*len)?),
                    Arg::I64(n64(*inner)?),
                    Arg::I32(*select_last as i32),
                ];
                // An empty axis has no index to return; program_cpu returns 0, so does the
                // kernel (its loop starts at index 0).
                self.kernel("argmax", grid_1d(outer * inner), args)
            }
        }
    }

    fn gemm(&mut self, g: &GemmStep) -> Result<(), GpuError> {
        float_suffix(g.compute, "GEMM compute")?;
        let t = float_suffix(g.y.elem, "GEMM output")?;
        if g.a.elem != g.compute || g.b.elem != g.compute {
            return Err(GpuError::Program(
                "GEMM operands not in the compute type".into(),
            ));
        }
        let lt = lt_gemm(&RowMajorGemm {
            m: g.m,
            n: g.n,
            k: g.k,
            batch: g.batch,
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            stride_a: g.stride_a,
            stride_b: g.stride_b,
            stride_y: g.stride_y,
        })
        .map_err(GpuError::Program)?;
        let bias = g.bias.as_ref().map(|b| self.mem.ptr(b));
        let fused = match (bias, g.act) {
            (None, Act::None) => Some(Epilogue::Default),
            (None, Act::Relu) => Some(Epilogue::Relu),
            (Some(b), Act::None) => Some(Epilogue::Bias(b)),
            (Some(b), Act::Relu) => Some(Epilogue::ReluBias(b)),
            _ => None,
        };
        let y = self.mem.ptr(&g.y);
        self.matmul(MatmulSpec {
            gemm: lt,
            a_type: g.b.elem,
            b_type: g.a.elem,
            d_type: g.y.elem,
            a_ptr: self.mem.ptr(&g.b),
            b_ptr: self.mem.ptr(&g.a),
            d_ptr: y,
            alpha: Scale::F32(g.alpha),
            epilogue: fused.unwrap_or(Epilogue::Default),
        })?;
        if fused.is_some() {
            return Ok(());
        }
        // Bias and activation in place over Y: one launch when the batches are contiguous,
        // else one per batch.
        let entry = bias_act_entry(g.act, t);
        let (m, n) = (g.m, g.n);
        let launches: Vec<(u64, usize)> = if g.batch == 1 || g.stride_y == m * n {
            vec![(y, g.batch * m)]
        } else {
            (0..g.batch)
                .map(|b| (y + (b * g.stride_y * g.y.elem.size()) as u64, m))
                .collect()
        };
        for (ptr, rows) in launches {
            let args = vec![
                Arg::Ptr(ptr),
                Arg::Ptr(ptr),
                Arg::Ptr(bias.unwrap_or(0)),
                Arg::I64(n64(rows)?),
                Arg::I64(n64(n)?),
            ];
            self.kernel(&entry, grid_1d(rows * n), args)?;
        }
        Ok(())
    }

    fn gemm_int8(&mut self, g: &GemmInt8Step) -> Result<(), GpuError> {
        let ta = float_suffix(g.a.elem, "INT8 GEMM input")?;
        let ty = float_suffix(g.y.elem, "INT8 GEMM output")?;
        if g.w_scales.elem != Elem::F32 || g.bias.is_some_and(|b| b.elem != Elem::F32) {
            return Err(GpuError::Program("INT8 scales and bias must be F32".into()));
        }
        let (m, n, k) = (g.m, g.n, g.k);
        let (a, aq, w, acc) = (
            self.mem.ptr(&g.a),
            self.mem.ptr(&g.a_q),
            self.mem.ptr(&g.w),
            self.mem.ptr(&g.acc),
        );
        self.kernel(
            &format!("quantize_sym_{ta}"),
            grid_1d(m * k),
            vec![
                Arg::Ptr(aq),
                Arg::Ptr(a),
                Arg::I64(n64(m * k)?),
                Arg::F32(g.a_scale),
            ],
        )?;
        let spec = int8_lt_eligible(n, k, &[aq, w, acc])
            .then(|| lt_gemm_int8(m, n, k).ok())
            .flatten()
            .map(|gemm| MatmulSpec {
                gemm,
                a_type: Elem::I8,
                b_type: Elem::I8,
                d_type: Elem::I32,
                a_ptr: w,
                b_ptr: aq,
                d_ptr: acc,
                alpha: Scale::I32(1),
                epilogue: Epilogue::Default,
            });
        if let Some(cfg) = grid_1d(m * n) {
            let fallback = KernelLaunch {
                entry: "gemm_i8_i32".into(),
                cfg,
                args: vec![
                    Arg::Ptr(acc),
                    Arg::Ptr(aq),
                    Arg::Ptr(w),
                    Arg::I64(n64(m)?),
                    Arg::I64(n64(n)?),
                    Arg::I64(n64(k)?),
                ],
            };
            self.ops.push(Planned::Int8Matmul { spec, fallback });
        }
        self.kernel(
            &format!("dequant_bias_act_{ty}"),
            grid_1d(m * n),
            vec![
                Arg::Ptr(self.mem.ptr(&g.y)),
                Arg::Ptr(acc),
                Arg::Ptr(self.mem.ptr(&g.w_scales)),
                Arg::Ptr(self.mem.opt(&g.bias)),
                Arg::I64(n64(m)?),
                Arg::I64(n64(n)?),
                // (alpha · a_scale) in f32 first, as program_cpu.
                Arg::F32(g.alpha * g.a_scale),
                Arg::I32(act_code(g.act)),
            ],
        )
    }

    fn attention(&mut self, a: &AttentionStep) -> Result<(), GpuError> {
        let t = float_suffix(a.compute, "attention compute")?;
        float_suffix(a.y.elem, "attention output")?;
        if [a.q.elem, a.k.elem, a.v.elem]
            .iter()
            .any(|&e| e != a.compute)
        {
            return Err(GpuError::Program("q, k, v not in the compute type".into()));
        }
        if a.scores.elem != Elem::F32 || (a.compute == Elem::F16 && a.probs.elem != Elem::F16) {
            return Err(GpuError::Program(
                "scores must be F32 (and probs F16 with F16 compute)".into(),
            ));
        }
        let (bh, sq, sk, d) = (a.batch * a.heads, a.sq, a.sk, a.d);
        if bh == 0 || sq == 0 {
            return Ok(());
        }
        let (q, k, v, y, scores) = (
            self.mem.ptr(&a.q),
            self.mem.ptr(&a.k),
            self.mem.ptr(&a.v),
            self.mem.ptr(&a.y),
            self.mem.ptr(&a.scores),
        );
        // scores[b] = q[b] [sq, d] · k'[b] [d, sk]; k stored [d, sk] when transposed (the
        // plain B layout), else [sk, d] (B transposed).
        let qk = lt_gemm(&RowMajorGemm {
            m: sq,
            n: sk,
            k: d,
            batch: bh,
            trans_a: false,
            trans_b: !a.k_transposed,
            stride_a: sq * d,
            stride_b: sk * d,
            stride_y: sq * sk,
        })
        .map_err(GpuError::Program)?;
        self.matmul(MatmulSpec {
            gemm: qk,
            a_type: a.k.elem,
            b_type: a.q.elem,
            d_type: Elem::F32,
            a_ptr: k,
            b_ptr: q,
            d_ptr: scores,
            alpha: Scale::F32(1.0),
            epilogue: Epilogue::Default,
        })?;
        let mask = mask_view(a.mask.as_ref().map(|m| (self.mem.ptr(&m.buf), m)))
            .map_err(GpuError::Program)?;
        let probs = if a.compute == Elem::F16 {
            self.mem.ptr(&a.probs)
        } else {
            scores
        };
        let mut args = vec![Arg::Ptr(scores)];
        if a.compute == Elem::F16 {
            args.push(Arg::Ptr(probs));
        }
        args.extend([
            Arg::Mask(mask),
            Arg::I64(n64(a.heads)?),
            Arg::I64(n64(sq)?),
            Arg::I64(n64(sk)?),
            Arg::F32(a.scale),
        ]);
        self.kernel(
            &format!("scale_mask_softmax_{t}"),
            Self::rows(bh * sq, sk)?,
            args,
        )?;
        // y[b] = probs[b] [sq, sk] · v[b] [sk, d].
        let pv = lt_gemm(&RowMajorGemm {
            m: sq,
            n: d,
            k: sk,
            batch: bh,
            trans_a: false,
            trans_b: false,
            stride_a: sq * sk,
            stride_b: sk * d,
            stride_y: sq * d,
        })
        .map_err(GpuError::Program)?;
        self.matmul(MatmulSpec {
            gemm: pv,
            a_type: a.v.elem,
            b_type: a.compute,
            d_type: a.y.elem,
            a_ptr: v,
            b_ptr: probs,
            d_ptr: y,
            alpha: Scale::F32(1.0),
            epilogue: Epilogue::Default,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::{View, Weight};

    const ARENA: u64 = 0x7f00_0000_0000;
    const W0: u64 = 0x7e00_0000_0000;

    fn arena(off: usize, elem: Elem, len: usize) -> Buf {
        Buf {
            loc: Loc::Arena(off),
            elem,
            len,
        }
    }

    fn weight(i: usize, elem: Elem, len: usize) -> Buf {
        Buf {
            loc: Loc::Weight(i),
            elem,
            len,
        }
    }

    fn program(steps: Vec<Step>, weights: &[(Elem, usize)]) -> Program {
        Program {
            weights: weights
                .iter()
                .map(|&(elem, len)| Weight {
                    name: "w".into(),
                    elem,
                    bytes: vec![0; len * elem.size()],
                })
                .collect(),
            arena_bytes: 1 << 20,
            inputs: vec![],
            outputs: vec![],
            steps,
            index_checks: vec![],
        }
    }

    fn memory(weights: usize) -> Memory {
        Memory {
            arena: ARENA,
            weights: (0..weights as u64).map(|i| W0 + (i << 20)).collect(),
        }
    }

    fn gemm(act: Act, bias: bool, batch: usize, stride_y: usize) -> GemmStep {
        GemmStep {
            a: arena(0, Elem::F32, 64),
            b: weight(0, Elem::F32, 64),
            bias: bias.then(|| weight(1, Elem::F32, 4)),
            y: arena(4096, Elem::F32, 256),
            m: 2,
            n: 4,
            k: 3,
            batch,
            stride_a: 6,
            stride_b: 0,
            stride_y,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            act,
            compute: Elem::F32,
        }
    }

    fn plan(steps: Vec<Step>) -> Result<Vec<Planned>, GpuError> {
        let p = program(steps, &[(Elem::F32, 64), (Elem::F32, 4)]);
        plan_program(&p, &memory(2))
    }

    #[test]
    fn bias_and_relu_fuse_into_cublaslt_other_activations_follow_as_a_kernel() {
        let ops = plan(vec![Step::Gemm(gemm(Act::Relu, true, 1, 0))]).unwrap();
        let [Planned::Matmul(spec)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        assert_eq!(spec.epilogue, Epilogue::ReluBias(W0 + (1 << 20)));
        // The swap: cuBLASLt's A is our B (the weight), its B our A, D our Y.
        assert_eq!(
            (spec.a_ptr, spec.b_ptr, spec.d_ptr),
            (W0, ARENA, ARENA + 4096)
        );
        let ops = plan(vec![Step::Gemm(gemm(Act::Gelu, true, 1, 0))]).unwrap();
        let [Planned::Matmul(spec), Planned::Kernel(k)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        assert_eq!(spec.epilogue, Epilogue::Default);
        assert_eq!(k.entry, "bias_gelu_f32");
        let y = ARENA + 4096;
        assert_eq!(
            k.args,
            vec![
                Arg::Ptr(y),
                Arg::Ptr(y),
                Arg::Ptr(W0 + (1 << 20)),
                Arg::I64(2),
                Arg::I64(4)
            ]
        );
        let ops = plan(vec![Step::Gemm(gemm(Act::Relu, false, 1, 0))]).unwrap();
        assert!(matches!(ops.as_slice(), [Planned::Matmul(s)] if s.epilogue == Epilogue::Relu));
    }

    #[test]
    fn a_gapped_batched_output_gets_one_epilogue_launch_per_batch() {
        // Contiguous batches: one launch over batch * m rows.
        let ops = plan(vec![Step::Gemm(gemm(Act::Tanh, false, 3, 8))]).unwrap();
        assert_eq!(ops.len(), 2);
        let Planned::Kernel(k) = &ops[1] else {
            panic!()
        };
        assert_eq!(k.args[3], Arg::I64(6));
        // Batches 20 elements apart: three launches, each m rows at its batch.
        let ops = plan(vec![Step::Gemm(gemm(Act::Tanh, false, 3, 20))]).unwrap();
        assert_eq!(ops.len(), 4);
        for (b, op) in ops[1..].iter().enumerate() {
            let Planned::Kernel(k) = op else { panic!() };
            assert_eq!(k.args[0], Arg::Ptr(ARENA + 4096 + (b * 20 * 4) as u64));
            assert_eq!(k.args[3], Arg::I64(2));
        }
    }

    #[test]
    fn attention_is_two_batched_matmuls_around_the_softmax_kernel() {
        let (bh, sq, sk, d) = (6, 4, 5, 8);
        let f16 = |off, len| arena(off, Elem::F16, len);
        let step = Step::Attention(AttentionStep {
            q: f16(0, bh * sq * d),
            k: f16(1 << 12, bh * sk * d),
            v: f16(2 << 12, bh * sk * d),
            mask: Some(View {
                buf: weight(0, Elem::F32, 64),
                offset: 0,
                strides: vec![0, 0, sk as isize, 1],
            }),
            y: f16(3 << 12, bh * sq * d),
            scores: arena(4 << 12, Elem::F32, bh * sq * sk),
            probs: f16(5 << 12, bh * sq * sk),
            batch: 2,
            heads: 3,
            sq,
            sk,
            d,
            scale: 0.5,
            k_transposed: false,
            compute: Elem::F16,
        });
        let ops = plan(vec![step]).unwrap();
        let [Planned::Matmul(qk), Planned::Kernel(sm), Planned::Matmul(pv)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        // q·k': cuBLASLt A = k (stored [sk, d], transposed), B = q, D = scores (F32).
        assert_eq!(
            (qk.a_ptr, qk.b_ptr, qk.d_ptr),
            (ARENA + (1 << 12), ARENA, ARENA + (4 << 12))
        );
        assert!(qk.gemm.trans_a && !qk.gemm.trans_b);
        assert_eq!(
            (qk.gemm.m, qk.gemm.n, qk.gemm.k, qk.gemm.batch),
            (5, 4, 8, 6)
        );
        assert_eq!(qk.d_type, Elem::F32);
        assert_eq!(sm.entry, "scale_mask_softmax_f16");
        assert_eq!(sm.cfg.grid_dim.0, (bh * sq) as u32);
        assert_eq!(sm.args[1], Arg::Ptr(ARENA + (5 << 12)));
        let Arg::Mask(m) = &sm.args[2] else { panic!() };
        assert_eq!((m.ptr, m.strides), (W0, [0, 0, 5, 1]));
        assert_eq!(sm.args[6], Arg::F32(0.5));
        // probs·v: A = v, B = probs (F16), D = y.
        assert_eq!(
            (pv.a_ptr, pv.b_ptr, pv.d_ptr),
            (ARENA + (2 << 12), ARENA + (5 << 12), ARENA + (3 << 12))
        );
        assert_eq!(
            (pv.b_type, pv.gemm.m, pv.gemm.n, pv.gemm.k),
            (Elem::F16, 8, 4, 5)
        );
        assert_eq!(pv.gemm.b.batch_stride, (sq * sk) as i64);
    }

    #[test]
    fn int8_uses_cublaslt_only_for_shapes_it_takes() {
        let step = |n: usize, k: usize| {
            Step::GemmInt8(GemmInt8Step {
                a: arena(0, Elem::F32, 64),
                a_scale: 0.1,
                a_q: arena(1024, Elem::I8, 64),
                w: weight(0, Elem::F32, 0),
                w_scales: weight(1, Elem::F32, n),
                bias: None,
                acc: arena(2048, Elem::I32, 64),
                y: arena(4096, Elem::F16, 64),
                m: 2,
                n,
                k,
                alpha: 2.0,
                act: Act::Gelu,
            })
        };
        let plan8 = |n, k| {
            let mut p = program(vec![step(n, k)], &[(Elem::I8, n * k), (Elem::F32, n)]);
            if let Step::GemmInt8(g) = &mut p.steps[0] {
                g.w = weight(0, Elem::I8, n * k);
            }
            p.validate().unwrap();
            plan_program(&p, &memory(2)).unwrap()
        };
        let ops = plan8(8, 16);
        let [Planned::Kernel(q), Planned::Int8Matmul {
            spec: Some(s),
            fallback,
        }, Planned::Kernel(d)] = ops.as_slice()
        else {
            panic!("{ops:?}")
        };
        assert_eq!(q.entry, "quantize_sym_f32");
        assert_eq!(
            (s.a_ptr, s.b_ptr, s.d_ptr),
            (W0, ARENA + 1024, ARENA + 2048)
        );
        assert_eq!(s.alpha, Scale::I32(1));
        assert_eq!(fallback.entry, "gemm_i8_i32");
        assert_eq!(d.entry, "dequant_bias_act_f16");
        assert_eq!(d.args[6], Arg::F32(2.0 * 0.1));
        assert_eq!(d.args[7], Arg::I32(4));
        let ops = plan8(6, 16);
        assert!(matches!(ops[1], Planned::Int8Matmul { spec: None, .. }));
    }

    #[test]
    fn unsupported_element_mixes_are_errors_naming_the_step() {
        let s = Step::Softmax {
            x: arena(0, Elem::F32, 8),
            y: arena(256, Elem::F16, 8),
            rows: 2,
            cols: 4,
        };
        let e = plan(vec![Step::Gemm(gemm(Act::None, false, 1, 0)), s]).unwrap_err();
        assert!(
            matches!(&e, GpuError::Program(m) if m.starts_with("step 1 (softmax): softmax x and y mix")),
            "{e}"
        );
        // Empty work plans nothing.
        let s = Step::Reduce {
            x: arena(0, Elem::F32, 8),
            y: arena(256, Elem::F32, 8),
            outer: 0,
            len: 4,
            inner: 2,
            mean: true,
        };
        assert!(plan(vec![s]).unwrap().is_empty());
    }
}
