// GEMM epilogue: y[r, c] = act(x[r, c] + bias[c]) over a row-major [rows, cols] matrix, for
// what cuBLASLt does not fuse (exact GELU, sigmoid, tanh). `y` may be `x` (in place). `bias`
// may be null (activation only). The activations are program_cpu's (common.cuh). One thread
// per element, grid-stride. Launch: any grid, blockDim a multiple of 32.
#include "common.cuh"

template <int ACT, typename T>
__device__ void bias_act(T* y, const T* x, const T* bias, long long rows, long long cols) {
    const long long n = rows * cols;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float v = load_f(x, i);
        if (bias) v += load_f(bias, i % cols);
        store_f(y, i, sy_activate(ACT, v));
    }
}

#define BIAS_ACT(NAME, ACT, T)                                                                 \
    extern "C" __global__ void NAME(T* y, const T* x, const T* bias, long long rows,           \
                                    long long cols) {                                          \
        bias_act<ACT, T>(y, x, bias, rows, cols);                                              \
    }

BIAS_ACT(bias_f32, SY_ACT_NONE, float)
BIAS_ACT(bias_relu_f32, SY_ACT_RELU, float)
BIAS_ACT(bias_gelu_f32, SY_ACT_GELU, float)
BIAS_ACT(bias_sigmoid_f32, SY_ACT_SIGMOID, float)
BIAS_ACT(bias_tanh_f32, SY_ACT_TANH, float)
BIAS_ACT(bias_f16, SY_ACT_NONE, f16_t)
BIAS_ACT(bias_relu_f16, SY_ACT_RELU, f16_t)
BIAS_ACT(bias_gelu_f16, SY_ACT_GELU, f16_t)
BIAS_ACT(bias_sigmoid_f16, SY_ACT_SIGMOID, f16_t)
BIAS_ACT(bias_tanh_f16, SY_ACT_TANH, f16_t)
