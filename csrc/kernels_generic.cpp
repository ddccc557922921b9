// Portable kernels (any x86-64 or other CPU); same panel layout and summation order as the SIMD
// ones, but float32 products are rounded before the add (no FMA), so float32 scores may differ
// from the AVX-512 path in the last bit. Results are consistent within one path.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "kernels.h"

namespace fastemb {

namespace {

constexpr int kQ = 4;  // queries per pass over a panel

inline float bf16_to_f32(uint16_t b) {
    const uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline void emit(const float* s, TopK& h, int64_t pos0, int64_t n, uint32_t allow) {
    for (int l = 0; l < kLanes; ++l) {
        if (pos0 + l < n && (allow >> l & 1u) && s[l] >= h.threshold) topk_push(h, s[l], pos0 + l);
    }
}

// The epilogue of kernels.h, lane by lane (g, r, m, n: meta rows of 16 floats).
inline void centered_bound(const ScanArgs& a, int64_t i, float* s, const float* g, const float* r, const float* m,
                           const float* n) {
    const float t = a.qt.t[i], A = a.qt.a[i], B = a.qt.b[i], C = a.qt.c[i], E = a.qt.e[i];
    for (int l = 0; l < kLanes; ++l) s[l] = (t * g[l] + s[l]) + A * r[l] + B * m[l] + C * n[l] + E;
}

// Tiles of ~256 KB of panels stay in cache while every block of kQ queries passes over them.
template <class Elem, int G, class Score>
void scan_panels(const ScanArgs& a, Score score) {
    const Elem* panels = static_cast<const Elem*>(a.panels);
    const int64_t pstride = a.dp / G * 64 / static_cast<int64_t>(sizeof(Elem));  // one 64-byte row per step
    const int64_t tile = std::max<int64_t>(1, (256 * 1024) / (a.dp / G * 64));
    for (int64_t t0 = a.p0; t0 < a.p1; t0 += tile) {
        const int64_t t1 = std::min(a.p1, t0 + tile);
        for (int64_t q0 = 0; q0 < a.nq; q0 += kQ) {
            const int mq = static_cast<int>(a.nq - q0 < kQ ? a.nq - q0 : kQ);
            for (int64_t p = t0; p < t1; ++p) {
                float s[kQ][kLanes];
                score(q0, mq, panels + p * pstride, p, s);
                const uint32_t allow = a.allow ? a.allow[p] : 0xFFFFu;
                for (int i = 0; i < mq; ++i) emit(s[i], a.heaps[q0 + i], p * kLanes, a.n, allow);
            }
        }
    }
}

// GCC/Clang vector extension: 4 floats, lowered to SSE2 on any x86-64 (NEON elsewhere). Written
// out because the auto-vectorizer picks the wrong loop here (7 GFLOP/s instead of ~25).
typedef float v4f __attribute__((vector_size(16)));

inline v4f load4(const float* p) {
    v4f v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Two queries x one panel: 8 accumulators + 4 panel vectors fit SSE2's 16 registers.
template <int M>
void f32_block(const float* q, int64_t dp, const float* x, float (*s)[kLanes]) {
    v4f acc[M][4] = {};
    for (int64_t j = 0; j < dp; ++j) {
        const float* xj = x + j * kLanes;
        const v4f x0 = load4(xj), x1 = load4(xj + 4), x2 = load4(xj + 8), x3 = load4(xj + 12);
        for (int i = 0; i < M; ++i) {
            const float qj = q[i * dp + j];
            const v4f b = {qj, qj, qj, qj};
            acc[i][0] = acc[i][0] + b * x0;
            acc[i][1] = acc[i][1] + b * x1;
            acc[i][2] = acc[i][2] + b * x2;
            acc[i][3] = acc[i][3] + b * x3;
        }
    }
    for (int i = 0; i < M; ++i) std::memcpy(s[i], acc[i], sizeof acc[i]);
}

void scan_f32(const ScanArgs& a) {
    const float* q = static_cast<const float*>(a.queries);
    const int64_t dp = a.dp;
    scan_panels<float, 1>(a, [&](int64_t q0, int mq, const float* x, int64_t, float (*s)[kLanes]) {
        const float* qb = q + q0 * dp;
        for (int i = 0; i < mq; i += 2) {
            if (mq - i >= 2) f32_block<2>(qb + i * dp, dp, x, s + i);
            else f32_block<1>(qb + i * dp, dp, x, s + i);
        }
    });
}

void scan_bf16(const ScanArgs& a) {
    const uint16_t* q = static_cast<const uint16_t*>(a.queries);
    const int64_t dp = a.dp;
    scan_panels<uint16_t, 2>(a, [&](int64_t q0, int mq, const uint16_t* x, int64_t p, float (*s)[kLanes]) {
        for (int i = 0; i < mq; ++i) {
            float acc[kLanes] = {};
            const uint16_t* qi = q + (q0 + i) * dp;
            for (int64_t j = 0; j < dp; j += 2) {
                const float a0 = bf16_to_f32(qi[j]), a1 = bf16_to_f32(qi[j + 1]);
                const uint16_t* xj = x + j * kLanes;
                for (int l = 0; l < kLanes; ++l) {
                    acc[l] += a0 * bf16_to_f32(xj[2 * l]) + a1 * bf16_to_f32(xj[2 * l + 1]);
                }
            }
            const float* mp = a.meta + p * meta::kBF16 * kLanes;
            centered_bound(a, q0 + i, acc, mp, mp + 16, mp + 32, mp + 48);
            std::memcpy(s[i], acc, sizeof acc);
        }
    });
}

void scan_i8(const ScanArgs& a) {
    const int8_t* q = static_cast<const int8_t*>(a.queries);
    const int64_t dp = a.dp;
    scan_panels<int8_t, 4>(a, [&](int64_t q0, int mq, const int8_t* x, int64_t p, float (*s)[kLanes]) {
        const float* mp = a.meta + p * meta::kI8 * kLanes;
        const float* vs = mp;
        int32_t corr[kLanes];
        std::memcpy(corr, mp + 16, sizeof corr);
        for (int i = 0; i < mq; ++i) {
            int32_t acc[kLanes] = {};
            const int8_t* qi = q + (q0 + i) * dp;
            for (int64_t j = 0; j < dp; ++j) {
                const int32_t qj = qi[j];
                const int8_t* xj = x + (j / 4) * 4 * kLanes + j % 4;
                for (int l = 0; l < kLanes; ++l) acc[l] += qj * xj[4 * l];
            }
            // Same arithmetic as the VNNI path: exact int32 dot, then scale in float32. (The VNNI
            // path adds the +128 query bias and subtracts it again: the same int32.)
            (void)corr;
            for (int l = 0; l < kLanes; ++l) s[i][l] = static_cast<float>(acc[l]) * vs[l] * a.qt.qscale[q0 + i];
            centered_bound(a, q0 + i, s[i], mp + 32, mp + 48, mp + 64, mp + 80);
        }
    });
}

void scan_bin(const ScanArgs& a) {
    const uint32_t* q = static_cast<const uint32_t*>(a.queries);
    const int64_t steps = a.dp / 32;
    scan_panels<uint32_t, 32>(a, [&](int64_t q0, int mq, const uint32_t* x, int64_t p, float (*s)[kLanes]) {
        const float* g = a.meta + p * meta::kBin * kLanes;
        const float* mag = g + kLanes;
        for (int i = 0; i < mq; ++i) {
            int32_t h[kLanes] = {};
            const uint32_t* qi = q + (q0 + i) * steps;
            for (int64_t st = 0; st < steps; ++st)
                for (int l = 0; l < kLanes; ++l) h[l] += __builtin_popcount(qi[st] ^ x[st * kLanes + l]);
            for (int l = 0; l < kLanes; ++l)
                s[i][l] = a.qt.t[q0 + i] * g[l] + mag[l] * a.qt.qscale[q0 + i] * static_cast<float>(a.dim - 2 * h[l]);
        }
    });
}

void dots(const float* q, const float* const* rows, int64_t count, int64_t d, float* out) {
    for (int64_t c = 0; c < count; ++c) {
        float acc = 0.0f;
        for (int64_t j = 0; j < d; ++j) acc = acc + q[j] * rows[c][j];
        out[c] = acc;
    }
}

}  // namespace

const Kernels& generic_kernels() {
    static const Kernels k{"generic", "generic", "generic", "generic", scan_f32, scan_bf16, scan_i8, scan_bin, dots};
    return k;
}

const Kernels& best_kernels(bool force_generic) {
    static const Kernels best = [] {
        Kernels k = generic_kernels();
        // FASTEMB_KERNELS=generic: run the portable kernels everywhere (debugging, reproducing a
        // CPU without AVX-512).
        const char* env = std::getenv("FASTEMB_KERNELS");
        if (env && std::strcmp(env, "generic") == 0) return k;
        if (ScanFn f = avx512_f32_scan()) {
            k.f32 = f;
            k.dots = avx512_f32_dots();
            k.f32_name = "avx512";
        }
        if (ScanFn f = avx512_bf16_scan()) {
            k.bf16 = f;
            k.bf16_name = "avx512_bf16";
        }
        if (ScanFn f = avx512_i8_scan()) {
            k.i8 = f;
            k.i8_name = "avx512_vnni";
        }
        if (ScanFn f = avx512_bin_scan()) {
            k.bin = f;
            k.bin_name = "avx512_vpopcntdq";
        }
        return k;
    }();
    return force_generic ? generic_kernels() : best;
}

}  // namespace fastemb
