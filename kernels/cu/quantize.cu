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
