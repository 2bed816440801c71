//! GEMMs on cuBLASLt.
//!
//! cuBLASLt is column-major; our tensors are row-major. A row-major `[r, c]` matrix with
//! leading dimension `c` is, byte for byte, its transpose in column-major. So
//! `Y = op(A) · op(B)` (row-major `[m, n]`) is computed as `Yᵀ = op(B)ᵀ · op(A)ᵀ`
//! (column-major `[n, m]`, leading dimension `n`): cuBLASLt's "A" is our B, its "B" is our A,
//! its `m, n` are our `n, m`. [`lt_gemm`] does this mapping (pure, tested); [`LtMatmul`]
//! holds the descriptors and the algorithm chosen once at load, and [`LtMatmul::enqueue`]
//! launches it.
//!
//! The INT8 GEMM `acc[m, n] = aq[m, k] · wᵀ` with `w` stored `[n, k]` maps to cuBLASLt's "TN"
//! layout: `accᵀ = w · aqᵀ`, cuBLASLt's A = `w` seen column-major `[k, n]` (transposed), its B
//! = `aq` seen column-major `[k, m]` (not transposed), `i8 × i8 → i32`, compute
//! `CUBLAS_COMPUTE_32I`, scale type `CUDA_R_32I`. That is the only ordering cuBLASLt's
//! integer kernels take with the plain column order; they also want `k` and `n` multiples of
//! 4 and 4-byte aligned pointers ([`int8_lt_eligible`]); other shapes use our exact fallback
//! kernel (`gemm_i8_i32`).

use std::ffi::c_void;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;

use crate::program::Elem;

/// One stored matrix as cuBLASLt sees it (column-major): `rows × cols` with leading
/// dimension `ld`, the next batch `batch_stride` elements further (0: shared by every batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LtMatrix {
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
    pub batch_stride: i64,
}

/// A row-major GEMM expressed as a column-major cuBLASLt matmul `D = op(A) · op(B)`.
/// `a_is_ours_b`: cuBLASLt's A is our B and its B our A (always true: the swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LtGemm {
    pub trans_a: bool,
    pub trans_b: bool,
    /// cuBLASLt's m (rows of D) = our n.
    pub m: u64,
    /// cuBLASLt's n (columns of D) = our m.
    pub n: u64,
    pub k: u64,
    /// cuBLASLt's A: our B.
    pub a: LtMatrix,
    /// cuBLASLt's B: our A.
    pub b: LtMatrix,
    /// C and D: our Y.
    pub d: LtMatrix,
    pub batch: i32,
}

/// The dims of a row-major GEMM `Y[b] = op(A[b]) · op(B[b])` (see
/// [`crate::program::GemmStep`]): `op(A)` is `[m, k]`, `op(B)` is `[k, n]`; with `trans_a` A
/// is stored `[k, m]`, with `trans_b` B is stored `[n, k]`; strides in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMajorGemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_y: usize,
}

fn dim(v: usize) -> Result<u64, String> {
    u64::try_from(v).map_err(|_| format!("dimension {v} too large"))
}

fn ld(v: usize) -> Result<i64, String> {
    i64::try_from(v).map_err(|_| format!("leading dimension {v} too large"))
}

