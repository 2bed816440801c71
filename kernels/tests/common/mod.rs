//! Small programs exercising every `Step` kind and every element-type path, with inputs:
//! shared by the GPU parity test (`gpu_program.rs`) and the launch-ABI test
//! (`gpu_plan_abi.rs`).

#![allow(dead_code)]

use std::path::PathBuf;

use half::f16;
use switchyard_kernels::program::{
    Act, AttentionStep, Binding, Buf, Elem, EwOp, GemmInt8Step, GemmStep, IndexCheck, Loc, Program,
    Step, View, Weight, ALIGN,
};

/// Loads NVRTC from `.deps/nvrtc/lib` when it is there (`scripts/deps.sh test` puts it there;
/// benches/gpu/run.sh links the wheel's there on the GPU machine). Returns whether it loads.
pub fn load_nvrtc() -> bool {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps/nvrtc/lib");
    for lib in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
        let path = dir.join(lib);
        if path.is_file() {
            let _ = switchyard_kernels::nvrtc::preload_library(&path);
        }
    }
    switchyard_kernels::nvrtc::nvrtc_available()
}

/// One test program, its inputs, and the tolerance of its float outputs (relative, with an
/// absolute floor of the same size).
pub struct Case {
    pub name: &'static str,
    pub program: Program,
    pub inputs: Vec<(String, Vec<u8>)>,
    pub tol: f64,
}

impl Case {
    pub fn host_inputs(&self) -> Vec<(&str, &[u8])> {
        self.inputs
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect()
    }
}

/// Deterministic values in [-1, 1).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }

    pub fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

pub fn bytes_of(elem: Elem, vals: &[f64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &v in vals {
        match elem {
            Elem::F32 => out.extend((v as f32).to_le_bytes()),
            Elem::F16 => out.extend(f16::from_f32(v as f32).to_le_bytes()),
            Elem::I8 => out.push(v as i8 as u8),
            Elem::I32 => out.extend((v as i32).to_le_bytes()),
            Elem::I64 => out.extend((v as i64).to_le_bytes()),
            Elem::Bool => out.push((v != 0.0) as u8),
        }
    }
    out
}

pub fn values_of(elem: Elem, bytes: &[u8]) -> Vec<f64> {
    match elem {
        Elem::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Elem::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Elem::I8 => bytes.iter().map(|&b| b as i8 as f64).collect(),
        Elem::Bool => bytes.iter().map(|&b| b as f64).collect(),
        Elem::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Elem::I64 => bytes
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                i64::from_le_bytes(b) as f64
            })
            .collect(),
    }
}

/// Compares one output: floats within `tol` (relative, absolute floor `tol`; at least
/// 1e-2 for F16 outputs; NaN equals NaN), everything else exactly. Returns the first
/// mismatch.
pub fn compare(elem: Elem, got: &[u8], want: &[u8], tol: f64) -> Result<(), String> {
    let tol = if elem == Elem::F16 {
        tol.max(F16_TOL)
    } else {
        tol
    };
    if got.len() != want.len() {
        return Err(format!("{} bytes, want {}", got.len(), want.len()));
    }
    let (g, w) = (values_of(elem, got), values_of(elem, want));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = if elem.is_float() {
            (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= tol * (1.0 + b.abs())
        } else {
            a == b
        };
        if !ok {
            return Err(format!(
                "element {i}: got {a}, want {b} ({elem:?}, tol {tol})"
            ));
        }
    }
    Ok(())
}

/// Builds one program: arena buffers, weights, bindings.
pub struct Builder {
    arena: usize,
    weights: Vec<Weight>,
    inputs: Vec<Binding>,
    outputs: Vec<Binding>,
    steps: Vec<Step>,
    values: Vec<(String, Vec<u8>)>,
    index_checks: Vec<IndexCheck>,
    rng: Lcg,
}

impl Builder {
    pub fn new(seed: u64) -> Builder {
        Builder {
            arena: 0,
            weights: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            steps: Vec::new(),
            values: Vec::new(),
            index_checks: Vec::new(),
            rng: Lcg::new(seed),
        }
    }

    pub fn buf(&mut self, elem: Elem, len: usize) -> Buf {
        let b = Buf {
            loc: Loc::Arena(self.arena),
            elem,
            len,
        };
        self.arena += (len * elem.size()).div_ceil(ALIGN).max(1) * ALIGN;
        b
    }

