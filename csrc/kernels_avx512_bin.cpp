// Binary scan with AVX-512 VPOPCNTDQ: one 64-byte row holds 32 sign bits of 16 vectors; per query
// and row: xor with the query's broadcast word, vpopcntd, add. The mismatch count h estimates
// the angle between the centered query and vector (codec.h), reported as
//   s = t * g + (|q_perp| / dim) * m * (dim - 2 h).
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq")
#include "scan_driver.h"

namespace {

struct Bin {
    using Elem = uint32_t;
    using Packed = uint32_t;
    static constexpr int kG = 32;
    static constexpr int kM = 12;

    static void pack(const fastemb::ScanArgs& a, int64_t q0, int m, int64_t steps, uint32_t* out) {
        const uint32_t* q = static_cast<const uint32_t*>(a.queries);  // [nq, dp / 32] words
        for (int64_t s = 0; s < steps; ++s)
            for (int i = 0; i < m; ++i) out[s * m + i] = q[(q0 + i) * steps + s];
    }

    template <int M, int P>
    static void micro(const fastemb::ScanArgs& a, const uint32_t* qp, int64_t q0, const uint32_t* x, int64_t p) {
        const int64_t steps = a.dp / 32;
        const int64_t pstride = steps * fastemb::kLanes;
        __m512i acc[M][P];
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
            for (int k = 0; k < P; ++k) acc[i][k] = _mm512_setzero_si512();
        for (int64_t s = 0; s < steps; ++s) {
            __m512i xv[P];
#pragma GCC unroll 4
            for (int k = 0; k < P; ++k) xv[k] = _mm512_load_si512(x + k * pstride + s * fastemb::kLanes);
#pragma GCC unroll 16
            for (int i = 0; i < M; ++i) {
                const __m512i b = _mm512_set1_epi32(static_cast<int>(qp[s * M + i]));
#pragma GCC unroll 4
                for (int k = 0; k < P; ++k)
                    acc[i][k] = _mm512_add_epi32(acc[i][k], _mm512_popcnt_epi32(_mm512_xor_si512(b, xv[k])));
            }
        }
        alignas(64) int32_t out[M][P][fastemb::kLanes];
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
            for (int k = 0; k < P; ++k) _mm512_store_si512(out[i][k], acc[i][k]);
        const __m512i dim = _mm512_set1_epi32(static_cast<int>(a.dim));
        for (int k = 0; k < P; ++k) {
            const __mmask16 ok = allowed(a, p + k);
            const float* mp = a.meta + (p + k) * fastemb::meta::kBin * fastemb::kLanes;
            const __m512 g = _mm512_load_ps(mp), mag = _mm512_load_ps(mp + 16);
            for (int i = 0; i < M; ++i) {
                const __m512i h = _mm512_load_si512(out[i][k]);
                const __m512 agree = _mm512_cvtepi32_ps(_mm512_sub_epi32(dim, _mm512_add_epi32(h, h)));
                const __m512 scaled = _mm512_mul_ps(_mm512_mul_ps(mag, _mm512_set1_ps(a.qt.qscale[q0 + i])), agree);
                const __m512 s = _mm512_fmadd_ps(_mm512_set1_ps(a.qt.t[q0 + i]), g, scaled);
                emit(s, a.heaps[q0 + i], (p + k) * fastemb::kLanes, a.n, ok);
            }
        }
    }
};

void scan_bin(const fastemb::ScanArgs& a) { scan<Bin>(a); }

}  // namespace

#pragma GCC pop_options

namespace fastemb {

ScanFn avx512_bin_scan() {
    __builtin_cpu_init();
    const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512vpopcntdq");
    return ok ? scan_bin : nullptr;
}

}  // namespace fastemb

#else  // not x86: only the portable kernels exist

namespace fastemb {

ScanFn avx512_bin_scan() { return nullptr; }

}  // namespace fastemb

#endif
