// Row-wise softmax over the last axis of a row-major [rows, cols] matrix, numerically stable
// (the row maximum is subtracted before exp). One block per row: gridDim.x = rows, blockDim.x
// a multiple of 32 up to 1024. Computed in float for FP16 too. `y` may be `x`.
#include "common.cuh"

template <typename T>
__device__ void softmax_rows(T* y, const T* x, long long cols) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * cols;
    float m = SY_NEG_INF;
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, load_f(x, base + c));
    m = block_max(m, scratch);
    float s = 0.0f;
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) s += expf(load_f(x, base + c) - m);
    s = block_sum(s, scratch);
    for (long long c = threadIdx.x; c < cols; c += blockDim.x)
        store_f(y, base + c, expf(load_f(x, base + c) - m) / s);
}

extern "C" __global__ void softmax_f32(float* y, const float* x, long long cols) {
    softmax_rows<float>(y, x, cols);
}

extern "C" __global__ void softmax_f16(f16_t* y, const f16_t* x, long long cols) {
    softmax_rows<f16_t>(y, x, cols);
}
