// float32 scan with AVX-512F: 16 vectors per register, one FMA per (query, dimension, panel).
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
#include "scan_driver.h"

namespace {

struct F32 {
    using Elem = float;
    using Packed = float;
    static constexpr int kG = 1;
    static constexpr int kM = 12;

    static void pack(const fastemb::ScanArgs& a, int64_t q0, int m, int64_t steps, float* out) {
        const float* q = static_cast<const float*>(a.queries);
        for (int64_t j = 0; j < steps; ++j)
            for (int i = 0; i < m; ++i) out[j * m + i] = q[(q0 + i) * a.dp + j];
    }

    template <int M, int P>
    static void micro(const fastemb::ScanArgs& a, const float* qp, int64_t q0, const float* x, int64_t p) {
        const int64_t pstride = a.dp * fastemb::kLanes;
        __m512 acc[M][P];
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
            for (int k = 0; k < P; ++k) acc[i][k] = _mm512_setzero_ps();
        for (int64_t j = 0; j < a.dp; ++j) {
            __m512 xv[P];
#pragma GCC unroll 4
            for (int k = 0; k < P; ++k) xv[k] = _mm512_load_ps(x + k * pstride + j * fastemb::kLanes);
#pragma GCC unroll 16
            for (int i = 0; i < M; ++i) {
                const __m512 b = _mm512_set1_ps(qp[j * M + i]);
#pragma GCC unroll 4
                for (int k = 0; k < P; ++k) acc[i][k] = _mm512_fmadd_ps(b, xv[k], acc[i][k]);
            }
        }
        // Spill the accumulators once, then test them: indexing `acc` in the (branchy) epilogue
        // makes GCC keep the whole array in memory inside the hot loop.
        alignas(64) float out[M][P][fastemb::kLanes];
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
            for (int k = 0; k < P; ++k) _mm512_store_ps(out[i][k], acc[i][k]);
        for (int k = 0; k < P; ++k) {
            const __mmask16 ok = allowed(a, p + k);
            for (int i = 0; i < M; ++i) emit(_mm512_load_ps(out[i][k]), a.heaps[q0 + i], (p + k) * fastemb::kLanes, a.n, ok);
        }
    }
};

void scan_f32(const fastemb::ScanArgs& a) { scan<F32>(a); }

// Eight rows at a time: independent FMA chains hide the latency; each chain is sequential in j
// with a fused multiply-add, exactly like one lane of the scan above.
void dots_f32(const float* q, const float* const* rows, int64_t count, int64_t d, float* out) {
    int64_t c = 0;
    for (; c + 8 <= count; c += 8) {
        float acc[8] = {};
        for (int64_t j = 0; j < d; ++j) {
            const float qj = q[j];
#pragma GCC unroll 8
            for (int r = 0; r < 8; ++r) acc[r] = __builtin_fmaf(qj, rows[c + r][j], acc[r]);
        }
        for (int r = 0; r < 8; ++r) out[c + r] = acc[r];
    }
    for (; c < count; ++c) {
        float acc = 0.0f;
        for (int64_t j = 0; j < d; ++j) acc = __builtin_fmaf(q[j], rows[c][j], acc);
        out[c] = acc;
    }
}

}  // namespace

#pragma GCC pop_options

namespace fastemb {

ScanFn avx512_f32_scan() {
    __builtin_cpu_init();
    const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("fma");
    return ok ? scan_f32 : nullptr;
}

DotsFn avx512_f32_dots() { return avx512_f32_scan() ? dots_f32 : nullptr; }

}  // namespace fastemb

#else  // not x86: only the portable kernels exist

namespace fastemb {

ScanFn avx512_f32_scan() { return nullptr; }
DotsFn avx512_f32_dots() { return nullptr; }

}  // namespace fastemb

#endif
