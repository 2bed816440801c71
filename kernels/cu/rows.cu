// Row and reduction kernels of `program::Step`: LayerNorm with an optional residual,
// ReduceMean, ArgMax, Gather. Semantics exactly as `program_cpu`.
#include "common.cuh"

// y = LayerNorm(x [+ residual]) over each row of [rows, cols] (ONNX LayerNormalization,
// axis -1): x + residual in f32, mean, biased variance of (x - mean) (two passes), then
// (x - mean) * (1 / sqrt(var + eps)) * gamma [+ beta], all f32. `residual` and `beta` may be
// null; `y` may be `x`. One block per row: gridDim.x = rows, blockDim.x a multiple of 32 up
// to 1024.
template <typename T>
__device__ void add_layer_norm_rows(T* y, const T* x, const T* residual, const T* gamma,
                                    const T* beta, long long cols, float eps) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = load_f(x, base + c);
        if (residual) v += load_f(residual, base + c);
        s += v;
    }
    const float mean = block_sum(s, scratch) / (float)cols;
    float q = 0.0f;
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = load_f(x, base + c);
        if (residual) v += load_f(residual, base + c);
        const float d = v - mean;
        q += d * d;
    }
    const float rstd = 1.0f / sqrtf(block_sum(q, scratch) / (float)cols + eps);
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = load_f(x, base + c);
        if (residual) v += load_f(residual, base + c);
        v = __fmul_rn(__fmul_rn(v - mean, rstd), load_f(gamma, c));
        if (beta) v += load_f(beta, c);
        store_f(y, base + c, v);
    }
}

extern "C" __global__ void add_layer_norm_f32(float* y, const float* x, const float* residual,
                                              const float* gamma, const float* beta,
                                              long long cols, float eps) {
    add_layer_norm_rows<float>(y, x, residual, gamma, beta, cols, eps);
}

extern "C" __global__ void add_layer_norm_f16(f16_t* y, const f16_t* x, const f16_t* residual,
                                              const f16_t* gamma, const f16_t* beta,
                                              long long cols, float eps) {
    add_layer_norm_rows<f16_t>(y, x, residual, gamma, beta, cols, eps);
}

// y[o, i] = (sum over l of x[o, l, i]) / divisor, x seen as [outer, len, inner], summed in
// f32 in order of l (as program_cpu, so the result matches to the bit); divisor is len for a
// mean, 1 for a sum. One thread per output element, grid-stride. Launch: any grid, blockDim
// 256.
template <typename T>
__device__ void reduce_rows(T* y, const T* x, long long outer, long long len, long long inner,
                            float divisor) {
    const long long n = outer * inner;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n; t += stride) {
        const long long o = t / inner, i = t % inner;
        float s = 0.0f;
        for (long long l = 0; l < len; ++l) s += load_f(x, (o * len + l) * inner + i);
        store_f(y, t, divisor == 1.0f ? s : s / divisor);
    }
}

extern "C" __global__ void reduce_f32(float* y, const float* x, long long outer, long long len,
                                      long long inner, float divisor) {
    reduce_rows<float>(y, x, outer, len, inner, divisor);
}

extern "C" __global__ void reduce_f16(f16_t* y, const f16_t* x, long long outer, long long len,
                                      long long inner, float divisor) {
    reduce_rows<f16_t>(y, x, outer, len, inner, divisor);
}

// y[o, i] (I64) = the index l of the largest x[o, l, i], x of any element type (compared as
// doubles, exact) seen as [outer, len, inner]; ties go to the first index, or with
// `select_last` to the last; a NaN never wins (as program_cpu's `v > best`). One thread per
// output element, grid-stride. Launch: any grid, blockDim 256.
extern "C" __global__ void argmax(long long* y, const void* x, int x_elem, long long outer,
                                  long long len, long long inner, int select_last) {
    const long long n = outer * inner;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n; t += stride) {
        const long long o = t / inner, i = t % inner;
        long long best = 0;
        double b = sy_load(x, x_elem, o * len * inner + i);
        for (long long l = 1; l < len; ++l) {
            const double v = sy_load(x, x_elem, (o * len + l) * inner + i);
            if (v > b || (select_last && v == b)) {
                best = l;
                b = v;
            }
        }
        y[t] = best;
    }
}

// y[o, c, r] = data[o, idx[c], r], data seen as [outer, axis_len, inner] of `elem_size`-byte
// elements (1, 2, 4 or 8: moved as raw bits, so every element type is exact). A negative
// index counts from the end; one still out of range gives zeros. One thread per output
// element, grid-stride. Launch: any grid, blockDim 256.
template <typename I>
__device__ void gather(void* y, const void* data, const I* indices, long long outer,
                       long long axis_len, long long inner, long long count, int elem_size) {
    const long long n = outer * count * inner;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n; t += stride) {
        const long long r = t % inner, c = (t / inner) % count, o = t / (inner * count);
        long long ix = (long long)indices[c];
        if (ix < 0) ix += axis_len;
        const bool ok = ix >= 0 && ix < axis_len;
        const long long src = (o * axis_len + (ok ? ix : 0)) * inner + r;
        switch (elem_size) {
            case 8: ((long long*)y)[t] = ok ? ((const long long*)data)[src] : 0; break;
            case 4: ((int*)y)[t] = ok ? ((const int*)data)[src] : 0; break;
            case 2: ((unsigned short*)y)[t] = ok ? ((const unsigned short*)data)[src] : 0; break;
            default: ((unsigned char*)y)[t] = ok ? ((const unsigned char*)data)[src] : 0; break;
        }
    }
}

extern "C" __global__ void gather_i64(void* y, const void* data, const long long* indices,
                                      long long outer, long long axis_len, long long inner,
                                      long long count, int elem_size) {
    gather<long long>(y, data, indices, outer, axis_len, inner, count, elem_size);
}

extern "C" __global__ void gather_i32(void* y, const void* data, const int* indices,
                                      long long outer, long long axis_len, long long inner,
                                      long long count, int elem_size) {
    gather<int>(y, data, indices, outer, axis_len, inner, count, elem_size);
}
