//! Launch configurations and the by-value parameter structs of our kernels. Pure: built from
//! a step and resolved device addresses, tested without a GPU.
//!
//! # Launch configurations
//! - Elementwise-shaped kernels (elementwise, bias_act, quantize_sym, dequant_bias_act,
//!   reduce, argmax, gather, the INT8 GEMM fallback): one thread per output element,
//!   blocks of [`BLOCK_1D`] threads, `ceil(n / 256)` blocks capped at [`MAX_GRID_1D`]; the
//!   kernels loop grid-stride over the rest. `n == 0` launches nothing.
//! - Row kernels (softmax, layer norm, scale_mask_softmax): one block per row, `cols`
//!   rounded up to a multiple of 32 threads, at least 32 and at most 1024; threads stride
//!   over longer rows. `rows == 0` launches nothing.

use cudarc::driver::{DeviceRepr, LaunchConfig};

use crate::program::{Act, EwOp, View, MAX_RANK};

/// The activation code of `dequant_bias_act` (`SY_ACT_*` in `kernels/cu/common.cuh`).
pub fn act_code(a: Act) -> i32 {
    match a {
        Act::None => 0,
        Act::Relu => 1,
        Act::Sigmoid => 2,
        Act::Tanh => 3,
        Act::Gelu => 4,
    }
}

/// The `bias_act.cu` entry point for an activation and element suffix (`f32`, `f16`).
pub fn bias_act_entry(a: Act, suffix: &str) -> String {
    let act = match a {
        Act::None => "bias",
        Act::Relu => "bias_relu",
        Act::Sigmoid => "bias_sigmoid",
        Act::Tanh => "bias_tanh",
        Act::Gelu => "bias_gelu",
    };
    format!("{act}_{suffix}")
}

/// Threads per block of the elementwise-shaped kernels.
pub const BLOCK_1D: u32 = 256;

/// Most blocks of an elementwise-shaped launch (the kernels are grid-stride beyond it):
/// 65 535 blocks of 256 threads keep every SM of an H100 busy many times over.
pub const MAX_GRID_1D: u32 = 65_535;

/// Most threads per block of a row kernel.
pub const MAX_ROW_BLOCK: u32 = 1024;

/// The launch of a one-thread-per-element kernel over `n` elements; `None` when `n == 0`.
pub fn grid_1d(n: usize) -> Option<LaunchConfig> {
    if n == 0 {
        return None;
    }
    let blocks = n.div_ceil(BLOCK_1D as usize).min(MAX_GRID_1D as usize) as u32;
    Some(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK_1D, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The launch of a one-block-per-row kernel over `[rows, cols]`; `None` when `rows == 0`,
/// an error when `rows` exceeds the grid's x limit (2^31 - 1).
pub fn grid_rows(rows: usize, cols: usize) -> Result<Option<LaunchConfig>, String> {
    if rows == 0 {
        return Ok(None);
    }
    let grid = u32::try_from(rows)
        .ok()
        .filter(|&r| r <= i32::MAX as u32)
        .ok_or_else(|| format!("{rows} rows exceed the CUDA grid limit"))?;
    let threads = cols
        .div_ceil(32)
        .saturating_mul(32)
        .clamp(32, MAX_ROW_BLOCK as usize) as u32;
    Ok(Some(LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }))
}

/// One operand of the elementwise kernel (`EwOperand` in `kernels/cu/elementwise.cu`):
/// element `(i_0, .., i_r)` is at `ptr[offset + Σ i_d · strides[d]]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EwOperand {
    pub ptr: u64,
    pub offset: i64,
    pub strides: [i64; MAX_RANK],
    pub elem: i32,
    pub pad: i32,
}

/// The by-value parameter of the `elementwise` kernel (`EwParams` in
/// `kernels/cu/elementwise.cu`, 360 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EwParams {
    pub ins: [EwOperand; 3],
    pub out: EwOperand,
    pub shape: [i64; MAX_RANK],
    pub n: i64,
    pub rank: i32,
    pub op: i32,
    pub nin: i32,
    pub float_math: i32,
}

// SAFETY: EwParams is #[repr(C)] plain old data (integers only, no pointers Rust owns, no
// padding the C side reads), laid out exactly as `struct EwParams` of elementwise.cu; the
// kernel receives it by value, so cuLaunchKernel copies its bytes.
unsafe impl DeviceRepr for EwParams {}

/// The by-value mask parameter of `scale_mask_softmax_*` (`MaskView` in
/// `kernels/cu/attention.cu`, 56 bytes): a strided view over `[batch, heads, sq, sk]`; a null
/// `ptr` means no mask.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaskView {
    pub ptr: u64,
    pub offset: i64,
    pub strides: [i64; 4],
    pub elem: i32,
    pub pad: i32,
}

