// Layer normalisation over the last axis of a row-major [rows, cols] matrix, as ONNX
// LayerNormalization (axis = -1): y = (x - mean) / sqrt(var + eps) * gamma + beta, with the
// biased variance. Two passes over the row (mean, then the variance of x - mean) in float.
// `beta` may be null. One block per row: gridDim.x = rows, blockDim.x a multiple of 32 up to
// 1024. `y` may be `x`.
#include "common.cuh"

template <typename T>
__device__ void layer_norm_rows(T* y, const T* x, const T* gamma, const T* beta, long long cols,
                                float eps) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) s += load_f(x, base + c);
    const float mean = block_sum(s, scratch) / (float)cols;
    float q = 0.0f;
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = load_f(x, base + c) - mean;
        q += d * d;
    }
    const float rstd = rsqrtf(block_sum(q, scratch) / (float)cols + eps);
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = (load_f(x, base + c) - mean) * rstd * load_f(gamma, c);
        if (beta) v += load_f(beta, c);
        store_f(y, base + c, v);
    }
}

extern "C" __global__ void layer_norm_f32(float* y, const float* x, const float* gamma,
                                          const float* beta, long long cols, float eps) {
    layer_norm_rows<float>(y, x, gamma, beta, cols, eps);
}

extern "C" __global__ void layer_norm_f16(f16_t* y, const f16_t* x, const f16_t* gamma,
                                          const f16_t* beta, long long cols, float eps) {
    layer_norm_rows<f16_t>(y, x, gamma, beta, cols, eps);
}