    pub fn weight_vals(&mut self, elem: Elem, vals: &[f64]) -> Buf {
        self.weights.push(Weight {
            name: format!("w{}", self.weights.len()),
            elem,
            bytes: bytes_of(elem, vals),
        });
        Buf {
            loc: Loc::Weight(self.weights.len() - 1),
            elem,
            len: vals.len(),
        }
    }

    /// A weight of `len` random values in [-scale, scale).
    pub fn weight(&mut self, elem: Elem, len: usize, scale: f32) -> Buf {
        let v: Vec<f64> = self.rng.vec(len, scale).iter().map(|&x| x as f64).collect();
        self.weight_vals(elem, &v)
    }

    pub fn input_vals(&mut self, name: &str, elem: Elem, shape: &[usize], vals: &[f64]) -> Buf {
        let len = shape.iter().product();
        assert_eq!(vals.len(), len, "{name}");
        let buf = self.buf(elem, len);
        self.inputs.push(Binding {
            name: name.into(),
            buf,
            shape: shape.to_vec(),
        });
        self.values.push((name.into(), bytes_of(elem, vals)));
        buf
    }

    /// An input of random values in [-scale, scale).
    pub fn input(&mut self, name: &str, elem: Elem, shape: &[usize], scale: f32) -> Buf {
        let len: usize = shape.iter().product();
        let v: Vec<f64> = self.rng.vec(len, scale).iter().map(|&x| x as f64).collect();
        self.input_vals(name, elem, shape, &v)
    }

    pub fn output(&mut self, name: &str, buf: Buf, shape: &[usize]) {
        self.outputs.push(Binding {
            name: name.into(),
            buf,
            shape: shape.to_vec(),
        });
    }

    pub fn step(&mut self, s: Step) {
        self.steps.push(s);
    }

    pub fn check(&mut self, input: &str, bound: usize) {
        self.index_checks.push(IndexCheck {
            input: input.into(),
            bound,
            node: "gather".into(),
        });
    }

    pub fn case(self, name: &'static str, tol: f64) -> Case {
        let program = Program {
            weights: self.weights,
            arena_bytes: self.arena.max(ALIGN),
            inputs: self.inputs,
            outputs: self.outputs,
            steps: self.steps,
            index_checks: self.index_checks,
        };
        program.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        Case {
            name,
            program,
            inputs: self.values,
            tol,
        }
    }
}

pub fn contiguous(buf: Buf, shape: &[usize]) -> View {
    let mut strides = vec![0isize; shape.len()];
    let mut s = 1isize;
    for d in (0..shape.len()).rev() {
        strides[d] = s;
        s *= shape[d] as isize;
    }
    View {
        buf,
        offset: 0,
        strides,
    }
}

pub fn view(buf: Buf, offset: usize, strides: &[isize]) -> View {
    View {
        buf,
        offset,
        strides: strides.to_vec(),
    }
}

pub const F32_TOL: f64 = 1e-5;
pub const F16_TOL: f64 = 1e-2;

#[allow(clippy::too_many_arguments)]
fn gemm_case(
    name: &'static str,
    seed: u64,
    t: Elem,
    y_elem: Elem,
    bias: bool,
    act: Act,
    (m, n, k): (usize, usize, usize),
    tol: f64,
) -> Case {
    let mut b = Builder::new(seed);
    let x = b.input("x", t, &[m, k], 1.0);
    let w = b.weight(t, k * n, 0.5);
    let bias = bias.then(|| b.weight(y_elem, n, 0.5));
    let y = b.buf(y_elem, m * n);
    b.step(Step::Gemm(GemmStep {
        a: x,
        b: w,
        bias,
        y,
        m,
        n,
        k,
        batch: 1,
        stride_a: 0,
        stride_b: 0,
        stride_y: 0,
        trans_a: false,
        trans_b: false,
        alpha: 1.0,
        act,
        compute: t,
    }));
    b.output("y", y, &[m, n]);
    b.case(name, tol)
}

fn gemm_batched_trans_b() -> Case {
    let (batch, m, n, k) = (3, 5, 6, 8);
    let mut b = Builder::new(11);
    let a = b.input("a", Elem::F32, &[batch, m, k], 1.0);
    let bb = b.input("b", Elem::F32, &[batch, n, k], 1.0);
    let y = b.buf(Elem::F32, batch * m * n);
    b.step(Step::Gemm(GemmStep {
        a,
        b: bb,
        bias: None,
        y,
        m,
        n,
        k,
        batch,
        stride_a: m * k,
        stride_b: n * k,
        stride_y: m * n,
        trans_a: false,
        trans_b: true,
        alpha: 0.5,
        act: Act::None,
        compute: Elem::F32,
    }));
    b.output("y", y, &[batch, m, n]);
    b.case("gemm_batched_trans_b", F32_TOL)
}

