// bfloat16 scan with AVX-512 BF16: vdpbf16ps adds the products of two bf16 pairs into each
// float32 lane, 32 multiply-adds per instruction (inputs and products flush denormals to zero:
// codec.cpp keeps denormals out of the codes and bounds the products' underflow).
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")
#include "scan_driver.h"

namespace {

struct BF16 {
    using Elem = uint16_t;
    using Packed = uint32_t;
    static constexpr int kG = 2;
    static constexpr int kM = 12;

    static void pack(const fastemb::ScanArgs& a, int64_t q0, int m, int64_t steps, uint32_t* out) {
        const uint16_t* q = static_cast<const uint16_t*>(a.queries);
        for (int64_t s = 0; s < steps; ++s)
            for (int i = 0; i < m; ++i) {
                const uint16_t* b = q + (q0 + i) * a.dp + 2 * s;
                out[s * m + i] = static_cast<uint32_t>(b[0]) | (static_cast<uint32_t>(b[1]) << 16);
            }
    }

    template <int M, int P>
    static void micro(const fastemb::ScanArgs& a, const uint32_t* qp, int64_t q0, const uint16_t* x, int64_t p) {
        const int64_t pstride = a.dp * fastemb::kLanes;
        const int64_t steps = a.dp / 2;
        __m512 acc[M][P];
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
            for (int k = 0; k < P; ++k) acc[i][k] = _mm512_setzero_ps();
        for (int64_t s = 0; s < steps; ++s) {
            __m512bh xv[P];
#pragma GCC unroll 4
            for (int k = 0; k < P; ++k) xv[k] = (__m512bh)_mm512_load_si512(x + k * pstride + s * 32);
#pragma GCC unroll 16
            for (int i = 0; i < M; ++i) {
                const __m512bh b = (__m512bh)_mm512_set1_epi32(static_cast<int>(qp[s * M + i]));
#pragma GCC unroll 4
                for (int k = 0; k < P; ++k) acc[i][k] = _mm512_dpbf16_ps(acc[i][k], b, xv[k]);
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
            const float* mp = a.meta + (p + k) * fastemb::meta::kBF16 * fastemb::kLanes;
            for (int i = 0; i < M; ++i) {
                const __m512 u = centered_bound(a, q0 + i, _mm512_load_ps(out[i][k]), mp, mp + 16, mp + 32, mp + 48);
                emit(u, a.heaps[q0 + i], (p + k) * fastemb::kLanes, a.n, ok);
            }
        }
    }
};

void scan_bf16(const fastemb::ScanArgs& a) { scan<BF16>(a); }

}  // namespace

#pragma GCC pop_options

namespace fastemb {

ScanFn avx512_bf16_scan() {
    __builtin_cpu_init();
    const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512bf16");
    return ok ? scan_bf16 : nullptr;
}

}  // namespace fastemb

#else  // not x86: only the portable kernels exist

namespace fastemb {

ScanFn avx512_bf16_scan() { return nullptr; }

}  // namespace fastemb

#endif
