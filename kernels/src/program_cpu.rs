//! Runs a [`Program`] on the CPU, step by step, with the semantics the GPU kernels implement
//! (see [`crate::program`]). It is slow and simple on purpose: it exists so the engine's
//! lowering — buffer offsets, strides, layouts, casts and precisions — is checked against
//! ONNX Runtime on machines without a GPU, and so a GPU run can be compared with it step by
//! step.

use half::f16;

use crate::program::{
    Act, AttentionStep, Buf, Elem, EwOp, GemmInt8Step, GemmStep, Loc, Program, Step, View,
};

/// One graph input: its name and little-endian bytes (the binding's element type and shape).
pub type HostInput<'a> = (&'a str, &'a [u8]);

/// Runs `program` on `inputs` and returns every output's bytes, in the program's order.
pub fn run(program: &Program, inputs: &[HostInput<'_>]) -> Result<Vec<Vec<u8>>, String> {
    program.validate()?;
    check_indices(program, inputs)?;
    let mut m = Memory {
        arena: vec![0u8; program.arena_bytes],
        weights: &program.weights,
    };
    for b in &program.inputs {
        let (_, bytes) = inputs
            .iter()
            .find(|(n, _)| *n == b.name)
            .ok_or_else(|| format!("input '{}' is missing", b.name))?;
        if bytes.len() != b.buf.bytes() {
            return Err(format!(
                "input '{}' has {} bytes, its shape {:?} needs {}",
                b.name,
                bytes.len(),
                b.shape,
                b.buf.bytes()
            ));
        }
        let Loc::Arena(off) = b.buf.loc else {
            return Err(format!("input '{}' is not in the arena", b.name));
        };
        m.arena[off..off + bytes.len()].copy_from_slice(bytes);
    }
    for (i, s) in program.steps.iter().enumerate() {
        m.step(s)
            .map_err(|e| format!("step {i} ({}): {e}", s.kind()))?;
    }
    Ok(program
        .outputs
        .iter()
        .map(|b| m.bytes(&b.buf).to_vec())
        .collect())
}

/// The host-side check of [`crate::program::IndexCheck`]s: every id within its table.
pub fn check_indices(program: &Program, inputs: &[HostInput<'_>]) -> Result<(), String> {
    for c in &program.index_checks {
        let (Some(b), Some((_, bytes))) = (
            program.inputs.iter().find(|b| b.name == c.input),
            inputs.iter().find(|(n, _)| *n == c.input),
        ) else {
            continue;
        };
        let bound = c.bound as i64;
        let bad = |v: i64| v < -bound || v >= bound;
        let found = match b.buf.elem {
            Elem::I64 => bytes
                .chunks_exact(8)
                .map(|x| i64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]))
                .find(|&v| bad(v)),
            Elem::I32 => bytes
                .chunks_exact(4)
                .map(|x| i32::from_le_bytes([x[0], x[1], x[2], x[3]]) as i64)
                .find(|&v| bad(v)),
            _ => None,
        };
        if let Some(v) = found {
            return Err(format!(
                "input '{}': index {v} is out of range [-{bound}, {}) for node '{}'",
                c.input,
                bound - 1,
                c.node
            ));
        }
    }
    Ok(())
}

struct Memory<'p> {
    arena: Vec<u8>,
    weights: &'p [crate::program::Weight],
}

fn load(bytes: &[u8], elem: Elem, i: usize) -> f64 {
    match elem {
        Elem::F32 => {
            let o = i * 4;
            f32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as f64
        }
        Elem::F16 => {
            let o = i * 2;
            f16::from_le_bytes([bytes[o], bytes[o + 1]]).to_f64()
        }
        Elem::I8 => bytes[i] as i8 as f64,
        Elem::Bool => (bytes[i] != 0) as u8 as f64,
        Elem::I32 => {
            let o = i * 4;
            i32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as f64
        }
        Elem::I64 => {
            let o = i * 8;
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            i64::from_le_bytes(b) as f64
        }
    }
}

fn store(bytes: &mut [u8], elem: Elem, i: usize, v: f64) {
    match elem {
        Elem::F32 => bytes[i * 4..i * 4 + 4].copy_from_slice(&(v as f32).to_le_bytes()),
        // Through f32 first, as the kernels store an f32 result with cvt.rn.f16.f32.
        Elem::F16 => {
            bytes[i * 2..i * 2 + 2].copy_from_slice(&f16::from_f32(v as f32).to_le_bytes())
        }
        Elem::I8 => bytes[i] = (v.trunc().clamp(-128.0, 127.0) as i8) as u8,
        Elem::Bool => bytes[i] = (v != 0.0) as u8,
        Elem::I32 => bytes[i * 4..i * 4 + 4].copy_from_slice(&(v.trunc() as i32).to_le_bytes()),
        Elem::I64 => bytes[i * 8..i * 8 + 8].copy_from_slice(&(v.trunc() as i64).to_le_bytes()),
    }
}