/// Batched with trans_a, a weight shared by every batch (stride 0), a gapped Y (per-batch
/// bias + tanh launches), compacted by a strided copy.
fn gemm_batched_shared_b_gapped_y() -> Case {
    let (batch, m, n, k) = (2, 3, 4, 5);
    let gap = m * n + 8;
    let mut b = Builder::new(12);
    let a = b.input("a", Elem::F32, &[batch, k, m], 1.0);
    let w = b.weight(Elem::F32, k * n, 0.5);
    let bias = b.weight(Elem::F32, n, 0.5);
    let y = b.buf(Elem::F32, (batch - 1) * gap + m * n);
    let out = b.buf(Elem::F32, batch * m * n);
    b.step(Step::Gemm(GemmStep {
        a,
        b: w,
        bias: Some(bias),
        y,
        m,
        n,
        k,
        batch,
        stride_a: k * m,
        stride_b: 0,
        stride_y: gap,
        trans_a: true,
        trans_b: false,
        alpha: 1.0,
        act: Act::Tanh,
        compute: Elem::F32,
    }));
    b.step(Step::Elementwise {
        op: EwOp::Copy,
        ins: vec![view(y, 0, &[gap as isize, n as isize, 1])],
        out: contiguous(out, &[batch, m, n]),
        shape: vec![batch, m, n],
    });
    b.output("y", out, &[batch, m, n]);
    b.case("gemm_batched_shared_b_gapped_y", F32_TOL)
}

fn gemm_int8(
    name: &'static str,
    a_elem: Elem,
    y_elem: Elem,
    (m, n, k): (usize, usize, usize),
    bias: bool,
    act: Act,
    tol: f64,
) -> Case {
    let mut b = Builder::new(13 + n as u64);
    let a = b.input("a", a_elem, &[m, k], 2.0);
    let a_q = b.buf(Elem::I8, m * k);
    let wv: Vec<f64> = (0..n * k)
        .map(|i| ((i * 37 + 11) % 255) as f64 - 127.0)
        .collect();
    let w = b.weight_vals(Elem::I8, &wv);
    let w_scales = b.weight(Elem::F32, n, 0.01);
    let bias = bias.then(|| b.weight(Elem::F32, n, 0.5));
    let acc = b.buf(Elem::I32, m * n);
    let y = b.buf(y_elem, m * n);
    b.step(Step::GemmInt8(GemmInt8Step {
        a,
        a_scale: 2.0 / 127.0,
        a_q,
        w,
        w_scales,
        bias,
        acc,
        y,
        m,
        n,
        k,
        alpha: 0.75,
        act,
    }));
    b.output("a_q", a_q, &[m, k]);
    b.output("acc", acc, &[m, n]);
    b.output("y", y, &[m, n]);
    b.case(name, tol)
}

fn ew_broadcast_add() -> Case {
    let mut b = Builder::new(21);
    let x = b.input("x", Elem::F32, &[2, 3, 4], 1.0);
    let v = b.weight(Elem::F32, 4, 1.0);
    let out = b.buf(Elem::F32, 24);
    b.step(Step::Elementwise {
        op: EwOp::Add,
        ins: vec![contiguous(x, &[2, 3, 4]), view(v, 0, &[0, 0, 1])],
        out: contiguous(out, &[2, 3, 4]),
        shape: vec![2, 3, 4],
    });
    b.output("y", out, &[2, 3, 4]);
    b.case("ew_broadcast_add", F32_TOL)
}

fn ew_transpose_copy() -> Case {
    let mut b = Builder::new(22);
    let x = b.input("x", Elem::F32, &[3, 5], 1.0);
    let out = b.buf(Elem::F32, 15);
    // out[j, i] = x[i, j]: iterate the output shape [5, 3].
    b.step(Step::Elementwise {
        op: EwOp::Copy,
        ins: vec![view(x, 0, &[1, 5])],
        out: contiguous(out, &[5, 3]),
        shape: vec![5, 3],
    });
    b.output("y", out, &[5, 3]);
    b.case("ew_transpose_copy", 0.0)
}

