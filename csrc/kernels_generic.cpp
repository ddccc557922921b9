// Portable kernels (any x86-64 or other CPU); same panel layout and summation order as the SIMD
// ones, but float32 products are rounded before the add (no FMA), so float32 scores may differ
// from the AVX-512 path in the last bit. Results are consistent within one path.
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

inline void emit(const float* s, TopK& h, int64_t pos0, int64_t n) {
    for (int l = 0; l < kLanes; ++l) {
        if (pos0 + l < n && s[l] >= h.threshold) topk_push(h, s[l], pos0 + l);
    }
}

template <class Elem, int G, class Score>
void scan_panels(const ScanArgs& a, Score score) {
    const Elem* panels = static_cast<const Elem*>(a.panels);
    const int64_t pstride = a.dp * kLanes;
    for (int64_t q0 = 0; q0 < a.nq; q0 += kQ) {
        const int mq = static_cast<int>(a.nq - q0 < kQ ? a.nq - q0 : kQ);
        for (int64_t p = a.p0; p < a.p1; ++p) {
            float s[kQ][kLanes];
            score(q0, mq, panels + p * pstride, p, s);
            for (int i = 0; i < mq; ++i) emit(s[i], a.heaps[q0 + i], p * kLanes, a.n);
        }
    }
}

void scan_f32(const ScanArgs& a) {
    const float* q = static_cast<const float*>(a.queries);
    const int64_t dp = a.dp;
    scan_panels<float, 1>(a, [&](int64_t q0, int mq, const float* x, int64_t, float (*s)[kLanes]) {
        for (int i = 0; i < mq; ++i) {
            float acc[kLanes] = {};
            const float* qi = q + (q0 + i) * dp;
            for (int64_t j = 0; j < dp; ++j) {
                const float qj = qi[j];
                const float* xj = x + j * kLanes;
                for (int l = 0; l < kLanes; ++l) acc[l] = acc[l] + qj * xj[l];
            }
            std::memcpy(s[i], acc, sizeof acc);
        }
    });
}

void scan_bf16(const ScanArgs& a) {
    const uint16_t* q = static_cast<const uint16_t*>(a.queries);
    const int64_t dp = a.dp;
    scan_panels<uint16_t, 2>(a, [&](int64_t q0, int mq, const uint16_t* x, int64_t, float (*s)[kLanes]) {
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
            std::memcpy(s[i], acc, sizeof acc);
        }
    });
}

void scan_i8(const ScanArgs& a) {
    const int8_t* q = static_cast<const int8_t*>(a.queries);
    const int64_t dp = a.dp;
    scan_panels<int8_t, 4>(a, [&](int64_t q0, int mq, const int8_t* x, int64_t p, float (*s)[kLanes]) {
        const float* vs = a.vscale + p * kLanes;
        for (int i = 0; i < mq; ++i) {
            int32_t acc[kLanes] = {};
            const int8_t* qi = q + (q0 + i) * dp;
            for (int64_t j = 0; j < dp; ++j) {
                const int32_t qj = qi[j];
                const int8_t* xj = x + (j / 4) * 4 * kLanes + j % 4;
                for (int l = 0; l < kLanes; ++l) acc[l] += qj * xj[4 * l];
            }
            // Same arithmetic as the VNNI path: exact int32 dot, then scale in float32.
            for (int l = 0; l < kLanes; ++l) s[i][l] = static_cast<float>(acc[l]) * vs[l] * a.qscale[q0 + i];
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
    static const Kernels k{"generic", "generic", "generic", scan_f32, scan_bf16, scan_i8, dots};
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
        return k;
    }();
    return force_generic ? generic_kernels() : best;
}

}  // namespace fastemb
