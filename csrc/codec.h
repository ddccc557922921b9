// Codec: how one storage kind encodes vectors (panels + per-vector meta, see kernels.h) and
// prepares queries, and the error bound that makes compressed search exact.
//
// Centering. Compressed storage keeps a center c (the mean of the first vectors added). Each
// vector x is split as x = a c + p, a = x.c / c.c, p = x - a c (p is ~orthogonal to c); only p is
// compressed, and g = a + p.c / c.c is kept as a float. For a query q with tau = q.c and
// q_perp = q - (tau / c.c) c, the identity
//     q.x = tau * g + q_perp . p + (float32 rounding)
// holds for any c, so the scan computes tau * g + q~_perp . p~ (codes ~). On near-duplicates
// (x and q close to a common direction) p and q_perp are short, and so are the errors.
//
// The bound. With e = p - p~ (norm r), f = q_perp - q~_perp, m' = |p| + r, n = |x|:
//     |fl32(q.x) - s~| <= |q~_perp| r + (|f| + k1) m' + (gamma_d + k2) |q| n + E
// where fl32(q.x) is the float32 score the float32 index computes (any summation order:
// |fl32 - q.x| <= gamma_d |q| |x|, gamma_d = d u / (1 - d u), u = 2^-24), k1 covers the
// scan's own rounding (4u |q~_perp|; bfloat16 sums add gamma_d |q~_perp|), k2 = 16u covers the
// rounding of the centering and of the bound's evaluation, E the products that underflow.
// Every coefficient is computed in double and rounded up. The kernels report
// u = s~ + A r + B m' + C n + E >= fl32(q.x), which is what exact search needs (index.h).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels.h"

namespace fastemb {

enum class Storage { F32, BF16, I8, Bin };

// A block of prepared queries.
struct QueryBatch {
    int64_t nq = 0;
    std::vector<float> q;      // [nq, d] as scored (normalized for cosine)
    std::vector<float> qperp;  // [nq, d] centered (compressed storage)
    std::vector<uint8_t> scan; // [nq, dp] elements in the storage's format (binary: dp / 32 words)
    std::vector<float> qscale, t, a, b, c, e;  // [nq] each, kernels.h
    QueryTerms terms() const { return {qscale.data(), t.data(), a.data(), b.data(), c.data(), e.data()}; }
};

class Codec {
public:
    Codec(int64_t d, Storage s);

    Storage storage() const { return st_; }
    int64_t dim() const { return d_; }
    int64_t dp() const { return dp_; }  // padded dimension (bits for binary)
    int kmeta() const;                  // meta rows per panel (kernels.h meta::), 0 for float32
    size_t panel_bytes() const { return static_cast<size_t>(dp_ / group() * 64); }
    size_t meta_bytes() const { return static_cast<size_t>(kmeta()) * 64; }  // per panel
    size_t record_bytes() const;  // binary: one row-major int8 record (scale, g, codes)

    const std::vector<float>& center() const { return center_; }
    void set_center(const float* c);  // nullptr: no center
    bool has_center() const { return !center_.empty(); }

    // Writes vector x (as scored) into slot `pos`: its panel lanes, its meta lanes and, for
    // binary, its int8 record (rec: that record).
    void encode(const float* x, int64_t pos, uint8_t* panels, float* meta, uint8_t* rec) const;
    void move(int64_t src, int64_t dst, uint8_t* panels, float* meta) const;
    void clear(int64_t pos, uint8_t* panels, float* meta) const;  // zero lanes, as padding

    // Queries `q` [nq, d] (as scored) -> a batch; `bounds`: fill the bound terms (exact search),
    // else they are zero and the kernels report the estimate s~.
    void prepare(const float* q, int64_t nq, bool bounds, QueryBatch& out) const;

    // Approximate scores from the codes, with the unquantized query: bfloat16 / int8 panels, or a
    // binary index's int8 record.
    float rescore_panel(const QueryBatch& b, int64_t i, const uint8_t* panels, const float* meta, int64_t pos) const;
    float rescore_record(const QueryBatch& b, int64_t i, const uint8_t* rec) const;
    // The vector as the codes give it (g c + p~): float32 storage exactly, else approximately.
    void decode_panel(const uint8_t* panels, const float* meta, int64_t pos, float* out) const;
    void decode_record(const uint8_t* rec, float* out) const;

private:
    int group() const;
    // p = x - a c and g (see above); without a center p = x, g = 0.
    double split(const float* x, float* p) const;
    const float* meta_lane(const float* meta, int64_t pos, int row) const {
        return meta + (pos / kLanes) * kmeta() * kLanes + row * kLanes + pos % kLanes;
    }

    int64_t d_, dp_;
    Storage st_;
    std::vector<float> center_;
    double cc_ = 0.0;  // c.c
};

}  // namespace fastemb