fn ew_cast_round_trip() -> Case {
    let mut b = Builder::new(23);
    let x = b.input("x", Elem::F32, &[37], 3.0);
    let h = b.buf(Elem::F16, 37);
    let back = b.buf(Elem::F32, 37);
    let i = b.buf(Elem::I32, 37);
    for (src, dst) in [(x, h), (h, back), (x, i)] {
        b.step(Step::Elementwise {
            op: EwOp::Copy,
            ins: vec![contiguous(src, &[37])],
            out: contiguous(dst, &[37]),
            shape: vec![37],
        });
    }
    b.output("h", h, &[37]);
    b.output("back", back, &[37]);
    b.output("trunc", i, &[37]);
    // Round to nearest even both sides: exact.
    b.case("ew_cast_round_trip", 0.0)
}

fn ew_where_bool() -> Case {
    let mut b = Builder::new(24);
    let cond: Vec<f64> = (0..8).map(|i| (i % 3 == 0) as u8 as f64).collect();
    let c = b.input_vals("cond", Elem::Bool, &[2, 4], &cond);
    let x = b.input("x", Elem::F32, &[2, 4], 1.0);
    let y = b.weight(Elem::F16, 4, 1.0);
    let out = b.buf(Elem::F32, 8);
    b.step(Step::Elementwise {
        op: EwOp::Where,
        ins: vec![
            contiguous(c, &[2, 4]),
            contiguous(x, &[2, 4]),
            view(y, 0, &[0, 1]),
        ],
        out: contiguous(out, &[2, 4]),
        shape: vec![2, 4],
    });
    b.output("y", out, &[2, 4]);
    b.case("ew_where_bool", 0.0)
}

fn ew_integers() -> Case {
    let mut b = Builder::new(25);
    let av = [3.0, -7.0, 0.0, 1e12, -5.0, 9.0];
    let bv = [3.0, 2.0, 1.0, 1e12, 5.0, -4.0];
    let a = b.input_vals("a", Elem::I64, &[6], &av);
    let bb = b.input_vals("b", Elem::I64, &[6], &bv);
    let eq = b.buf(Elem::Bool, 6);
    let or = b.buf(Elem::Bool, 6);
    let sum = b.buf(Elem::I64, 6);
    let quo = b.buf(Elem::I32, 6);
    let mixed = b.buf(Elem::F32, 6);
    let f = b.input_vals("f", Elem::F32, &[6], &[0.5, 1.5, -2.25, 3.0, 0.0, -1.0]);
    for (op, ins, out) in [
        (EwOp::Equal, vec![a, bb], eq),
        // Logical or of two Bool buffers.
        (EwOp::Max, vec![eq, eq], or),
        (EwOp::Add, vec![a, bb], sum),
        (EwOp::Div, vec![a, bb], quo),
        // Int and float together: f64 maths.
        (EwOp::Mul, vec![a, f], mixed),
    ] {
        b.step(Step::Elementwise {
            op,
            ins: ins.into_iter().map(|v| contiguous(v, &[6])).collect(),
            out: contiguous(out, &[6]),
            shape: vec![6],
        });
    }
    b.output("eq", eq, &[6]);
    b.output("or", or, &[6]);
    b.output("sum", sum, &[6]);
    b.output("quo", quo, &[6]);
    b.output("mixed", mixed, &[6]);
    b.case("ew_integers", F32_TOL)
}

fn ew_float_ops() -> Case {
    let mut b = Builder::new(26);
    let x = b.input("x", Elem::F32, &[4, 8], 3.0);
    let z = b.input("z", Elem::F16, &[4, 8], 2.0);
    let ops = [
        EwOp::Relu,
        EwOp::Sigmoid,
        EwOp::Tanh,
        EwOp::Erf,
        EwOp::Sqrt,
        EwOp::Neg,
        EwOp::Exp,
        EwOp::Gelu,
        EwOp::Sub,
        EwOp::Mul,
        EwOp::Div,
        EwOp::Pow,
        EwOp::Equal,
        EwOp::Max,
        EwOp::Min,
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let out = b.buf(if i % 2 == 0 { Elem::F32 } else { Elem::F16 }, 32);
        let ins = match op.arity() {
            1 => vec![contiguous(x, &[4, 8])],
            _ => vec![contiguous(x, &[4, 8]), contiguous(z, &[4, 8])],
        };
        b.step(Step::Elementwise {
            op,
            ins,
            out: contiguous(out, &[4, 8]),
            shape: vec![4, 8],
        });
        let name: &'static str = Box::leak(format!("{op:?}").into_boxed_str());
        b.output(name, out, &[4, 8]);
    }
    b.case("ew_float_ops", F32_TOL)
}