/// Maps a row-major GEMM onto cuBLASLt's column-major matmul (the swap described in the
/// module docs). Errors on empty or oversized dims.
pub fn lt_gemm(g: &RowMajorGemm) -> Result<LtGemm, String> {
    if g.m == 0 || g.n == 0 || g.k == 0 || g.batch == 0 {
        return Err(format!(
            "empty GEMM (m {}, n {}, k {}, batch {})",
            g.m, g.n, g.k, g.batch
        ));
    }
    let batch = i32::try_from(g.batch).map_err(|_| format!("batch {} too large", g.batch))?;
    // Our B: not transposed it is row-major [k, n] = column-major [n, k] (ld n), already
    // op(B)ᵀ; transposed it is row-major [n, k] = column-major [k, n] (ld k), to transpose.
    let a = if g.trans_b {
        LtMatrix {
            rows: dim(g.k)?,
            cols: dim(g.n)?,
            ld: ld(g.k)?,
            batch_stride: ld(g.stride_b)?,
        }
    } else {
        LtMatrix {
            rows: dim(g.n)?,
            cols: dim(g.k)?,
            ld: ld(g.n)?,
            batch_stride: ld(g.stride_b)?,
        }
    };
    // Our A: not transposed it is row-major [m, k] = column-major [k, m] (ld k) = op(A)ᵀ;
    // transposed it is row-major [k, m] = column-major [m, k] (ld m), to transpose.
    let b = if g.trans_a {
        LtMatrix {
            rows: dim(g.m)?,
            cols: dim(g.k)?,
            ld: ld(g.m)?,
            batch_stride: ld(g.stride_a)?,
        }
    } else {
        LtMatrix {
            rows: dim(g.k)?,
            cols: dim(g.m)?,
            ld: ld(g.k)?,
            batch_stride: ld(g.stride_a)?,
        }
    };
    let d = LtMatrix {
        rows: dim(g.n)?,
        cols: dim(g.m)?,
        ld: ld(g.n)?,
        batch_stride: ld(g.stride_y)?,
    };
    Ok(LtGemm {
        trans_a: g.trans_b,
        trans_b: g.trans_a,
        m: dim(g.n)?,
        n: dim(g.m)?,
        k: dim(g.k)?,
        a,
        b,
        d,
        batch,
    })
}

/// The INT8 GEMM `acc[m, n] = aq[m, k] · w[n, k]ᵀ` in cuBLASLt's terms: the "TN" layout.
pub fn lt_gemm_int8(m: usize, n: usize, k: usize) -> Result<LtGemm, String> {
    lt_gemm(&RowMajorGemm {
        m,
        n,
        k,
        batch: 1,
        trans_a: false,
        trans_b: true,
        stride_a: 0,
        stride_b: 0,
        stride_y: 0,
    })
}

/// Whether cuBLASLt's INT8 kernels (plain column order) can take this GEMM: leading
/// dimensions `k` (A and B) and `n` (D) multiples of 4 and every pointer 4-byte aligned.
pub fn int8_lt_eligible(n: usize, k: usize, pointers: &[u64]) -> bool {
    n % 4 == 0 && k % 4 == 0 && pointers.iter().all(|p| p % 4 == 0)
}

/// The alignment (bytes, a power of two, at most 256) every batch of an operand keeps: that
/// of its base address and, with several batches apart, of the byte stride between them.
/// Given to cuBLASLt's heuristic (`CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES`, 256 by
/// default), so it never picks a kernel that needs more alignment than we have.
pub fn alignment(base: u64, stride_elems: usize, elem_size: usize, batch: usize) -> u32 {
    let mut a = base;
    if batch > 1 {
        a |= (stride_elems as u64).wrapping_mul(elem_size as u64);
    }
    if a == 0 {
        return 256;
    }
    (1u64 << a.trailing_zeros().min(8)) as u32
}

/// cuBLASLt's data type of an element type.
pub fn data_type(e: Elem) -> Result<sys::cudaDataType, String> {
    Ok(match e {
        Elem::F32 => sys::cudaDataType::CUDA_R_32F,
        Elem::F16 => sys::cudaDataType::CUDA_R_16F,
        Elem::I8 => sys::cudaDataType::CUDA_R_8I,
        Elem::I32 => sys::cudaDataType::CUDA_R_32I,
        other => return Err(format!("{other:?} is not a cuBLASLt matrix type")),
    })
}

/// What cuBLASLt fuses after the product: nothing, a bias, ReLU, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    Default,
    Bias(u64),
    Relu,
    ReluBias(u64),
}

/// The scalars `alpha`, `beta` in the matmul's scale type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// `CUDA_R_32F` (float GEMMs).
    F32(f32),
    /// `CUDA_R_32I` (the INT8 GEMM into i32).
    I32(i32),
}

