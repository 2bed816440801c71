//! A compiled engine lowered for one set of concrete input shapes: the exact sequence of
//! device operations the GPU executor runs, each one cuBLASLt call or one of our kernels.
//!
//! The server's engine compiler (`server/engine/lower.rs`) produces a [`Program`] per input
//! shape bucket; [`crate::program_cpu`] runs it on the CPU with the same semantics as the
//! kernels, so every layout, stride, offset and precision decision of the lowering is tested
//! against ONNX Runtime without a GPU. The GPU executor only maps each [`Step`] to its launch.
//!
//! # Conventions
//! - Every tensor is row-major in a [`Buf`]: a region of the activation arena (bytes from its
//!   start, 256-byte aligned) or one of the program's [`Weight`]s (uploaded once).
//! - Element counts and strides are in elements, never bytes.
//! - Float maths is f32. FP16 values are IEEE half, rounded to nearest even on store. A step
//!   whose `compute` is [`Elem::F16`] has every float operand already stored as F16 (the
//!   lowering inserts the casts): products of halves accumulate in f32, as tensor cores do.
//! - Integers (`I64`, `I32`) and `Bool` (one byte, 0 or 1) move exactly; elementwise maths on
//!   them is done in f64 (exact below 2^53: ids, masks, positions).

/// Element types of device buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    F16,
    I8,
    I32,
    I64,
    /// One byte, 0 or 1.
    Bool,
}

impl Elem {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Elem::F32 | Elem::I32 => 4,
            Elem::F16 => 2,
            Elem::I8 | Elem::Bool => 1,
            Elem::I64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Elem::F32 | Elem::F16)
    }

    /// The code the generic kernels switch on (`kernels/cu/common.cuh`, `SY_ELEM_*`).
    pub fn code(self) -> i32 {
        match self {
            Elem::F32 => 0,
            Elem::F16 => 1,
            Elem::I8 => 2,
            Elem::I32 => 3,
            Elem::I64 => 4,
            Elem::Bool => 5,
        }
    }
}

/// Where a buffer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Loc {
    /// In the activation arena, this many bytes from its start (a multiple of [`ALIGN`]).
    Arena(usize),
    /// The program's weight of this index.
    Weight(usize),
}

/// Arena offsets are multiples of this (cuBLASLt wants 16, vector loads 16; 256 keeps every
/// buffer on its own cache line group).
pub const ALIGN: usize = 256;

/// A dense tensor on the device: its place, element type and element count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Buf {
    pub loc: Loc,
    pub elem: Elem,
    pub len: usize,
}

impl Buf {
    pub fn bytes(&self) -> usize {
        self.len * self.elem.size()
    }
}

/// A constant uploaded once per engine: little-endian bytes of `elem`s.
#[derive(Debug, Clone, PartialEq)]
pub struct Weight {
    /// The ONNX value it came from (for errors and dumps).
    pub name: String,
    pub elem: Elem,
    pub bytes: Vec<u8>,
}

/// A view of a buffer for the elementwise kernel: element `(i_0, .., i_r)` of the step's
/// shape is `buf[offset + Σ i_d · strides[d]]`. A stride of 0 broadcasts that dim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub buf: Buf,
    pub offset: usize,
    pub strides: Vec<isize>,
}

/// Most dims an elementwise step has (after merging; the kernel's fixed arrays).
pub const MAX_RANK: usize = 6;

/// Functions of the elementwise kernel. Unary ones read `ins[0]`; binary ones `ins[0], ins[1]`;
/// `Where` reads `(cond, x, y)`. `Copy` converts `ins[0]` to the output's element type (a
/// cast: float → int truncates toward zero, anything → Bool is `!= 0`, f32 → F16 rounds to
/// nearest even).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EwOp {
    Copy,
    Relu,
    Sigmoid,
    Tanh,
    Erf,
    Sqrt,
    Neg,
    Exp,
    /// Exact GELU: 0.5 x (1 + erf(x / √2)).
    Gelu,
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    /// 1 where equal, else 0.
    Equal,
    /// `cond != 0 ? x : y`.
    Where,
    /// The larger of two (f32 `fmaxf` / f64 `fmax`: a NaN loses). On Bools: logical or.
    Max,
    /// The smaller of two (a NaN loses). On Bools: logical and.
    Min,
}

