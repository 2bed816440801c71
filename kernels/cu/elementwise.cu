// The generic elementwise kernel of `Step::Elementwise`: `out[i] = op(ins[..][i])` over a shape
// of rank <= SY_MAX_RANK, each operand a strided view (`program::View`) of any element type.
// Semantics exactly as `program_cpu::ew`: float maths in f32 when every operand (for Where:
// both values) is F32/F16, else in f64; the result is stored as `program_cpu::store` does.
// One thread per output element, grid-stride. Launch: any grid, blockDim 256.
#include "common.cuh"

#define SY_MAX_RANK 6

// Op codes: `program::EwOp` in declaration order.
#define SY_OP_COPY 0
#define SY_OP_RELU 1
#define SY_OP_SIGMOID 2
#define SY_OP_TANH 3
#define SY_OP_ERF 4
#define SY_OP_SQRT 5
#define SY_OP_NEG 6
#define SY_OP_EXP 7
#define SY_OP_GELU 8
#define SY_OP_ADD 9
#define SY_OP_SUB 10
#define SY_OP_MUL 11
#define SY_OP_DIV 12
#define SY_OP_POW 13
#define SY_OP_EQUAL 14
#define SY_OP_WHERE 15
#define SY_OP_MAX 16
#define SY_OP_MIN 17

// One operand: element (i_0, .., i_r) is ptr[offset + sum i_d * strides[d]]. Mirrors
// `gpu::launch::EwOperand` (#[repr(C)]); 72 bytes.
struct EwOperand {
    unsigned long long ptr;
    long long offset;
    long long strides[SY_MAX_RANK];
    int elem;
    int pad;
};

// Mirrors `gpu::launch::EwParams` (#[repr(C)]); passed by value (360 bytes of parameters).
struct EwParams {
    EwOperand in[3];
    EwOperand out;
    long long shape[SY_MAX_RANK];
    long long n;
    int rank;
    int op;
    int nin;
    int float_math;
};

__device__ __forceinline__ float ew_f32(int op, float a, float b, float c, double cond) {
    switch (op) {
        case SY_OP_COPY: return a;
        case SY_OP_RELU: return fmaxf(a, 0.0f);
        case SY_OP_SIGMOID: return sy_sigmoid(a);
        case SY_OP_TANH: return tanhf(a);
        case SY_OP_ERF: return (float)erf((double)a);
        case SY_OP_SQRT: return sqrtf(a);
        case SY_OP_NEG: return -a;
        case SY_OP_EXP: return expf(a);
        case SY_OP_GELU: return sy_gelu(a);
        case SY_OP_ADD: return a + b;
        case SY_OP_SUB: return a - b;
        case SY_OP_MUL: return a * b;
        case SY_OP_DIV: return a / b;
        case SY_OP_POW: return powf(a, b);
        case SY_OP_EQUAL: return a == b ? 1.0f : 0.0f;
        case SY_OP_MAX: return fmaxf(a, b);
        case SY_OP_MIN: return fminf(a, b);
        default: return cond != 0.0 ? b : c;  // Where(cond, x, y): values are ins[1], ins[2]
    }
}

__device__ __forceinline__ double ew_f64(int op, double a, double b, double c) {
    switch (op) {
        case SY_OP_COPY: return a;
        case SY_OP_RELU: return fmax(a, 0.0);
        case SY_OP_SIGMOID: return (double)sy_sigmoid((float)a);
        case SY_OP_TANH: return tanh(a);
        case SY_OP_ERF: return erf(a);
        case SY_OP_SQRT: return sqrt(a);
        case SY_OP_NEG: return -a;
        case SY_OP_EXP: return exp(a);
        case SY_OP_GELU: return (double)sy_gelu((float)a);
        case SY_OP_ADD: return a + b;
        case SY_OP_SUB: return a - b;
        case SY_OP_MUL: return a * b;
        case SY_OP_DIV: return trunc(a / b);  // integer division truncates, as ONNX Div
        case SY_OP_POW: return pow(a, b);
        case SY_OP_EQUAL: return a == b ? 1.0 : 0.0;
        case SY_OP_MAX: return fmax(a, b);
        case SY_OP_MIN: return fmin(a, b);
        default: return a != 0.0 ? b : c;
    }
}

__device__ __forceinline__ long long ew_offset(const EwOperand& v, const long long* idx, int rank) {
    long long o = v.offset;
    for (int d = 0; d < rank; ++d) o += idx[d] * v.strides[d];
    return o;
}

extern "C" __global__ void elementwise(const EwParams p) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        // Multi-index of output element i, last dim fastest.
        long long idx[SY_MAX_RANK];
        long long rest = i;
        for (int d = p.rank - 1; d >= 0; --d) {
            idx[d] = rest % p.shape[d];
            rest /= p.shape[d];
        }
        double x[3] = {0.0, 0.0, 0.0};
        for (int k = 0; k < p.nin; ++k) {
            const EwOperand& v = p.in[k];
            x[k] = sy_load((const void*)v.ptr, v.elem, ew_offset(v, idx, p.rank));
        }
        double r;
        if (p.float_math) {
            r = (double)ew_f32(p.op, (float)x[0], (float)x[1], (float)x[2], x[0]);
        } else {
            r = ew_f64(p.op, x[0], x[1], x[2]);
        }
        sy_store((void*)p.out.ptr, p.out.elem, ew_offset(p.out, idx, p.rank), r);
    }
}