// SAFETY: #[repr(C)] plain old data laid out as `struct MaskView` of attention.cu, passed by
// value.
unsafe impl DeviceRepr for MaskView {}

fn to_i64(v: usize, what: &str) -> Result<i64, String> {
    i64::try_from(v).map_err(|_| format!("{what} {v} does not fit in i64"))
}

fn operand(ptr: u64, v: &View) -> Result<EwOperand, String> {
    let mut strides = [0i64; MAX_RANK];
    if v.strides.len() > MAX_RANK {
        return Err(format!("rank {} above {MAX_RANK}", v.strides.len()));
    }
    for (d, &s) in strides.iter_mut().zip(&v.strides) {
        *d = s as i64;
    }
    Ok(EwOperand {
        ptr,
        offset: to_i64(v.offset, "offset")?,
        strides,
        elem: v.buf.elem.code(),
        pad: 0,
    })
}

/// Whether the elementwise kernel computes in f32 (else f64): every operand a float, or for
/// `Where` both values (the condition may be anything), exactly as `program_cpu`.
pub fn float_math(op: EwOp, ins: &[View]) -> bool {
    ins.iter().all(|v| v.buf.elem.is_float())
        || (op == EwOp::Where && ins.iter().skip(1).all(|v| v.buf.elem.is_float()))
}

/// The parameter of one `Step::Elementwise`, its operands at the device addresses given
/// (each the start of its view's buffer). Validated steps only (arity, rank).
pub fn ew_params(
    op: EwOp,
    ins: &[(u64, &View)],
    out: (u64, &View),
    shape: &[usize],
) -> Result<EwParams, String> {
    if shape.len() > MAX_RANK {
        return Err(format!("rank {} above {MAX_RANK}", shape.len()));
    }
    if ins.len() != op.arity() || ins.len() > 3 {
        return Err(format!("{op:?} takes {} inputs", op.arity()));
    }
    let mut p = EwParams::default();
    for (slot, (ptr, v)) in p.ins.iter_mut().zip(ins) {
        *slot = operand(*ptr, v)?;
    }
    p.out = operand(out.0, out.1)?;
    for (d, &s) in p.shape.iter_mut().zip(shape) {
        *d = to_i64(s, "dim")?;
    }
    p.n = to_i64(shape.iter().product(), "element count")?;
    p.rank = shape.len() as i32;
    p.op = op.code();
    p.nin = ins.len() as i32;
    let views: Vec<View> = ins.iter().map(|(_, v)| (*v).clone()).collect();
    p.float_math = float_math(op, &views) as i32;
    Ok(p)
}

/// The mask parameter of one attention step: `None` gives the null mask.
pub fn mask_view(mask: Option<(u64, &View)>) -> Result<MaskView, String> {
    let Some((ptr, v)) = mask else {
        return Ok(MaskView::default());
    };
    if v.strides.len() != 4 {
        return Err(format!("mask view has rank {}, needs 4", v.strides.len()));
    }
    let mut strides = [0i64; 4];
    for (d, &s) in strides.iter_mut().zip(&v.strides) {
        *d = s as i64;
    }
    Ok(MaskView {
        ptr,
        offset: to_i64(v.offset, "mask offset")?,
        strides,
        elem: v.buf.elem.code(),
        pad: 0,
    })
}

/// Size in bytes of the `elementwise` kernel's parameter, as the PTX declares it
/// (`.param .align 8 .b8 elementwise_param_0[360]`): checked against NVRTC's output.
pub const EW_PARAMS_BYTES: usize = std::mem::size_of::<EwParams>();