impl EwOp {
    /// The code the elementwise kernel switches on (`kernels/cu/elementwise.cu`, `SY_OP_*`).
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn arity(self) -> usize {
        match self {
            EwOp::Copy
            | EwOp::Relu
            | EwOp::Sigmoid
            | EwOp::Tanh
            | EwOp::Erf
            | EwOp::Sqrt
            | EwOp::Neg
            | EwOp::Exp
            | EwOp::Gelu => 1,
            EwOp::Add
            | EwOp::Sub
            | EwOp::Mul
            | EwOp::Div
            | EwOp::Pow
            | EwOp::Equal
            | EwOp::Max
            | EwOp::Min => 2,
            EwOp::Where => 3,
        }
    }
}

/// Activation applied after a GEMM's bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    None,
    Relu,
    Sigmoid,
    Tanh,
    Gelu,
}

/// `Y[b] = act(alpha · op(A[b]) · op(B[b]) + bias)`, row-major, for `b` in `0..batch`:
/// `op(A[b])` is `[m, k]`, `op(B[b])` is `[k, n]`, `Y[b]` is `[m, n]`. `A[b]` starts at
/// element `b · stride_a` of `a` (0: shared by every batch), likewise `B` and `Y`. With
/// `trans_a` A is stored `[k, m]`, with `trans_b` B is stored `[n, k]`. `bias` holds `n`
/// values of `y`'s element type, added to every row. `a.elem == b.elem == compute`
/// (F32 or F16); accumulation is f32; `y` is F32 or F16.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmStep {
    pub a: Buf,
    pub b: Buf,
    pub bias: Option<Buf>,
    pub y: Buf,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_y: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub act: Act,
    pub compute: Elem,
}

/// INT8 GEMM with per-output-channel weight scales (the numerical contract of
/// `server/engine/quant.rs`): `aq = clamp(round_half_away(a / a_scale), -127, 127)` into
/// `a_q` (I8 `[m, k]`), `acc = aq · w` in i32 into `acc` (I32 `[m, n]`), then
/// `y[i, j] = act(acc[i, j] · d[j] + bias[j])` with `d[j] = alpha · a_scale · w_scales[j]`
/// computed in f32. `a` is F32 or F16 `[m, k]`; `w` is I8 stored `[n, k]` (each output
/// channel contiguous, the "TN" layout of cuBLASLt's integer kernels); `w_scales` and `bias`
/// are F32 `[n]`; `y` is F32 or F16.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmInt8Step {
    pub a: Buf,
    pub a_scale: f32,
    pub a_q: Buf,
    pub w: Buf,
    pub w_scales: Buf,
    pub bias: Option<Buf>,
    pub acc: Buf,
    pub y: Buf,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub act: Act,
}

/// `y[b] = softmax_rows(scale · q[b] · k'[b] + mask[b]) · v[b]` for `b` in `0..batch·heads`:
/// `q[b]` is `[sq, d]`, `k'[b]` is `[d, sk]` (`k` stored `[d, sk]` when `k_transposed`,
/// else `[sk, d]`), `v[b]` is `[sk, d]`, `y[b]` is `[sq, d]`, all contiguous one after the
/// other. `mask` is a view over the scores' shape `[batch, heads, sq, sk]` (strides
/// broadcast). Softmax is computed in f32,
/// row max subtracted. `scores` is f32 workspace of `batch · heads · sq · sk`; with `compute` F16 the
/// probabilities are rounded to half before `· v` (written to `probs`, F16, same size), as
/// the FP16 emulation stores them; with F32 `probs` is unused and may equal `scores`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionStep {
    pub q: Buf,
    pub k: Buf,
    pub v: Buf,
    pub mask: Option<View>,
    pub y: Buf,
    pub scores: Buf,
    pub probs: Buf,
    pub batch: usize,
    pub heads: usize,
    pub sq: usize,
    pub sk: usize,
    pub d: usize,
    pub scale: f32,
    pub k_transposed: bool,
    pub compute: Elem,
}