fn softmax(t: Elem) -> Case {
    let mut b = Builder::new(31);
    let x = b.input("x", t, &[6, 37], 4.0);
    let y = b.buf(t, 6 * 37);
    b.step(Step::Softmax {
        x,
        y,
        rows: 6,
        cols: 37,
    });
    b.output("y", y, &[6, 37]);
    if t == Elem::F32 {
        b.case("softmax_f32", F32_TOL)
    } else {
        b.case("softmax_f16", F16_TOL)
    }
}

fn layer_norm(t: Elem, residual: bool) -> Case {
    let (rows, cols) = (4, 48);
    let mut b = Builder::new(32);
    let x = b.input("x", t, &[rows, cols], 2.0);
    let r = residual.then(|| b.input("r", t, &[rows, cols], 1.0));
    let gamma = b.weight(t, cols, 1.0);
    let beta = residual.then(|| b.weight(t, cols, 0.5));
    let y = b.buf(t, rows * cols);
    b.step(Step::LayerNorm {
        x,
        residual: r,
        gamma,
        beta,
        y,
        rows,
        cols,
        eps: 1e-5,
    });
    b.output("y", y, &[rows, cols]);
    if t == Elem::F32 {
        b.case("layer_norm_residual_f32", F32_TOL)
    } else {
        b.case("layer_norm_f16", F16_TOL)
    }
}

fn attention(t: Elem) -> Case {
    let (batch, heads, sq, sk, d) = (2, 3, 4, 5, 8);
    let bh = batch * heads;
    let f16 = t == Elem::F16;
    let mut b = Builder::new(41);
    let q = b.input("q", t, &[bh, sq, d], 1.0);
    // F32: k stored [sk, d]; F16: k stored transposed [d, sk].
    let k = b.input("k", t, &[bh, sk, d], 1.0);
    let v = b.input("v", t, &[bh, sk, d], 1.0);
    let mask_view = if f16 {
        // One [sq, sk] mask broadcast over batch and heads, F16.
        let mv: Vec<f64> = (0..sq * sk)
            .map(|i| if i % 4 == 3 { -1e4 } else { 0.0 })
            .collect();
        let m = b.weight_vals(Elem::F16, &mv);
        view(m, 0, &[0, 0, sk as isize, 1])
    } else {
        // A padding mask per batch [batch, 1, 1, sk], F32.
        let mv: Vec<f64> = (0..batch * sk)
            .map(|i| if i % sk >= sk - i / sk - 1 { -1e9 } else { 0.0 })
            .collect();
        let m = b.input_vals("mask", Elem::F32, &[batch, 1, 1, sk], &mv);
        view(m, 0, &[sk as isize, 0, 0, 1])
    };
    let scores = b.buf(Elem::F32, bh * sq * sk);
    let probs = if f16 {
        b.buf(Elem::F16, bh * sq * sk)
    } else {
        scores
    };
    let y = b.buf(t, bh * sq * d);
    b.step(Step::Attention(AttentionStep {
        q,
        k,
        v,
        mask: Some(mask_view),
        y,
        scores,
        probs,
        batch,
        heads,
        sq,
        sk,
        d,
        scale: 1.0 / (d as f32).sqrt(),
        k_transposed: f16,
        compute: t,
    }));
    b.output("y", y, &[bh, sq, d]);
    if f16 {
        b.case("attention_f16_kt_broadcast_mask", F16_TOL)
    } else {
        b.case("attention_f32_padding_mask", F32_TOL)
    }
}

fn reduce(t: Elem, mean: bool) -> Case {
    let mut b = Builder::new(51);
    let x = b.input("x", t, &[3, 7, 5], 1.0);
    let y = b.buf(t, 15);
    b.step(Step::Reduce {
        x,
        y,
        outer: 3,
        len: 7,
        inner: 5,
        mean,
    });
    b.output("y", y, &[3, 5]);
    match (t == Elem::F32, mean) {
        (true, true) => b.case("reduce_mean_f32", F32_TOL),
        (true, false) => b.case("reduce_sum_f32", F32_TOL),
        (false, true) => b.case("reduce_mean_f16", F16_TOL),
        (false, false) => b.case("reduce_sum_f16", F16_TOL),
    }
}