/// erf by its Maclaurin series in f64: about 1e-9 absolute below |x| = 4, ±1 beyond (in f32,
/// erfc(4) ≈ 1.5e-8 rounds away).
pub fn erf(x: f64) -> f64 {
    if x.abs() >= 4.0 {
        return x.signum();
    }
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 3.0 {
        n += 1.0;
        term *= -x2 / n;
        sum += term / (2.0 * n + 1.0);
        if n > 200.0 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf((x / std::f32::consts::SQRT_2) as f64) as f32)
}

fn activate(a: Act, x: f32) -> f32 {
    match a {
        Act::None => x,
        Act::Relu => x.max(0.0),
        Act::Sigmoid => sigmoid(x),
        Act::Tanh => x.tanh(),
        Act::Gelu => gelu(x),
    }
}

/// One element of the elementwise kernel: float maths in f32 when every operand is a float,
/// else in f64.
fn ew(op: EwOp, x: &[f64], float: bool) -> f64 {
    let f = |v: f64| v as f32;
    if float {
        let a = f(x[0]);
        let r: f32 = match op {
            EwOp::Copy => a,
            EwOp::Relu => a.max(0.0),
            EwOp::Sigmoid => sigmoid(a),
            EwOp::Tanh => a.tanh(),
            EwOp::Erf => erf(a as f64) as f32,
            EwOp::Sqrt => a.sqrt(),
            EwOp::Neg => -a,
            EwOp::Exp => a.exp(),
            EwOp::Gelu => gelu(a),
            EwOp::Add => a + f(x[1]),
            EwOp::Sub => a - f(x[1]),
            EwOp::Mul => a * f(x[1]),
            EwOp::Div => a / f(x[1]),
            EwOp::Pow => a.powf(f(x[1])),
            EwOp::Equal => (a == f(x[1])) as u8 as f32,
            EwOp::Max => a.max(f(x[1])),
            EwOp::Min => a.min(f(x[1])),
            EwOp::Where => {
                if x[0] != 0.0 {
                    f(x[1])
                } else {
                    f(x[2])
                }
            }
        };
        return r as f64;
    }
    let a = x[0];
    match op {
        EwOp::Copy => a,
        EwOp::Relu => a.max(0.0),
        EwOp::Sigmoid => sigmoid(a as f32) as f64,
        EwOp::Tanh => a.tanh(),
        EwOp::Erf => erf(a),
        EwOp::Sqrt => a.sqrt(),
        EwOp::Neg => -a,
        EwOp::Exp => a.exp(),
        EwOp::Gelu => gelu(a as f32) as f64,
        EwOp::Add => a + x[1],
        EwOp::Sub => a - x[1],
        EwOp::Mul => a * x[1],
        // Integer division truncates, as ONNX Div on integers.
        EwOp::Div => (a / x[1]).trunc(),
        EwOp::Pow => a.powf(x[1]),
        EwOp::Equal => (a == x[1]) as u8 as f64,
        EwOp::Max => a.max(x[1]),
        EwOp::Min => a.min(x[1]),
        EwOp::Where => {
            if x[0] != 0.0 {
                x[1]
            } else {
                x[2]
            }
        }
    }
}

fn view_index(v: &View, idx: &[usize]) -> usize {
    let mut o = v.offset as isize;
    for (&i, &s) in idx.iter().zip(&v.strides) {
        o += i as isize * s;
    }
    o as usize
}