/// One device operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Gemm(GemmStep),
    GemmInt8(GemmInt8Step),
    /// `out[i] = op(ins[..][i])` over `shape` (rank ≤ [`MAX_RANK`]); see [`View`], [`EwOp`].
    Elementwise {
        op: EwOp,
        ins: Vec<View>,
        out: View,
        shape: Vec<usize>,
    },
    /// Softmax over each row of `[rows, cols]`, f32 maths, row max subtracted.
    Softmax {
        x: Buf,
        y: Buf,
        rows: usize,
        cols: usize,
    },
    /// `y = LayerNorm(x [+ residual])` over each row of `[rows, cols]`: biased variance, two
    /// passes, f32 maths; `gamma` and `beta` hold `cols` values.
    LayerNorm {
        x: Buf,
        residual: Option<Buf>,
        gamma: Buf,
        beta: Option<Buf>,
        y: Buf,
        rows: usize,
        cols: usize,
        eps: f32,
    },
    Attention(AttentionStep),
    /// Sum (or, with `mean`, mean) over the middle axis of `x` seen as `[outer, len, inner]`,
    /// summed in f32 in order; `y` is `[outer, inner]`; `x` and `y` of one float type.
    Reduce {
        x: Buf,
        y: Buf,
        outer: usize,
        len: usize,
        inner: usize,
        mean: bool,
    },
    /// `y[o, i, r] = data[o, idx[i], r]`, `data` seen as `[outer, axis_len, inner]`, `indices`
    /// (I64 or I32) holding `count` values; a negative index counts from the end; an index
    /// still out of range gives zeros (graph-input indices are checked on the host first, see
    /// [`IndexCheck`]).
    Gather {
        data: Buf,
        indices: Buf,
        y: Buf,
        outer: usize,
        axis_len: usize,
        inner: usize,
        count: usize,
    },
    /// Index (I64) of the largest value along the middle axis of `[outer, len, inner]`; ties
    /// go to the first (or, with `select_last`, the last) index.
    ArgMax {
        x: Buf,
        y: Buf,
        outer: usize,
        len: usize,
        inner: usize,
        select_last: bool,
    },
}

/// A graph input or output: where its elements are and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub name: String,
    pub buf: Buf,
    pub shape: Vec<usize>,
}

/// An input whose values index a table: every value must lie in `-bound..bound`, checked on
/// the host before the batch is uploaded, so a bad id is an error, not a silent zero.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexCheck {
    pub input: String,
    pub bound: usize,
    /// The node that reads it, for the error.
    pub node: String,
}

/// Everything the executor needs to run one batch of one shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub weights: Vec<Weight>,
    /// Bytes of device memory all activations and workspaces need together.
    pub arena_bytes: usize,
    pub inputs: Vec<Binding>,
    pub outputs: Vec<Binding>,
    pub steps: Vec<Step>,
    pub index_checks: Vec<IndexCheck>,
}

