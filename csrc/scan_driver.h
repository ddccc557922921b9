// Tiling driver shared by the AVX-512 kernels. Include it AFTER a `#pragma GCC target(...)` so
// every function here is compiled for that target; everything has internal linkage, so no
// AVX-512 code can leak into functions that the baseline code calls (no ODR merging).
//
// Loop order: database tiles of about kTileBytes (stay in L2) x groups of up to Op::kM queries
// (packed [steps, m], stay in L1) x runs of P panels (16 * P vectors): the micro-kernel keeps
// m x P accumulators in registers over the whole dimension, then compares them with each query's
// heap threshold, so the score matrix is never written to memory.
#pragma once

#include <immintrin.h>

// GCC 12 reports the intrinsics' own _mm512_undefined_*() passthrough as uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels.h"

namespace {

constexpr int64_t kTileBytes = 256 * 1024;

// Push the lanes of `s` that can enter heap `h` (lanes past `n` are padding; `allow` masks lanes
// out of a filtered search).
static inline void emit(__m512 s, fastemb::TopK& h, int64_t pos0, int64_t n, __mmask16 allow) {
    __mmask16 m = _mm512_cmp_ps_mask(s, _mm512_set1_ps(h.threshold), _CMP_GE_OQ) & allow;
    if (!m) return;
    if (pos0 + fastemb::kLanes > n) m &= static_cast<__mmask16>((1u << (n - pos0)) - 1u);
    alignas(64) float v[fastemb::kLanes];
    _mm512_store_ps(v, s);
    while (m) {
        const int l = __builtin_ctz(m);
        m &= m - 1;
        fastemb::topk_push(h, v[l], pos0 + l);
    }
}

static inline __mmask16 allowed(const fastemb::ScanArgs& a, int64_t panel) {
    return a.allow ? static_cast<__mmask16>(a.allow[panel]) : static_cast<__mmask16>(0xFFFF);
}

// The epilogue of kernels.h for query i: s = t * g + dot, then the upper bound
// u = s + A r + B m + C n + E (meta rows g, r, m, n at `mp`, 16 floats each).
static inline __m512 centered_bound(const fastemb::ScanArgs& a, int64_t i, __m512 dot, const float* g,
                                    const float* r, const float* m, const float* n) {
    const __m512 s = _mm512_fmadd_ps(_mm512_set1_ps(a.qt.t[i]), _mm512_load_ps(g), dot);
    __m512 u = _mm512_fmadd_ps(_mm512_set1_ps(a.qt.a[i]), _mm512_load_ps(r), s);
    u = _mm512_fmadd_ps(_mm512_set1_ps(a.qt.b[i]), _mm512_load_ps(m), u);
    u = _mm512_fmadd_ps(_mm512_set1_ps(a.qt.c[i]), _mm512_load_ps(n), u);
    return _mm512_add_ps(u, _mm512_set1_ps(a.qt.e[i]));
}

// Op provides: Elem (panel element), Packed (32-bit packed query unit), kG (elements per 32-bit
// group), kM (max queries per group), pack(args, q0, m, out) and micro<M, P>(...).
template <class Op, int M>
static inline void run_group(const fastemb::ScanArgs& a, const typename Op::Packed* qp, int64_t q0,
                             int64_t t0, int64_t t1) {
    constexpr int P = M <= 4 ? 4 : 2;
    const auto* panels = static_cast<const typename Op::Elem*>(a.panels);
    // Every step of kG elements is one 64-byte row of 16 lanes.
    const int64_t pstride = a.dp / Op::kG * 64 / static_cast<int64_t>(sizeof(typename Op::Elem));
    int64_t p = t0;
    for (; p + P <= t1; p += P) Op::template micro<M, P>(a, qp, q0, panels + p * pstride, p);
    for (; p < t1; ++p) Op::template micro<M, 1>(a, qp, q0, panels + p * pstride, p);
}

template <class Op, int M>
static inline void dispatch_group(int m, const fastemb::ScanArgs& a, const typename Op::Packed* qp,
                                  int64_t q0, int64_t t0, int64_t t1) {
    if constexpr (M >= 1) {
        if (m == M) return run_group<Op, M>(a, qp, q0, t0, t1);
        dispatch_group<Op, M - 1>(m, a, qp, q0, t0, t1);
    }
}

template <class Op>
static void scan(const fastemb::ScanArgs& a) {
    constexpr int kM = Op::kM;
    const int64_t steps = a.dp / Op::kG;
    const int64_t groups = (a.nq + kM - 1) / kM;
    // Packed queries, group after group, each [steps, m], in the caller's scratch buffer.
    auto* packed = static_cast<typename Op::Packed*>(a.work);
    for (int64_t g = 0; a.pack && g < groups; ++g) {
        const int64_t q0 = g * kM;
        const int m = static_cast<int>(a.nq - q0 < kM ? a.nq - q0 : kM);
        Op::pack(a, q0, m, steps, packed + g * steps * kM);
    }
    const int64_t panel_bytes = steps * 64;
    int64_t tile = kTileBytes / panel_bytes;
    tile = tile < 4 ? 4 : tile - tile % 4;
    for (int64_t t0 = a.p0; t0 < a.p1; t0 += tile) {
        const int64_t t1 = t0 + tile < a.p1 ? t0 + tile : a.p1;
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t q0 = g * kM;
            const int m = static_cast<int>(a.nq - q0 < kM ? a.nq - q0 : kM);
            dispatch_group<Op, kM>(m, a, packed + g * steps * kM, q0, t0, t1);
        }
    }
}

}  // namespace
