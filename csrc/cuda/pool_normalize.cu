// Masked mean pooling + L2 normalization in one pass over the hidden states.
//
//   hidden [batch, seq, dim] float16, row-major, contiguous
//   mask   [batch, seq]      int64 (nonzero = real token)
//   out    [batch, dim]      float32: the pooled vector divided by max(||pooled||, 1e-12)
//   pooled [batch, dim]      float32, optional (may be null): the pooled vector before normalization
//
// One block per sentence. Each thread owns a fixed set of feature columns (two at a time through
// half2 when dim is even) and a stride of positions, skips masked positions, and accumulates in
// float32: the sum of 512 float16 values and the sum of squares overflow or lose precision in
// float16. Partial sums meet in shared memory, where the row stays until its norm is reduced.
//
// Built into a small shared library by nvcc at run time (fastemb/backends/kernels.py) and called
// through ctypes with the caller's CUDA stream, so it runs inside torch's CUDA graphs. It is not
// part of the CPU extension (setup.py), which must build on machines without nvcc.

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

namespace {

constexpr int kMaxThreads = 1024;
constexpr int kMaxDim = 12288;  // dim floats of shared memory must fit in the default 48 KiB

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum of v over the block; every thread gets the result.
__device__ float block_sum(float v, float* scratch /* 32 floats */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < warps) ? scratch[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    const float total = scratch[0];
    __syncthreads();  // scratch is reused by the next call: every thread must have read it first
    return total;
}

__global__ void __launch_bounds__(kMaxThreads) pool_normalize_f16(const __half* __restrict__ hidden, const int64_t* __restrict__ mask,
                                   float* __restrict__ out, float* __restrict__ pooled_out,
                                   int seq, int dim, int groups, float eps) {
    extern __shared__ float partial[];  // [groups][dim]; row 0 ends up holding the pooled vector
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    const __half* h = hidden + static_cast<int64_t>(row) * seq * dim;
    const int64_t* m = mask + static_cast<int64_t>(row) * seq;
    // Threads form `groups` groups of `cols`; group g sums positions g, g + groups, ... so that a
    // short batch row still has enough loads in flight to keep the memory system busy.
    const int cols = blockDim.x / groups;
    const int g = threadIdx.x / cols, c0 = threadIdx.x % cols;
    float* part = partial + static_cast<int64_t>(g) * dim;
    if (g < groups) {
        if ((dim & 1) == 0) {
            const int dim2 = dim >> 1;
            const __half2* h2 = reinterpret_cast<const __half2*>(h);
            for (int c = c0; c < dim2; c += cols) {
                float ax = 0.0f, ay = 0.0f;
                for (int s = g; s < seq; s += groups) {
                    if (m[s] == 0) continue;
                    const float2 f = __half22float2(h2[static_cast<int64_t>(s) * dim2 + c]);
                    ax += f.x;
                    ay += f.y;
                }
                part[2 * c] = ax;
                part[2 * c + 1] = ay;
            }
        } else {
            for (int c = c0; c < dim; c += cols) {
                float a = 0.0f;
                for (int s = g; s < seq; s += groups)
                    if (m[s] != 0) a += __half2float(h[static_cast<int64_t>(s) * dim + c]);
                part[c] = a;
            }
        }
    }
    float n = 0.0f;
    for (int s = threadIdx.x; s < seq; s += blockDim.x) n += (m[s] != 0) ? 1.0f : 0.0f;
    const float count = block_sum(n, scratch);  // also the barrier after the partial sums

    // An all-masked row pools to zeros (as the ONNX graph: sum / max(count, 1e-9)).
    const float inv = 1.0f / fmaxf(count, 1e-9f);
    float sq = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float v = 0.0f;
        for (int k = 0; k < groups; ++k) v += partial[static_cast<int64_t>(k) * dim + c];
        v *= inv;
        partial[c] = v;  // only this thread reads or writes column c in this loop
        sq += v * v;
    }
    const float norm = sqrtf(block_sum(sq, scratch));
    const float scale = 1.0f / fmaxf(norm, eps);
    float* o = out + static_cast<int64_t>(row) * dim;
    float* p = pooled_out ? pooled_out + static_cast<int64_t>(row) * dim : nullptr;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        o[c] = partial[c] * scale;
        if (p) p[c] = partial[c];
    }
}

int fail(char* err, int errlen, const char* what) {
    if (err && errlen > 0) snprintf(err, static_cast<size_t>(errlen), "%s", what);
    return 1;
}

}  // namespace

// Returns 0 on success; otherwise writes a message naming the offending numbers to err.
// Everything is checked before the launch: the kernel itself trusts its arguments.
extern "C" int fastemb_pool_normalize_f16(const void* hidden, const int64_t* mask, float* out, float* pooled,
                                          int64_t batch, int64_t seq, int64_t dim, void* stream,
                                          char* err, int errlen) {
    char msg[256];
    if (batch < 0 || seq < 1 || dim < 1) {
        snprintf(msg, sizeof msg, "pool_normalize: bad shape batch=%lld seq=%lld dim=%lld (need batch >= 0, seq >= 1, dim >= 1)",
                 static_cast<long long>(batch), static_cast<long long>(seq), static_cast<long long>(dim));
        return fail(err, errlen, msg);
    }
    if (dim > kMaxDim || seq > (1LL << 30) || batch > 0x7fffffffLL) {
        snprintf(msg, sizeof msg, "pool_normalize: shape batch=%lld seq=%lld dim=%lld is too large (dim <= %d)",
                 static_cast<long long>(batch), static_cast<long long>(seq), static_cast<long long>(dim), kMaxDim);
        return fail(err, errlen, msg);
    }
    if (batch == 0) return 0;
    if (!hidden || !mask || !out) return fail(err, errlen, "pool_normalize: null hidden, mask or out pointer");
    if ((dim % 2 == 0) && (reinterpret_cast<uintptr_t>(hidden) % 4 != 0))
        return fail(err, errlen, "pool_normalize: hidden is not 4-byte aligned (needed for half2 loads)");
    int cols = static_cast<int>(((dim % 2 == 0 ? dim / 2 : dim) + 31) / 32 * 32);
    cols = cols > kMaxThreads ? kMaxThreads : cols;
    int64_t groups = kMaxThreads / cols;
    groups = groups > 8 ? 8 : groups;
    groups = groups > seq ? seq : groups;
    groups = groups > kMaxDim / dim ? kMaxDim / dim : groups;
    groups = groups < 1 ? 1 : groups;
    const int threads = cols * static_cast<int>(groups);
    const size_t shared = static_cast<size_t>(groups * dim) * sizeof(float);
    pool_normalize_f16<<<static_cast<unsigned>(batch), threads, shared, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const __half*>(hidden), mask, out, pooled, static_cast<int>(seq), static_cast<int>(dim),
        static_cast<int>(groups), 1e-12f);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        snprintf(msg, sizeof msg, "pool_normalize: launch failed: %s", cudaGetErrorString(e));
        return fail(err, errlen, msg);
    }
    return 0;
}