/// Whether a step reads or writes a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Step {
    /// Visits every buffer of the step, in the order written above, with how it is used.
    pub fn for_each_buf(&mut self, mut f: impl FnMut(&mut Buf, Access)) {
        use Access::{Read, Write};
        match self {
            Step::Gemm(g) => {
                f(&mut g.a, Read);
                f(&mut g.b, Read);
                if let Some(b) = &mut g.bias {
                    f(b, Read);
                }
                f(&mut g.y, Write);
            }
            Step::GemmInt8(g) => {
                f(&mut g.a, Read);
                f(&mut g.a_q, Write);
                f(&mut g.w, Read);
                f(&mut g.w_scales, Read);
                if let Some(b) = &mut g.bias {
                    f(b, Read);
                }
                f(&mut g.acc, Write);
                f(&mut g.y, Write);
            }
            Step::Elementwise { ins, out, .. } => {
                for v in ins {
                    f(&mut v.buf, Read);
                }
                f(&mut out.buf, Write);
            }
            Step::Softmax { x, y, .. } | Step::Reduce { x, y, .. } => {
                f(x, Read);
                f(y, Write);
            }
            Step::LayerNorm {
                x,
                residual,
                gamma,
                beta,
                y,
                ..
            } => {
                f(x, Read);
                if let Some(r) = residual {
                    f(r, Read);
                }
                f(gamma, Read);
                if let Some(b) = beta {
                    f(b, Read);
                }
                f(y, Write);
            }
            Step::Attention(a) => {
                f(&mut a.q, Read);
                f(&mut a.k, Read);
                f(&mut a.v, Read);
                if let Some(m) = &mut a.mask {
                    f(&mut m.buf, Read);
                }
                f(&mut a.scores, Write);
                f(&mut a.probs, Write);
                f(&mut a.y, Write);
            }
            Step::Gather {
                data, indices, y, ..
            } => {
                f(data, Read);
                f(indices, Read);
                f(y, Write);
            }
            Step::ArgMax { x, y, .. } => {
                f(x, Read);
                f(y, Write);
            }
        }
    }

    /// A short name for dumps and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Gemm(_) => "gemm",
            Step::GemmInt8(_) => "gemm_int8",
            Step::Elementwise { .. } => "elementwise",
            Step::Softmax { .. } => "softmax",
            Step::LayerNorm { .. } => "layer_norm",
            Step::Attention(_) => "attention",
            Step::Reduce { .. } => "reduce",
            Step::Gather { .. } => "gather",
            Step::ArgMax { .. } => "argmax",
        }
    }
}

impl Program {
    /// Checks that every buffer of every step lies inside the arena or its weight, and that
    /// sizes agree with the step's dims: the executor relies on it before launching anything.
    pub fn validate(&self) -> Result<(), String> {
        let mut steps = self.steps.clone();
        let mut err = None;
        for (i, s) in steps.iter_mut().enumerate() {
            let kind = s.kind();
            s.for_each_buf(|b, _| {
                if err.is_some() {
                    return;
                }
                let ok = match b.loc {
                    Loc::Arena(off) => {
                        off % ALIGN == 0
                            && off
                                .checked_add(b.bytes())
                                .is_some_and(|end| end <= self.arena_bytes)
                    }
                    Loc::Weight(w) => self
                        .weights
                        .get(w)
                        .is_some_and(|w| w.elem == b.elem && w.bytes.len() >= b.bytes()),
                };
                if !ok {
                    err = Some(format!("step {i} ({kind}): buffer {b:?} out of bounds"));
                }
            });
        }
        if let Some(e) = err {
            return Err(e);
        }
        for (i, s) in self.steps.iter().enumerate() {
            check_dims(s).map_err(|e| format!("step {i} ({}): {e}", s.kind()))?;
        }
        Ok(())
    }
}

fn need(b: &Buf, n: usize, what: &str) -> Result<(), String> {
    if b.len < n {
        return Err(format!("{what} holds {} elements, needs {n}", b.len));
    }
    Ok(())
}

fn view_extent(v: &View, shape: &[usize]) -> Result<usize, String> {
    if v.strides.len() != shape.len() {
        return Err(format!(
            "view has {} strides for rank {}",
            v.strides.len(),
            shape.len()
        ));
    }
    let mut hi = v.offset as isize;
    let mut lo = v.offset as isize;
    for (&d, &s) in shape.iter().zip(&v.strides) {
        if d == 0 {
            return Ok(0);
        }
        let span = (d as isize - 1) * s;
        if span >= 0 {
            hi += span;
        } else {
            lo += span;
        }
    }
    if lo < 0 {
        return Err("view reaches before its buffer".into());
    }
    Ok(hi as usize + 1)
}

