// GEMM epilogue: y[r, c] = act(x[r, c] + bias[c]) over a row-major [rows, cols] matrix, for
// what cuBLASLt does not fuse. `y` may be `x` (in place). `bias` may be null (activation
// only). One thread per element, grid-stride. Launch: any grid, blockDim a multiple of 32.
#include "common.cuh"

struct Identity { __device__ static float apply(float v) { return v; } };
struct Relu { __device__ static float apply(float v) { return fmaxf(v, 0.0f); } };
// GELU as ONNX defines it (approximate = "none"): 0.5 x (1 + erf(x / sqrt 2)).
struct GeluErf { __device__ static float apply(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); } };
struct Sigmoid { __device__ static float apply(float v) { return 1.0f / (1.0f + expf(-v)); } };

template <typename Act, typename T>
__device__ void bias_act(T* y, const T* x, const T* bias, long long rows, long long cols) {
    const long long n = rows * cols;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float v = load_f(x, i);
        if (bias) v += load_f(bias, i % cols);
        store_f(y, i, Act::apply(v));
    }
}

#define BIAS_ACT(NAME, ACT, T)                                                                 \
    extern "C" __global__ void NAME(T* y, const T* x, const T* bias, long long rows,           \
                                    long long cols) {                                          \
        bias_act<ACT, T>(y, x, bias, rows, cols);                                              \
    }

BIAS_ACT(bias_f32, Identity, float)
BIAS_ACT(bias_relu_f32, Relu, float)
BIAS_ACT(bias_gelu_f32, GeluErf, float)
BIAS_ACT(bias_sigmoid_f32, Sigmoid, float)
BIAS_ACT(bias_f16, Identity, f16_t)
BIAS_ACT(bias_relu_f16, Relu, f16_t)
BIAS_ACT(bias_gelu_f16, GeluErf, f16_t)
BIAS_ACT(bias_sigmoid_f16, Sigmoid, f16_t)