/// Everything about one matmul but the handle: types, mapping, pointers, epilogue.
#[derive(Debug, Clone, Copy)]
pub struct MatmulSpec {
    pub gemm: LtGemm,
    /// Element types of cuBLASLt's A (our B), B (our A) and D (our Y).
    pub a_type: Elem,
    pub b_type: Elem,
    pub d_type: Elem,
    /// Device addresses of cuBLASLt's A (our B), B (our A), D (our Y).
    pub a_ptr: u64,
    pub b_ptr: u64,
    pub d_ptr: u64,
    pub alpha: Scale,
    pub epilogue: Epilogue,
}

impl MatmulSpec {
    /// `CUBLAS_COMPUTE_32F` for float inputs: exact f32 FMAs, no TF32 (so results match
    /// program_cpu), FP16 inputs accumulated in f32 as tensor cores do; `CUBLAS_COMPUTE_32I`
    /// for INT8.
    fn compute(&self) -> (sys::cublasComputeType_t, sys::cudaDataType) {
        match self.alpha {
            Scale::F32(_) => (
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType::CUDA_R_32F,
            ),
            Scale::I32(_) => (
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32I,
                sys::cudaDataType::CUDA_R_32I,
            ),
        }
    }
}

/// A cuBLASLt handle (`cublasLtCreate`), destroyed on drop.
#[derive(Debug)]
pub struct LtHandle(sys::cublasLtHandle_t);

// SAFETY: a cuBLASLt handle is a host-side context that NVIDIA documents as usable from any
// thread; Switchyard uses each handle from one instance thread at a time (through `&mut`
// runs of its programs), never concurrently.
unsafe impl Send for LtHandle {}
// SAFETY: as above; shared references only read the handle value.
unsafe impl Sync for LtHandle {}

impl LtHandle {
    pub fn new() -> Result<Self, lt::CublasError> {
        lt::create_handle().map(LtHandle)
    }

    pub fn raw(&self) -> sys::cublasLtHandle_t {
        self.0
    }
}

impl Drop for LtHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from cublasLtCreate and is destroyed once, here; a failure
        // cannot be reported from drop and leaves nothing to clean up.
        let _ = unsafe { lt::destroy_handle(self.0) };
    }
}

struct Layout(sys::cublasLtMatrixLayout_t);