fn check_dims(s: &Step) -> Result<(), String> {
    match s {
        Step::Gemm(g) => {
            if g.a.elem != g.compute || g.b.elem != g.compute || !g.compute.is_float() {
                return Err("operands must be stored in the compute type".into());
            }
            let last = g.batch.saturating_sub(1);
            need(&g.a, last * g.stride_a + g.m * g.k, "A")?;
            need(&g.b, last * g.stride_b + g.k * g.n, "B")?;
            need(&g.y, last * g.stride_y + g.m * g.n, "Y")?;
            if let Some(b) = &g.bias {
                need(b, g.n, "bias")?;
                if b.elem != g.y.elem {
                    return Err("bias must have Y's element type".into());
                }
            }
            Ok(())
        }
        Step::GemmInt8(g) => {
            need(&g.a, g.m * g.k, "A")?;
            need(&g.a_q, g.m * g.k, "A_q")?;
            need(&g.w, g.n * g.k, "W")?;
            need(&g.w_scales, g.n, "W scales")?;
            need(&g.acc, g.m * g.n, "acc")?;
            need(&g.y, g.m * g.n, "Y")?;
            if g.a_q.elem != Elem::I8 || g.w.elem != Elem::I8 || g.acc.elem != Elem::I32 {
                return Err("INT8 buffers have the wrong element types".into());
            }
            Ok(())
        }
        Step::Elementwise {
            op,
            ins,
            out,
            shape,
        } => {
            if shape.len() > MAX_RANK {
                return Err(format!("rank {} above {MAX_RANK}", shape.len()));
            }
            if ins.len() != op.arity() {
                return Err(format!("{op:?} takes {} inputs", op.arity()));
            }
            for v in ins.iter().chain(std::iter::once(out)) {
                let n = view_extent(v, shape)?;
                need(&v.buf, n, "operand")?;
            }
            Ok(())
        }
        Step::Softmax { x, y, rows, cols } => {
            need(x, rows * cols, "x")?;
            need(y, rows * cols, "y")
        }
        Step::LayerNorm {
            x,
            residual,
            gamma,
            beta,
            y,
            rows,
            cols,
            ..
        } => {
            need(x, rows * cols, "x")?;
            if let Some(r) = residual {
                need(r, rows * cols, "residual")?;
            }
            need(gamma, *cols, "gamma")?;
            if let Some(b) = beta {
                need(b, *cols, "beta")?;
            }
            need(y, rows * cols, "y")
        }
        Step::Attention(a) => {
            let (b, sq, sk, d) = (a.batch * a.heads, a.sq, a.sk, a.d);
            need(&a.q, b * sq * d, "q")?;
            need(&a.k, b * sk * d, "k")?;
            need(&a.v, b * sk * d, "v")?;
            need(&a.y, b * sq * d, "y")?;
            need(&a.scores, b * sq * sk, "scores")?;
            if a.compute == Elem::F16 {
                need(&a.probs, b * sq * sk, "probs")?;
            }
            if let Some(m) = &a.mask {
                let n = view_extent(m, &[a.batch, a.heads, sq, sk])?;
                need(&m.buf, n, "mask")?;
            }
            Ok(())
        }
        Step::Reduce {
            x,
            y,
            outer,
            len,
            inner,
            ..
        } => {
            need(x, outer * len * inner, "x")?;
            need(y, outer * inner, "y")
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
            need(data, outer * axis_len * inner, "data")?;
            need(indices, *count, "indices")?;
            need(y, outer * count * inner, "y")
        }
        Step::ArgMax {
            x,
            y,
            outer,
            len,
            inner,
            ..
        } => {
            need(x, outer * len * inner, "x")?;
            need(y, outer * inner, "y")
        }
    }
}