fn gather(idx: Elem) -> Case {
    let (outer, axis_len, inner) = (2, 10, 4);
    let mut b = Builder::new(52);
    let data_elem = if idx == Elem::I64 {
        Elem::F32
    } else {
        Elem::F16
    };
    let data = b.weight(data_elem, outer * axis_len * inner, 1.0);
    let ids = b.input_vals("ids", idx, &[3], &[7.0, -1.0, 0.0]);
    b.check("ids", axis_len);
    let y = b.buf(data_elem, outer * 3 * inner);
    b.step(Step::Gather {
        data,
        indices: ids,
        y,
        outer,
        axis_len,
        inner,
        count: 3,
    });
    b.output("y", y, &[outer, 3, inner]);
    if idx == Elem::I64 {
        b.case("gather_i64", 0.0)
    } else {
        b.case("gather_i32", 0.0)
    }
}

fn argmax() -> Case {
    let mut b = Builder::new(53);
    // Ties at rows: [1, 3, 3, 0, 3, 2] along len 6 for each of 2 x 3.
    let mut vals = Vec::new();
    for o in 0..2 {
        for l in 0..6 {
            for i in 0..3 {
                vals.push(if l == 1 || l == 4 {
                    5.0 + (o + i) as f64
                } else {
                    l as f64 * 0.5
                });
            }
        }
    }
    let x = b.input_vals("x", Elem::F32, &[2, 6, 3], &vals);
    let first = b.buf(Elem::I64, 6);
    let last = b.buf(Elem::I64, 6);
    for (y, select_last) in [(first, false), (last, true)] {
        b.step(Step::ArgMax {
            x,
            y,
            outer: 2,
            len: 6,
            inner: 3,
            select_last,
        });
    }
    b.output("first", first, &[2, 3]);
    b.output("last", last, &[2, 3]);
    b.case("argmax", 0.0)
}

/// Every case: each `Step` kind and element-type path at least once.
pub fn cases() -> Vec<Case> {
    let (f32_, f16_) = (Elem::F32, Elem::F16);
    vec![
        gemm_case(
            "gemm_f32_bias_relu",
            1,
            f32_,
            f32_,
            true,
            Act::Relu,
            (4, 16, 8),
            F32_TOL,
        ),
        gemm_case(
            "gemm_f32_bias_gelu",
            2,
            f32_,
            f32_,
            true,
            Act::Gelu,
            (4, 16, 8),
            F32_TOL,
        ),
        gemm_case(
            "gemm_f32_relu_no_bias",
            3,
            f32_,
            f32_,
            false,
            Act::Relu,
            (3, 5, 7),
            F32_TOL,
        ),
        gemm_case(
            "gemm_f32_sigmoid",
            4,
            f32_,
            f32_,
            true,
            Act::Sigmoid,
            (3, 5, 7),
            F32_TOL,
        ),
        gemm_case(
            "gemm_f16_bias_relu",
            5,
            f16_,
            f16_,
            true,
            Act::Relu,
            (4, 16, 8),
            F16_TOL,
        ),
        gemm_case(
            "gemm_f16_bias_gelu",
            6,
            f16_,
            f16_,
            true,
            Act::Gelu,
            (4, 16, 8),
            F16_TOL,
        ),
        gemm_case(
            "gemm_f16_tanh",
            8,
            f16_,
            f16_,
            false,
            Act::Tanh,
            (2, 9, 4),
            F16_TOL,
        ),
        gemm_case(
            "gemm_f16_sigmoid",
            9,
            f16_,
            f16_,
            true,
            Act::Sigmoid,
            (2, 9, 4),
            F16_TOL,
        ),
        gemm_case(
            "gemm_f16_in_f32_out",
            7,
            f16_,
            f32_,
            true,
            Act::None,
            (4, 16, 8),
            F16_TOL,
        ),
        gemm_batched_trans_b(),
        gemm_batched_shared_b_gapped_y(),
        gemm_int8(
            "gemm_int8_lt",
            f32_,
            f32_,
            (5, 8, 16),
            true,
            Act::Relu,
            F32_TOL,
        ),
        gemm_int8(
            "gemm_int8_fallback",
            f16_,
            f16_,
            (3, 6, 10),
            false,
            Act::Gelu,
            F16_TOL,
        ),
        ew_broadcast_add(),
        ew_transpose_copy(),
        ew_cast_round_trip(),
        ew_where_bool(),
        ew_integers(),
        ew_float_ops(),
        softmax(f32_),
        softmax(f16_),
        layer_norm(f32_, true),
        layer_norm(f16_, false),
        attention(f32_),
        attention(f16_),
        reduce(f32_, true),
        reduce(f16_, true),
        reduce(f32_, false),
        gather(Elem::I64),
        gather(Elem::I32),
        argmax(),
    ]
}