impl Memory<'_> {
    fn bytes(&self, b: &Buf) -> &[u8] {
        match b.loc {
            Loc::Arena(off) => &self.arena[off..off + b.bytes()],
            Loc::Weight(w) => &self.weights[w].bytes[..b.bytes()],
        }
    }

    fn bytes_mut(&mut self, b: &Buf) -> Result<&mut [u8], String> {
        match b.loc {
            Loc::Arena(off) => Ok(&mut self.arena[off..off + b.bytes()]),
            Loc::Weight(_) => Err("a step writes a weight".into()),
        }
    }

    fn read(&self, b: &Buf) -> Vec<f64> {
        let bytes = self.bytes(b);
        (0..b.len).map(|i| load(bytes, b.elem, i)).collect()
    }

    fn read_f32(&self, b: &Buf) -> Vec<f32> {
        self.read(b).into_iter().map(|v| v as f32).collect()
    }

    fn write(
        &mut self,
        b: &Buf,
        vals: impl IntoIterator<Item = (usize, f64)>,
    ) -> Result<(), String> {
        let elem = b.elem;
        let bytes = self.bytes_mut(b)?;
        for (i, v) in vals {
            store(bytes, elem, i, v);
        }
        Ok(())
    }

    fn step(&mut self, s: &Step) -> Result<(), String> {
        match s {
            Step::Gemm(g) => self.gemm(g),
            Step::GemmInt8(g) => self.gemm_int8(g),
            Step::Elementwise {
                op,
                ins,
                out,
                shape,
            } => self.elementwise(*op, ins, out, shape),
            Step::Softmax { x, y, rows, cols } => {
                let xs = self.read_f32(x);
                let mut out = Vec::with_capacity(rows * cols);
                for r in 0..*rows {
                    out.extend(softmax_row(&xs[r * cols..(r + 1) * cols]));
                }
                self.write(y, out.into_iter().map(|v| v as f64).enumerate())
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
                let mut xs = self.read_f32(x);
                if let Some(r) = residual {
                    for (a, b) in xs.iter_mut().zip(self.read_f32(r)) {
                        *a += b;
                    }
                }
                let g = self.read_f32(gamma);
                let bt = beta.as_ref().map(|b| self.read_f32(b));
                let mut out = vec![0f64; rows * cols];
                for r in 0..*rows {
                    let row = &xs[r * cols..(r + 1) * cols];
                    let mean = row.iter().sum::<f32>() / *cols as f32;
                    let var =
                        row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / *cols as f32;
                    let rstd = 1.0 / (var + eps).sqrt();
                    for c in 0..*cols {
                        let mut v = (row[c] - mean) * rstd * g[c];
                        if let Some(b) = &bt {
                            v += b[c];
                        }
                        out[r * cols + c] = v as f64;
                    }
                }
                self.write(y, out.into_iter().enumerate())
            }
            Step::Attention(a) => self.attention(a),
            Step::Reduce {
                x,
                y,
                outer,
                len,
                inner,
                mean,
            } => {
                let xs = self.read_f32(x);
                let mut out = vec![0f64; outer * inner];
                for o in 0..*outer {
                    for i in 0..*inner {
                        let s: f32 = (0..*len).map(|l| xs[(o * len + l) * inner + i]).sum();
                        out[o * inner + i] = if *mean { s / *len as f32 } else { s } as f64;
                    }
                }
                self.write(y, out.into_iter().enumerate())
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
                let d = self.read(data);
                let idx = self.read(indices);
                let mut out = vec![0f64; outer * count * inner];
                for o in 0..*outer {
                    for (c, &ix) in idx.iter().take(*count).enumerate() {
                        let mut ix = ix as i64;
                        if ix < 0 {
                            ix += *axis_len as i64;
                        }
                        if ix < 0 || ix >= *axis_len as i64 {
                            continue; // zeros
                        }
                        let src = (o * axis_len + ix as usize) * inner;
                        let dst = (o * count + c) * inner;
                        out[dst..dst + inner].copy_from_slice(&d[src..src + inner]);
                    }
                }
                self.write(y, out.into_iter().enumerate())
            }
            Step::ArgMax {
                x,
                y,
                outer,
                len,
                inner,
                select_last,
            } => {
                let xs = self.read(x);
                let mut out = vec![0f64; outer * inner];
                for o in 0..*outer {
                    for i in 0..*inner {
                        let mut best = 0usize;
                        for l in 1..*len {
                            let v = xs[(o * len + l) * inner + i];
                            let b = xs[(o * len + best) * inner + i];
                            if v > b || (*select_last && v == b) {
                                best = l;
                            }
                        }
                        out[o * inner + i] = best as f64;
                    }
                }
                self.write(y, out.into_iter().enumerate())
            }
        }
    }

    fn elementwise(
        &mut self,
        op: EwOp,
        ins: &[View],
        out: &View,
        shape: &[usize],
    ) -> Result<(), String> {
        let srcs: Vec<(Vec<f64>, &View)> = ins.iter().map(|v| (self.read(&v.buf), v)).collect();
        let float = ins.iter().all(|v| v.buf.elem.is_float())
            || (op == EwOp::Where && ins[1..].iter().all(|v| v.buf.elem.is_float()));
        let n: usize = shape.iter().product();
        let mut idx = vec![0usize; shape.len()];
        let mut vals = Vec::with_capacity(n);
        let mut args = vec![0f64; ins.len()];
        for _ in 0..n {
            for (a, (data, v)) in args.iter_mut().zip(&srcs) {
                *a = data[view_index(v, &idx)];
            }
            vals.push((view_index(out, &idx), ew(op, &args, float)));
            // Next index, last dim fastest.
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        self.write(&out.buf, vals)
    }

    fn gemm(&mut self, g: &GemmStep) -> Result<(), String> {
        let a = self.read_f32(&g.a);
        let b = self.read_f32(&g.b);
        let bias = g.bias.as_ref().map(|b| self.read_f32(b));
        let (m, n, k) = (g.m, g.n, g.k);
        let mut out = Vec::with_capacity(g.batch * m * n);
        for bt in 0..g.batch {
            let (oa, ob, oy) = (bt * g.stride_a, bt * g.stride_b, bt * g.stride_y);
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0f32;
                    for p in 0..k {
                        let av = if g.trans_a {
                            a[oa + p * m + i]
                        } else {
                            a[oa + i * k + p]
                        };
                        let bv = if g.trans_b {
                            b[ob + j * k + p]
                        } else {
                            b[ob + p * n + j]
                        };
                        acc += av * bv;
                    }
                    let mut v = g.alpha * acc;
                    if let Some(bias) = &bias {
                        v += bias[j];
                    }
                    out.push((oy + i * n + j, activate(g.act, v) as f64));
                }
            }
        }
        self.write(&g.y, out)
    }

    fn gemm_int8(&mut self, g: &GemmInt8Step) -> Result<(), String> {
        let a = self.read_f32(&g.a);
        let (m, n, k) = (g.m, g.n, g.k);
        let aq: Vec<i32> = a[..m * k]
            .iter()
            .map(|&v| (v / g.a_scale).round().clamp(-127.0, 127.0) as i32)
            .collect();
        self.write(&g.a_q, aq.iter().map(|&q| q as f64).enumerate())?;
        let w: Vec<i32> = self.read(&g.w).iter().map(|&v| v as i32).collect();
        let scales = self.read_f32(&g.w_scales);
        let bias = g.bias.as_ref().map(|b| self.read_f32(b));
        let mut acc = vec![0i32; m * n];
        for i in 0..m {
            for j in 0..n {
                acc[i * n + j] = (0..k).map(|p| aq[i * k + p] * w[j * k + p]).sum();
            }
        }
        self.write(&g.acc, acc.iter().map(|&v| v as f64).enumerate())?;
        let d: Vec<f32> = scales.iter().map(|s| g.alpha * g.a_scale * s).collect();
        let out = acc.iter().enumerate().map(|(i, &v)| {
            let j = i % n;
            let y = v as f32 * d[j] + bias.as_ref().map_or(0.0, |b| b[j]);
            (i, activate(g.act, y) as f64)
        });
        let out: Vec<(usize, f64)> = out.collect();
        self.write(&g.y, out)
    }

    fn attention(&mut self, a: &AttentionStep) -> Result<(), String> {
        let q = self.read_f32(&a.q);
        let k = self.read_f32(&a.k);
        let v = self.read_f32(&a.v);
        let mask = a.mask.as_ref().map(|m| (self.read_f32(&m.buf), m.clone()));
        let (sq, sk, d) = (a.sq, a.sk, a.d);
        let mut out = Vec::with_capacity(a.batch * a.heads * sq * d);
        let mut row = vec![0f32; sk];
        for b in 0..a.batch * a.heads {
            let (bi, hi) = (b / a.heads, b % a.heads);
            for i in 0..sq {
                for (j, r) in row.iter_mut().enumerate() {
                    let mut acc = 0f32;
                    for p in 0..d {
                        let kv = if a.k_transposed {
                            k[b * d * sk + p * sk + j]
                        } else {
                            k[b * sk * d + j * d + p]
                        };
                        acc += q[b * sq * d + i * d + p] * kv;
                    }
                    *r = acc * a.scale;
                    if let Some((m, view)) = &mask {
                        *r += m[view_index(view, &[bi, hi, i, j])];
                    }
                }
                let mut probs = softmax_row(&row);
                if a.compute == Elem::F16 {
                    for p in &mut probs {
                        *p = f16::from_f32(*p).to_f32();
                    }
                }
                for c in 0..d {
                    let acc: f32 = (0..sk).map(|j| probs[j] * v[b * sk * d + j * d + c]).sum();
                    out.push(acc as f64);
                }
            }
        }
        self.write(&a.y, out.into_iter().enumerate())
    }
}