impl Layout {
    fn new(t: Elem, m: &LtMatrix, batch: i32) -> Result<Self, String> {
        let layout =
            Layout(lt::create_matrix_layout(data_type(t)?, m.rows, m.cols, m.ld).map_err(err)?);
        if batch > 1 {
            use sys::cublasLtMatrixLayoutAttribute_t as A;
            // SAFETY: the layout is live; each value is the documented type (int32 batch
            // count, int64 stride) read from a local during the call.
            unsafe {
                lt::set_matrix_layout_attribute(
                    layout.0,
                    A::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    (&batch) as *const i32 as *const c_void,
                    std::mem::size_of::<i32>(),
                )
                .map_err(err)?;
                lt::set_matrix_layout_attribute(
                    layout.0,
                    A::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    (&m.batch_stride) as *const i64 as *const c_void,
                    std::mem::size_of::<i64>(),
                )
                .map_err(err)?;
            }
        }
        Ok(layout)
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatrixLayoutCreate, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

struct Desc(sys::cublasLtMatmulDesc_t);

impl Desc {
    /// Sets one attribute from a local value of the documented type `T`.
    fn set<T>(&self, attr: sys::cublasLtMatmulDescAttributes_t, v: &T) -> Result<(), String> {
        // SAFETY: the descriptor is live; `v` points to a `T`, the attribute's documented
        // type, for the duration of the call (cuBLASLt copies it).
        unsafe {
            lt::set_matmul_desc_attribute(
                self.0,
                attr,
                v as *const T as *const c_void,
                std::mem::size_of::<T>(),
            )
        }
        .map_err(err)
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulDescCreate, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

struct Pref(sys::cublasLtMatmulPreference_t);

impl Pref {
    fn set<T>(&self, attr: sys::cublasLtMatmulPreferenceAttributes_t, v: &T) -> Result<(), String> {
        // SAFETY: the preference is live; `v` points to a `T` of the attribute's type for the
        // duration of the call.
        unsafe {
            lt::set_matmul_pref_attribute(
                self.0,
                attr,
                v as *const T as *const c_void,
                std::mem::size_of::<T>(),
            )
        }
        .map_err(err)
    }
}

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulPreferenceCreate, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

fn err(e: lt::CublasError) -> String {
    e.to_string()
}

/// One matmul planned at load: its descriptors, the algorithm cuBLASLt's heuristic chose for
/// them and the workspace it may use, and its operands' addresses. Enqueuing it allocates
/// nothing.
pub struct LtMatmul {
    desc: Desc,
    a: Layout,
    b: Layout,
    d: Layout,
    algo: sys::cublasLtMatmulAlgo_t,
    spec: MatmulSpec,
    beta: Scale,
}

impl std::fmt::Debug for LtMatmul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LtMatmul")
            .field("spec", &self.spec)
            .finish()
    }
}

// SAFETY: the descriptors are host-side objects only read by cublasLtMatmul after creation;
// an LtMatmul is used by one thread at a time (the `&mut` run of its program).
unsafe impl Send for LtMatmul {}
// SAFETY: as above; `&LtMatmul` only passes the descriptors to cuBLASLt, which reads them.
unsafe impl Sync for LtMatmul {}

impl LtMatmul {
    /// Creates the descriptors of `spec` and asks cuBLASLt's heuristic for its best
    /// algorithm within `workspace_bytes`. Fails (`CUBLAS_STATUS_NOT_SUPPORTED`) when no
    /// algorithm fits.
    pub fn plan(
        handle: &LtHandle,
        spec: MatmulSpec,
        workspace_bytes: usize,
    ) -> Result<LtMatmul, String> {
        let g = &spec.gemm;
        let (compute, scale_type) = spec.compute();
        let desc = Desc(lt::create_matmul_desc(compute, scale_type).map_err(err)?);
        use sys::cublasLtMatmulDescAttributes_t as D;
        // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 (int32).
        desc.set(D::CUBLASLT_MATMUL_DESC_TRANSA, &(g.trans_a as i32))?;
        desc.set(D::CUBLASLT_MATMUL_DESC_TRANSB, &(g.trans_b as i32))?;
        use sys::cublasLtEpilogue_t as E;
        let (epilogue, bias) = match spec.epilogue {
            Epilogue::Default => (E::CUBLASLT_EPILOGUE_DEFAULT, None),
            Epilogue::Relu => (E::CUBLASLT_EPILOGUE_RELU, None),
            Epilogue::Bias(p) => (E::CUBLASLT_EPILOGUE_BIAS, Some(p)),
            Epilogue::ReluBias(p) => (E::CUBLASLT_EPILOGUE_RELU_BIAS, Some(p)),
        };
        desc.set(D::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
        if let Some(p) = bias {
            // A device pointer (void*). The bias has D's type (the default of
            // CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE), `m` (our n) values, the same for every
            // batch (BIAS_BATCH_STRIDE defaults to 0).
            let ptr = p as *const c_void;
            desc.set(D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ptr)?;
        }
        let a = Layout::new(spec.a_type, &g.a, g.batch)?;
        let b = Layout::new(spec.b_type, &g.b, g.batch)?;
        let d = Layout::new(spec.d_type, &g.d, g.batch)?;
        let pref = Pref(lt::create_matmul_pref().map_err(err)?);
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        pref.set(
            P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &(workspace_bytes as u64),
        )?;
        let size = |e: Elem| e.size();
        let batch = g.batch as usize;
        let align_a = alignment(
            spec.a_ptr,
            g.a.batch_stride as usize,
            size(spec.a_type),
            batch,
        );
        let align_b = alignment(
            spec.b_ptr,
            g.b.batch_stride as usize,
            size(spec.b_type),
            batch,
        );
        let align_d = alignment(
            spec.d_ptr,
            g.d.batch_stride as usize,
            size(spec.d_type),
            batch,
        );
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a)?;
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b)?;
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d)?;
        pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d)?;
        // SAFETY: every descriptor is live; C and D share one layout (beta is 0, C = D).
        let heuristic = unsafe {
            lt::get_matmul_algo_heuristic(handle.raw(), desc.0, a.0, b.0, d.0, d.0, pref.0)
        }
        .map_err(err)?;
        if heuristic.workspaceSize > workspace_bytes {
            return Err(format!(
                "the chosen algorithm wants {} bytes of workspace, {} available",
                heuristic.workspaceSize, workspace_bytes
            ));
        }
        let beta = match spec.alpha {
            Scale::F32(_) => Scale::F32(0.0),
            Scale::I32(_) => Scale::I32(0),
        };
        Ok(LtMatmul {
            desc,
            a,
            b,
            d,
            algo: heuristic.algo,
            spec,
            beta,
        })
    }

    /// Enqueues the matmul on `stream` (also while it is being captured into a graph).
    ///
    /// # Safety
    /// The addresses in the spec and the workspace must be live device memory of the
    /// stream's context, large enough for the planned shapes, until the stream has run it.
    pub unsafe fn enqueue(
        &self,
        handle: &LtHandle,
        workspace: u64,
        workspace_bytes: usize,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<(), String> {
        let scalar = |s: &Scale| -> *const c_void {
            match s {
                Scale::F32(v) => v as *const f32 as *const c_void,
                Scale::I32(v) => v as *const i32 as *const c_void,
            }
        };
        let s = &self.spec;
        // SAFETY: the caller guarantees the memory; alpha/beta point into `self` (host
        // memory, pointer mode host: read during the call); C = D with beta 0.
        unsafe {
            lt::matmul(
                handle.raw(),
                self.desc.0,
                scalar(&s.alpha),
                scalar(&self.beta),
                s.a_ptr as *const c_void,
                self.a.0,
                s.b_ptr as *const c_void,
                self.b.0,
                s.d_ptr as *const c_void,
                self.d.0,
                s.d_ptr as *mut c_void,
                self.d.0,
                &self.algo,
                workspace as *mut c_void,
                workspace_bytes,
                stream as sys::cudaStream_t,
            )
        }
        .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gemm(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> RowMajorGemm {
        RowMajorGemm {
            m,
            n,
            k,
            batch: 1,
            trans_a: ta,
            trans_b: tb,
            stride_a: 0,
            stride_b: 0,
            stride_y: 0,
        }
    }

    /// Multiplies as cuBLASLt would (column-major, with the given ops) and compares with
    /// the row-major product: the mapping is right for every transpose combination.
    #[test]
    fn the_swap_computes_the_row_major_product() {
        let (m, n, k) = (2usize, 3usize, 4usize);
        let a_rm: Vec<f32> = (0..m * k).map(|v| v as f32 - 3.0).collect(); // [m, k]
        let b_rm: Vec<f32> = (0..k * n).map(|v| (v * v) as f32 * 0.5).collect(); // [k, n]
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|p| a_rm[i * k + p] * b_rm[p * n + j]).sum();
            }
        }
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            // Store A and B as the step says.
            let a_st: Vec<f32> = if ta {
                (0..k * m).map(|x| a_rm[(x % m) * k + x / m]).collect() // [k, m]
            } else {
                a_rm.clone()
            };
            let b_st: Vec<f32> = if tb {
                (0..n * k).map(|x| b_rm[(x % k) * n + x / k]).collect() // [n, k]
            } else {
                b_rm.clone()
            };
            let g = lt_gemm(&gemm(m, n, k, ta, tb)).unwrap();
            // Column-major element (r, c) of a stored matrix with leading dim ld.
            let at = |buf: &[f32], mat: &LtMatrix, r: u64, c: u64| -> f32 {
                assert!(r < mat.rows && c < mat.cols);
                buf[(c as i64 * mat.ld + r as i64) as usize]
            };
            let mut d = vec![0f32; m * n];
            for r in 0..g.m {
                for c in 0..g.n {
                    let mut s = 0f32;
                    for p in 0..g.k {
                        // op(A_lt)[r, p], A_lt = our B.
                        let av = if g.trans_a {
                            at(&b_st, &g.a, p, r)
                        } else {
                            at(&b_st, &g.a, r, p)
                        };
                        // op(B_lt)[p, c], B_lt = our A.
                        let bv = if g.trans_b {
                            at(&a_st, &g.b, c, p)
                        } else {
                            at(&a_st, &g.b, p, c)
                        };
                        s += av * bv;
                    }
                    d[(c as i64 * g.d.ld + r as i64) as usize] = s;
                }
            }
            assert_eq!(d, want, "trans_a {ta}, trans_b {tb}");
        }
    }

    #[test]
    fn batched_strides_follow_their_operands() {
        let g = lt_gemm(&RowMajorGemm {
            m: 5,
            n: 7,
            k: 3,
            batch: 12,
            trans_a: false,
            trans_b: true,
            stride_a: 15,
            stride_b: 0,
            stride_y: 35,
        })
        .unwrap();
        assert_eq!((g.m, g.n, g.k, g.batch), (7, 5, 3, 12));
        assert!(g.trans_a && !g.trans_b);
        assert_eq!(
            g.a,
            LtMatrix {
                rows: 3,
                cols: 7,
                ld: 3,
                batch_stride: 0
            }
        );
        assert_eq!(
            g.b,
            LtMatrix {
                rows: 3,
                cols: 5,
                ld: 3,
                batch_stride: 15
            }
        );
        assert_eq!(
            g.d,
            LtMatrix {
                rows: 7,
                cols: 5,
                ld: 7,
                batch_stride: 35
            }
        );
        assert!(lt_gemm(&gemm(0, 1, 1, false, false)).is_err());
    }

    #[test]
    fn int8_is_the_tn_layout() {
        let g = lt_gemm_int8(3, 8, 16).unwrap();
        // cuBLASLt A = W stored [n, k] row-major = [k, n] column-major, transposed.
        assert!(g.trans_a);
        assert!(!g.trans_b);
        assert_eq!(
            g.a,
            LtMatrix {
                rows: 16,
                cols: 8,
                ld: 16,
                batch_stride: 0
            }
        );
        assert_eq!(
            g.b,
            LtMatrix {
                rows: 16,
                cols: 3,
                ld: 16,
                batch_stride: 0
            }
        );
        assert_eq!(
            g.d,
            LtMatrix {
                rows: 8,
                cols: 3,
                ld: 8,
                batch_stride: 0
            }
        );
        assert!(int8_lt_eligible(8, 16, &[0x100, 0x204]));
        assert!(!int8_lt_eligible(6, 16, &[0x100]));
        assert!(!int8_lt_eligible(8, 18, &[0x100]));
        assert!(!int8_lt_eligible(8, 16, &[0x102]));
    }

    #[test]
    fn alignment_is_that_of_every_batch() {
        assert_eq!(alignment(0x7f00_0000_0000, 0, 4, 1), 256);
        assert_eq!(alignment(0x7f00_0000_0100 + 16, 0, 4, 1), 16);
        // Batches 6 floats (24 bytes) apart: only 8-byte aligned.
        assert_eq!(alignment(0x7f00_0000_0000, 6, 4, 3), 8);
        // A single batch ignores the stride.
        assert_eq!(alignment(0x7f00_0000_0000, 6, 4, 1), 256);
        assert_eq!(alignment(0x7f00_0000_0002, 64, 2, 4), 2);
        assert_eq!(alignment(0, 0, 4, 1), 256);
    }

    #[test]
    fn data_types_cover_the_matmul_elements() {
        assert_eq!(data_type(Elem::F16).unwrap(), sys::cudaDataType::CUDA_R_16F);
        assert_eq!(data_type(Elem::I8).unwrap(), sys::cudaDataType::CUDA_R_8I);
        assert!(data_type(Elem::Bool).is_err());
    }
}
