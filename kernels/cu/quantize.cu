// INT8 with one per-tensor scale and zero point 0, as ONNX QuantizeLinear/DequantizeLinear:
//   q = saturate(round_half_even(x / scale)) in [-128, 127],   x' = q * scale.
// One thread per element, grid-stride. Launch: any grid, blockDim a multiple of 32.
#include "common.cuh"

template <typename T>
__device__ void quantize(signed char* q, const T* x, long long n, float scale) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float v = rintf(load_f(x, i) / scale);
        q[i] = (signed char)fminf(fmaxf(v, -128.0f), 127.0f);
    }
}

template <typename T>
__device__ void dequantize(T* x, const signed char* q, long long n, float scale) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        store_f(x, i, (float)q[i] * scale);
}

extern "C" __global__ void quantize_f32(signed char* q, const float* x, long long n, float scale) {
    quantize<float>(q, x, n, scale);
}
extern "C" __global__ void quantize_f16(signed char* q, const f16_t* x, long long n, float scale) {
    quantize<f16_t>(q, x, n, scale);
}
extern "C" __global__ void dequantize_f32(float* x, const signed char* q, long long n, float scale) {
    dequantize<float>(x, q, n, scale);
}
extern "C" __global__ void dequantize_f16(f16_t* x, const signed char* q, long long n, float scale) {
    dequantize<f16_t>(x, q, n, scale);
}

// ---- Symmetric INT8 GEMM of `Step::GemmInt8` (the contract of server/engine/quant.rs) ----

// q[i] = clamp(round_half_away(x[i] / scale), -127, 127): roundf rounds half away from zero
// as Rust's f32::round; the division is IEEE (no fast maths). One thread per element,
// grid-stride. Launch: any grid, blockDim 256.
template <typename T>
__device__ void quantize_sym(signed char* q, const T* x, long long n, float scale) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float v = roundf(load_f(x, i) / scale);
        // NaN quantises to 0, as program_cpu (`NaN as i32`).
        q[i] = v != v ? (signed char)0 : (signed char)fminf(fmaxf(v, -127.0f), 127.0f);
    }
}

extern "C" __global__ void quantize_sym_f32(signed char* q, const float* x, long long n,
                                            float scale) {
    quantize_sym<float>(q, x, n, scale);
}
extern "C" __global__ void quantize_sym_f16(signed char* q, const f16_t* x, long long n,
                                            float scale) {
    quantize_sym<f16_t>(q, x, n, scale);
}

// y[i, j] = act(acc[i, j] * d[j] + bias[j]) with d[j] = (alpha * a_scale) * w_scales[j] in
// f32, over row-major [m, n]; `bias` may be null; act codes as `program::Act`. Products and
// sum rounded separately (no FMA), as program_cpu. One thread per element, grid-stride.
// Launch: any grid, blockDim 256.
template <typename T>
__device__ void dequant_bias_act(T* y, const int* acc, const float* w_scales, const float* bias,
                                 long long m, long long n, float alpha_a_scale, int act) {
    const long long total = m * n;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const long long j = i % n;
        const float d = __fmul_rn(alpha_a_scale, w_scales[j]);
        float v = __fmul_rn((float)acc[i], d);
        if (bias) v = __fadd_rn(v, bias[j]);
        store_f(y, i, sy_activate(act, v));
    }
}

extern "C" __global__ void dequant_bias_act_f32(float* y, const int* acc, const float* w_scales,
                                                const float* bias, long long m, long long n,
                                                float alpha_a_scale, int act) {
    dequant_bias_act<float>(y, acc, w_scales, bias, m, n, alpha_a_scale, act);
}
extern "C" __global__ void dequant_bias_act_f16(f16_t* y, const int* acc, const float* w_scales,
                                                const float* bias, long long m, long long n,
                                                float alpha_a_scale, int act) {
    dequant_bias_act<f16_t>(y, acc, w_scales, bias, m, n, alpha_a_scale, act);
}

// acc[i, j] = sum over p of aq[i, p] * w[j, p] in i32: aq I8 [m, k], w I8 [n, k] (TN), acc
// I32 [m, n] row-major. The exact fallback for shapes cuBLASLt's INT8 kernels refuse (k or n
// not a multiple of 4, or no algorithm). One thread per output element, grid-stride.
// Launch: any grid, blockDim 256.
extern "C" __global__ void gemm_i8_i32(int* acc, const signed char* aq, const signed char* w,
                                       long long m, long long n, long long k) {
    const long long total = m * n;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += stride) {
        const long long i = t / n, j = t % n;
        int s = 0;
        for (long long p = 0; p < k; ++p) s += (int)aq[i * k + p] * (int)w[j * k + p];
        acc[t] = s;
    }
}
