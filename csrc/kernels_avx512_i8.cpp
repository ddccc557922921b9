// int8 scan with AVX-512 VNNI. vpdpbusd multiplies unsigned by signed bytes, so queries are
// biased by +128 into u8 and the bias is removed per vector: (q + 128) . x - 128 * sum(x).
// The int32 dot is exact (|sum| <= 255 * 127 * dim < 2^31 for dim <= 65536); it is then scaled by
// the vector's and the query's quantization steps in float32 and goes through the epilogue of
// kernels.h (meta rows: scale, corr, g, r, m, n).
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")
#include "scan_driver.h"

namespace {

struct I8 {
    using Elem = int8_t;
    using Packed = uint32_t;
    static constexpr int kG = 4;
    static constexpr int kM = 12;

    static void pack(const fastemb::ScanArgs& a, int64_t q0, int m, int64_t steps, uint32_t* out) {
        const int8_t* q = static_cast<const int8_t*>(a.queries);
        for (int64_t s = 0; s < steps; ++s)
            for (int i = 0; i < m; ++i) {
                const int8_t* b = q + (q0 + i) * a.dp + 4 * s;
                uint32_t w = 0;
                for (int t = 0; t < 4; ++t) w |= static_cast<uint32_t>(static_cast<uint8_t>(b[t] + 128)) << (8 * t);
                out[s * m + i] = w;
            }
    }

    template <int M, int P>
    static void micro(const fastemb::ScanArgs& a, const uint32_t* qp, int64_t q0, const int8_t* x, int64_t p) {
        const int64_t pstride = a.dp * fastemb::kLanes;
        const int64_t steps = a.dp / 4;
        __m512i acc[M][P];
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
            for (int k = 0; k < P; ++k) acc[i][k] = _mm512_setzero_si512();
        for (int64_t s = 0; s < steps; ++s) {
            __m512i xv[P];
#pragma GCC unroll 4
            for (int k = 0; k < P; ++k) xv[k] = _mm512_load_si512(x + k * pstride + s * 64);
#pragma GCC unroll 16
            for (int i = 0; i < M; ++i) {
                const __m512i b = _mm512_set1_epi32(static_cast<int>(qp[s * M + i]));
#pragma GCC unroll 4
                for (int k = 0; k < P; ++k) acc[i][k] = _mm512_dpbusd_epi32(acc[i][k], b, xv[k]);
            }
        }
        // Spill the accumulators once, then scale and test them: indexing `acc` in the (branchy)
        // epilogue makes GCC keep the whole array in memory inside the hot loop.
        alignas(64) int32_t out[M][P][fastemb::kLanes];
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
            for (int k = 0; k < P; ++k) _mm512_store_si512(out[i][k], acc[i][k]);
        for (int k = 0; k < P; ++k) {
            const int64_t lane0 = (p + k) * fastemb::kLanes;
            const __mmask16 ok = allowed(a, p + k);
            const float* mp = a.meta + (p + k) * fastemb::meta::kI8 * fastemb::kLanes;
            const __m512 vs = _mm512_load_ps(mp);
            const __m512i corr = _mm512_load_si512(mp + 16);
            for (int i = 0; i < M; ++i) {
                const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(out[i][k]), corr));
                const __m512 s = _mm512_mul_ps(_mm512_mul_ps(dot, vs), _mm512_set1_ps(a.qt.qscale[q0 + i]));
                const __m512 u = centered_bound(a, q0 + i, s, mp + 32, mp + 48, mp + 64, mp + 80);
                emit(u, a.heaps[q0 + i], lane0, a.n, ok);
            }
        }
    }
};

void scan_i8(const fastemb::ScanArgs& a) { scan<I8>(a); }

}  // namespace

#pragma GCC pop_options

namespace fastemb {

ScanFn avx512_i8_scan() {
    __builtin_cpu_init();
    const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512vnni");
    return ok ? scan_i8 : nullptr;
}

}  // namespace fastemb

#else  // not x86: only the portable kernels exist

namespace fastemb {

ScanFn avx512_i8_scan() { return nullptr; }

}  // namespace fastemb

#endif
