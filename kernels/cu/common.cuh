// Shared helpers of Switchyard's kernels. NVRTC gets no CUDA headers here, so FP16 is stored
// as its raw 16 bits and converted with the same PTX instructions cuda_fp16.h uses;
// arithmetic is always done in float.
#ifndef SWITCHYARD_COMMON_CUH
#define SWITCHYARD_COMMON_CUH

// -infinity without math.h (NVRTC has no system headers).
#define SY_NEG_INF __int_as_float(0xff800000)

typedef unsigned short f16_t;

__device__ __forceinline__ float f16_to_f32(f16_t h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ f16_t f32_to_f16(float f) {
    f16_t h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float load_f(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load_f(const f16_t* p, long long i) { return f16_to_f32(p[i]); }
__device__ __forceinline__ void store_f(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f(f16_t* p, long long i, float v) { p[i] = f32_to_f16(v); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024), returned to every
// thread. `scratch` holds 32 floats of shared memory; the call ends with a barrier so it can
// be reused at once.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    v = warp_sum(v);
    __syncthreads();
    return v;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : SY_NEG_INF;
    v = warp_max(v);
    __syncthreads();
    return v;
}

// Element-type codes of `program::Elem::code` (F32=0, F16=1, I8=2, I32=3, I64=4, Bool=5).
#define SY_ELEM_F32 0
#define SY_ELEM_F16 1
#define SY_ELEM_I8 2
#define SY_ELEM_I32 3
#define SY_ELEM_I64 4
#define SY_ELEM_BOOL 5

// Element `i` of a buffer of element type `code`, as a double (exact for every type; Bool is
// 0 or 1 whatever byte is stored). The code is uniform across a launch, so the switch does
// not diverge.
__device__ __forceinline__ double sy_load(const void* p, int code, long long i) {
    switch (code) {
        case SY_ELEM_F32: return (double)((const float*)p)[i];
        case SY_ELEM_F16: return (double)f16_to_f32(((const f16_t*)p)[i]);
        case SY_ELEM_I8: return (double)((const signed char*)p)[i];
        case SY_ELEM_I32: return (double)((const int*)p)[i];
        case SY_ELEM_I64: return (double)((const long long*)p)[i];
        default: return ((const unsigned char*)p)[i] != 0 ? 1.0 : 0.0;
    }
}

// Stores `v` as element `i` of a buffer of element type `code`, as `program_cpu::store`:
// F32 rounds to nearest, F16 goes through f32 then cvt.rn (nearest even), integers truncate
// toward zero (I8 clamped to [-128, 127]; NaN gives 0), Bool is `v != 0`.
__device__ __forceinline__ void sy_store(void* p, int code, long long i, double v) {
    switch (code) {
        case SY_ELEM_F32: ((float*)p)[i] = (float)v; break;
        case SY_ELEM_F16: ((f16_t*)p)[i] = f32_to_f16((float)v); break;
        case SY_ELEM_I8: {
            const double t = trunc(v);
            ((signed char*)p)[i] = (signed char)(t != t ? 0.0 : fmin(fmax(t, -128.0), 127.0));
            break;
        }
        case SY_ELEM_I32: ((int*)p)[i] = (int)v; break;  // cvt.rzi: truncates, saturates, NaN -> 0
        case SY_ELEM_I64: ((long long*)p)[i] = (long long)v; break;
        default: ((unsigned char*)p)[i] = v != 0.0 ? 1 : 0; break;
    }
}

// Whether the element type `code` is a float (F32 or F16).
__device__ __forceinline__ bool sy_is_float(int code) {
    return code == SY_ELEM_F32 || code == SY_ELEM_F16;
}

// The activations of `program::Act` exactly as program_cpu computes them, in f32.
// Sigmoid in its overflow-free form.
__device__ __forceinline__ float sy_sigmoid(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    const float e = expf(x);
    return e / (1.0f + e);
}

// Exact GELU (ONNX approximate = "none"): 0.5 x (1 + erf(x / sqrt 2)), erf in double.
__device__ __forceinline__ float sy_gelu(float x) {
    return 0.5f * x * (1.0f + (float)erf((double)(x / 1.41421356237309505f)));
}

// Activation codes of `program::Act`: None=0, Relu=1, Sigmoid=2, Tanh=3, Gelu=4.
#define SY_ACT_NONE 0
#define SY_ACT_RELU 1
#define SY_ACT_SIGMOID 2
#define SY_ACT_TANH 3
#define SY_ACT_GELU 4

__device__ __forceinline__ float sy_activate(int act, float x) {
    switch (act) {
        case SY_ACT_RELU: return fmaxf(x, 0.0f);
        case SY_ACT_SIGMOID: return sy_sigmoid(x);
        case SY_ACT_TANH: return tanhf(x);
        case SY_ACT_GELU: return sy_gelu(x);
        default: return x;
    }
}

#endif  // SWITCHYARD_COMMON_CUH