/// Size in bytes of the `MaskView` parameter of `scale_mask_softmax_*`.
pub const MASK_VIEW_BYTES: usize = std::mem::size_of::<MaskView>();

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::{Buf, Elem, Loc};

    fn view(elem: Elem, offset: usize, strides: Vec<isize>) -> View {
        View {
            buf: Buf {
                loc: Loc::Arena(0),
                elem,
                len: 64,
            },
            offset,
            strides,
        }
    }

    #[test]
    fn activation_codes_and_entries_match_the_kernels() {
        let acts = [Act::None, Act::Relu, Act::Sigmoid, Act::Tanh, Act::Gelu];
        let codes: Vec<i32> = acts.iter().map(|&a| act_code(a)).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
        let bias_act = crate::sources::source("bias_act.cu").unwrap();
        for a in acts {
            for t in ["f32", "f16"] {
                let e = bias_act_entry(a, t);
                assert!(bias_act.entry_points.contains(&e.as_str()), "{e}");
            }
        }
        assert_eq!(bias_act_entry(Act::Gelu, "f16"), "bias_gelu_f16");
    }

    #[test]
    fn one_d_grids_cover_n_and_are_capped() {
        assert!(grid_1d(0).is_none());
        let c = grid_1d(1).unwrap();
        assert_eq!((c.grid_dim.0, c.block_dim.0), (1, 256));
        assert_eq!(grid_1d(256).unwrap().grid_dim.0, 1);
        assert_eq!(grid_1d(257).unwrap().grid_dim.0, 2);
        assert_eq!(grid_1d(usize::MAX / 2).unwrap().grid_dim.0, MAX_GRID_1D);
        assert_eq!(grid_1d(1).unwrap().shared_mem_bytes, 0);
    }

    #[test]
    fn row_grids_use_one_block_per_row_and_whole_warps() {
        assert!(grid_rows(0, 10).unwrap().is_none());
        let c = grid_rows(7, 1).unwrap().unwrap();
        assert_eq!((c.grid_dim.0, c.block_dim.0), (7, 32));
        assert_eq!(grid_rows(1, 33).unwrap().unwrap().block_dim.0, 64);
        assert_eq!(grid_rows(1, 768).unwrap().unwrap().block_dim.0, 768);
        assert_eq!(grid_rows(1, 100_000).unwrap().unwrap().block_dim.0, 1024);
        assert_eq!(grid_rows(1, 0).unwrap().unwrap().block_dim.0, 32);
        assert!(grid_rows(1 << 31, 8).unwrap_err().contains("grid limit"));
    }

    #[test]
    fn structs_have_the_c_layout() {
        assert_eq!(std::mem::size_of::<EwOperand>(), 72);
        assert_eq!(EW_PARAMS_BYTES, 360);
        assert_eq!(std::mem::align_of::<EwParams>(), 8);
        assert_eq!(MASK_VIEW_BYTES, 56);
    }

    #[test]
    fn elementwise_params_carry_views_shape_and_maths_kind() {
        let a = view(Elem::F32, 3, vec![0, 1]);
        let b = view(Elem::F16, 0, vec![4, -1]);
        let o = view(Elem::F16, 0, vec![4, 1]);
        let p = ew_params(
            EwOp::Add,
            &[(0x1000, &a), (0x2000, &b)],
            (0x3000, &o),
            &[2, 4],
        )
        .unwrap();
        assert_eq!(p.n, 8);
        assert_eq!(p.rank, 2);
        assert_eq!(p.op, 9);
        assert_eq!(p.nin, 2);
        assert_eq!(p.float_math, 1);
        assert_eq!(p.ins[0].ptr, 0x1000);
        assert_eq!(p.ins[0].offset, 3);
        assert_eq!(p.ins[0].strides, [0, 1, 0, 0, 0, 0]);
        assert_eq!(p.ins[1].strides[..2], [4, -1]);
        assert_eq!(p.ins[1].elem, Elem::F16.code());
        assert_eq!(p.ins[2], EwOperand::default());
        assert_eq!(p.out.ptr, 0x3000);
        assert_eq!(p.shape, [2, 4, 0, 0, 0, 0]);
        // A scalar (rank 0) has one element.
        let s = view(Elem::F32, 0, vec![]);
        assert_eq!(
            ew_params(EwOp::Relu, &[(1, &s)], (2, &s), &[]).unwrap().n,
            1
        );
        // Wrong arity is refused.
        assert!(ew_params(EwOp::Add, &[(1, &s)], (2, &s), &[]).is_err());
    }

    #[test]
    fn maths_is_f32_only_for_float_operands() {
        let f = view(Elem::F32, 0, vec![1]);
        let h = view(Elem::F16, 0, vec![1]);
        let i = view(Elem::I64, 0, vec![1]);
        let c = view(Elem::Bool, 0, vec![1]);
        assert!(float_math(EwOp::Add, &[f.clone(), h.clone()]));
        assert!(!float_math(EwOp::Equal, &[i.clone(), i.clone()]));
        assert!(!float_math(EwOp::Add, &[f.clone(), i.clone()]));
        assert!(float_math(EwOp::Where, &[c.clone(), f.clone(), h.clone()]));
        assert!(!float_math(EwOp::Where, &[c.clone(), i.clone(), f.clone()]));
        assert!(!float_math(EwOp::Copy, &[c]));
    }

    #[test]
    fn mask_views_are_rank_four_or_null() {
        assert_eq!(mask_view(None).unwrap().ptr, 0);
        let m = view(Elem::F32, 2, vec![8, 0, 0, 1]);
        let v = mask_view(Some((0x40, &m))).unwrap();
        assert_eq!(
            (v.ptr, v.offset, v.strides, v.elem),
            (0x40, 2, [8, 0, 0, 1], 0)
        );
        assert!(mask_view(Some((0x40, &view(Elem::F32, 0, vec![1])))).is_err());
    }
}