fn softmax_row(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::{Binding, Weight, ALIGN};

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn from_f32_bytes(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4)
            .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
            .collect()
    }

    fn arena(off: usize, elem: Elem, len: usize) -> Buf {
        Buf {
            loc: Loc::Arena(off),
            elem,
            len,
        }
    }

    /// x [2, 3] · W [3, 2] + b, ReLU, then a transpose by strided copy.
    fn program() -> Program {
        let x = arena(0, Elem::F32, 6);
        let y = arena(ALIGN, Elem::F32, 4);
        let t = arena(2 * ALIGN, Elem::F32, 4);
        let w = Buf {
            loc: Loc::Weight(0),
            elem: Elem::F32,
            len: 6,
        };
        let b = Buf {
            loc: Loc::Weight(1),
            elem: Elem::F32,
            len: 2,
        };
        Program {
            weights: vec![
                Weight {
                    name: "w".into(),
                    elem: Elem::F32,
                    bytes: f32_bytes(&[1.0, -1.0, 2.0, 0.5, 0.0, 1.0]),
                },
                Weight {
                    name: "b".into(),
                    elem: Elem::F32,
                    bytes: f32_bytes(&[0.5, -10.0]),
                },
            ],
            arena_bytes: 3 * ALIGN,
            inputs: vec![Binding {
                name: "x".into(),
                buf: x,
                shape: vec![2, 3],
            }],
            outputs: vec![Binding {
                name: "t".into(),
                buf: t,
                shape: vec![2, 2],
            }],
            steps: vec![
                Step::Gemm(GemmStep {
                    a: x,
                    b: w,
                    bias: Some(b),
                    y,
                    m: 2,
                    n: 2,
                    k: 3,
                    batch: 1,
                    stride_a: 0,
                    stride_b: 0,
                    stride_y: 0,
                    trans_a: false,
                    trans_b: false,
                    alpha: 1.0,
                    act: Act::Relu,
                    compute: Elem::F32,
                }),
                Step::Elementwise {
                    op: EwOp::Copy,
                    ins: vec![View {
                        buf: y,
                        offset: 0,
                        strides: vec![1, 2],
                    }],
                    out: View {
                        buf: t,
                        offset: 0,
                        strides: vec![2, 1],
                    },
                    shape: vec![2, 2],
                },
            ],
            index_checks: vec![],
        }
    }

    #[test]
    fn gemm_bias_relu_then_transpose() {
        let p = program();
        let x = f32_bytes(&[1.0, 2.0, 3.0, -1.0, 0.0, 1.0]);
        let out = run(&p, &[("x", &x)]).unwrap();
        // x·W = [[1+4+0, -1+1+3], [-1+0+0, 1+0+1]] = [[5, 3], [-1, 2]]; + b, relu:
        // [[5.5, 0], [0, 0]]; transposed: [[5.5, 0], [0, 0]].
        assert_eq!(from_f32_bytes(&out[0]), vec![5.5, 0.0, 0.0, 0.0]);
        let x = f32_bytes(&[0.0, 0.0, 10.0, 1.0, 1.0, 1.0]);
        let out = run(&p, &[("x", &x)]).unwrap();
        // [[0, 10]·.. ] x·W = [[0, 10], [3, 0.5]]; +b: [[0.5, 0], [3.5, -9.5]] relu → [[0.5,0],[3.5,0]]
        assert_eq!(from_f32_bytes(&out[0]), vec![0.5, 3.5, 0.0, 0.0]);
    }

    #[test]
    fn bad_programs_and_inputs_are_errors() {
        let p = program();
        assert!(run(&p, &[]).unwrap_err().contains("missing"));
        assert!(run(&p, &[("x", &[0u8; 4])]).unwrap_err().contains("bytes"));
        let mut q = program();
        q.arena_bytes = ALIGN;
        assert!(q.validate().unwrap_err().contains("out of bounds"));
        let mut q = program();
        if let Step::Gemm(g) = &mut q.steps[0] {
            g.k = 4;
        }
        assert!(q.validate().unwrap_err().contains("A holds 6"));
    }

    #[test]
    fn f16_stores_round_to_nearest_even_and_casts_truncate() {
        let mut b = vec![0u8; 8];
        store(&mut b, Elem::F16, 0, 1.0 + 1.0 / 4096.0);
        assert_eq!(load(&b, Elem::F16, 0), 1.0);
        store(&mut b, Elem::I64, 0, -2.7);
        assert_eq!(load(&b, Elem::I64, 0), -2.0);
        store(&mut b, Elem::Bool, 0, 0.5);
        assert_eq!(load(&b, Elem::Bool, 0), 1.0);
        assert!((erf(0.5) - 0.520_499_877_813_046_5).abs() < 1e-12);
    }
}
