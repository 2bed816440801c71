// Attention support: the scores of `Step::Attention` between its two GEMMs. `scores` is f32
// [batch * heads, sq, sk] holding q . k' (alpha 1); every row becomes
//   v = scale * v + mask[b, h, i, j]   (scaled then added, two roundings, as program_cpu)
//   p = softmax(v)                     (f32, row max subtracted, e / sum)
// The mask is an optional strided view over [batch, heads, sq, sk] of any element type
// (`program::View`; a stride 0 broadcasts). The F32 entry point writes p back into `scores`;
// the F16 one writes p rounded to half into `probs` (and the masked scores into `scores`).
// One block per row: gridDim.x = batch * heads * sq, blockDim.x a multiple of 32 up to 1024.
#include "common.cuh"

// Mirrors `gpu::launch::MaskView` (#[repr(C)]): a null `ptr` means no mask.
struct MaskView {
    unsigned long long ptr;
    long long offset;
    long long strides[4];
    int elem;
    int pad;
};

template <typename P>
__device__ void scale_mask_softmax_rows(float* scores, P* probs, const MaskView mask,
                                        long long heads, long long sq, long long sk,
                                        float scale) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    const long long b = row / sq, i = row % sq;
    const long long bi = b / heads, hi = b % heads;
    float* x = scores + row * sk;
    const long long mbase =
        mask.offset + bi * mask.strides[0] + hi * mask.strides[1] + i * mask.strides[2];
    float m = SY_NEG_INF;
    for (long long j = threadIdx.x; j < sk; j += blockDim.x) {
        float v = __fmul_rn(x[j], scale);
        if (mask.ptr)
            v = __fadd_rn(v, (float)sy_load((const void*)mask.ptr, mask.elem,
                                            mbase + j * mask.strides[3]));
        x[j] = v;
        m = fmaxf(m, v);
    }
    m = block_max(m, scratch);
    float s = 0.0f;
    for (long long j = threadIdx.x; j < sk; j += blockDim.x) s += expf(x[j] - m);
    s = block_sum(s, scratch);
    for (long long j = threadIdx.x; j < sk; j += blockDim.x) store_f(probs, row * sk + j, expf(x[j] - m) / s);
}

extern "C" __global__ void scale_mask_softmax_f32(float* scores, const MaskView mask,
                                                  long long heads, long long sq, long long sk,
                                                  float scale) {
    scale_mask_softmax_rows<float>(scores, scores, mask, heads, sq, sk, scale);
}

extern "C" __global__ void scale_mask_softmax_f16(float* scores, f16_t* probs,
                                                  const MaskView mask, long long heads,
                                                  long long sq, long long sk, float scale) {
    scale_mask_softmax_rows<f16_t>(scores, probs, mask, heads, sq, sk, scale);
}
