// Codec (see codec.h for the centering and the bound).
#include "codec.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

namespace fastemb {

namespace {

constexpr double kU = 1.0 / (1 << 24);  // float32 unit roundoff

inline float up(double v) {  // the smallest float >= v
    const float f = static_cast<float>(v);
    return static_cast<double>(f) >= v ? f : std::nextafter(f, std::numeric_limits<float>::infinity());
}

inline uint16_t to_bf16(float f) {  // round to nearest even; denormals flush to zero (as vdpbf16ps reads them)
    if (std::fabs(f) < FLT_MIN) return 0;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    const uint16_t b = static_cast<uint16_t>(u >> 16);
    return (b & 0x7F80u) == 0 ? 0 : b;  // rounded down into the denormals: flush too
}

inline float from_bf16(uint16_t b) {
    const uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Symmetric int8 quantization: codes in [-127, 127], x ~ codes * step; returns the step.
float quantize(const float* x, int64_t d, int8_t* codes) {
    float amax = 0.0f;
    for (int64_t j = 0; j < d; ++j) amax = std::max(amax, std::fabs(x[j]));
    if (amax == 0.0f) {
        std::memset(codes, 0, d);
        return 0.0f;
    }
    const float inv = 127.0f / amax;
    for (int64_t j = 0; j < d; ++j) codes[j] = static_cast<int8_t>(std::clamp(std::nearbyint(x[j] * inv), -127.0f, 127.0f));
    return amax / 127.0f;
}

double norm(const float* x, int64_t d) {
    double s = 0.0;
    for (int64_t j = 0; j < d; ++j) s += static_cast<double>(x[j]) * x[j];
    return std::sqrt(s);
}

std::vector<float>& scratch(int which, size_t n) {  // per-thread buffers for encode / prepare
    thread_local std::vector<float> bufs[3];
    if (bufs[which].size() < n) bufs[which].resize(n);
    return bufs[which];
}

}  // namespace

Codec::Codec(int64_t d, Storage s) : d_(d), st_(s) {
    const int g = group();
    dp_ = (d_ + g - 1) / g * g;
}

int Codec::group() const {
    switch (st_) {
        case Storage::F32: return 1;
        case Storage::BF16: return 2;
        case Storage::I8: return 4;
        case Storage::Bin: return 32;
    }
    return 1;
}

int Codec::kmeta() const {
    switch (st_) {
        case Storage::F32: return 0;
        case Storage::BF16: return meta::kBF16;
        case Storage::I8: return meta::kI8;
        case Storage::Bin: return meta::kBin;
    }
    return 0;
}

size_t Codec::record_bytes() const { return st_ == Storage::Bin ? 8 + static_cast<size_t>((d_ + 7) / 8 * 8) : 0; }

void Codec::set_center(const float* c) {
    center_.clear();
    cc_ = 0.0;
    if (!c) return;
    double cc = 0.0;
    for (int64_t j = 0; j < d_; ++j) cc += static_cast<double>(c[j]) * c[j];
    if (cc == 0.0 || !std::isfinite(cc)) return;  // no direction to split along
    center_.assign(c, c + d_);
    cc_ = cc;
}

double Codec::split(const float* x, float* p) const {
    if (center_.empty()) {
        std::memcpy(p, x, sizeof(float) * d_);
        return 0.0;
    }
    const float* c = center_.data();
    double xc = 0.0;
    for (int64_t j = 0; j < d_; ++j) xc += static_cast<double>(x[j]) * c[j];
    const double a = xc / cc_;
    double pc = 0.0;
    for (int64_t j = 0; j < d_; ++j) {
        p[j] = static_cast<float>(x[j] - a * c[j]);
        pc += static_cast<double>(p[j]) * c[j];
    }
    return a + pc / cc_;
}

void Codec::encode(const float* x, int64_t pos, uint8_t* panels, float* meta, uint8_t* rec) const {
    uint8_t* panel = panels + (pos / kLanes) * panel_bytes();
    const int64_t lane = pos % kLanes;
    if (st_ == Storage::F32) {
        for (int64_t j = 0; j < d_; ++j) std::memcpy(panel + j * 64 + lane * 4, x + j, 4);
        return;
    }
    std::vector<float>& p = scratch(0, static_cast<size_t>(d_));
    const double g = split(x, p.data());
    const double pn = norm(p.data(), d_);
    auto set = [&](int row, float v) { const_cast<float*>(meta_lane(meta, pos, row))[0] = v; };
    const float xn = up(norm(x, d_));
    if (st_ == Storage::BF16) {
        double err = 0.0;
        for (int64_t j = 0; j < d_; ++j) {
            const uint16_t b = to_bf16(p[j]);
            std::memcpy(panel + (j / 2) * 64 + lane * 4 + (j % 2) * 2, &b, 2);
            const double e = static_cast<double>(p[j]) - from_bf16(b);
            err += e * e;
        }
        const double r = std::sqrt(err);
        set(0, static_cast<float>(g));
        set(1, up(r));
        set(2, up(pn + r));
        set(3, xn);
        return;
    }
    std::vector<float>& cbuf = scratch(1, static_cast<size_t>(d_ + 8) / 4 + 1);
    int8_t* codes = reinterpret_cast<int8_t*>(cbuf.data());
    const float step = quantize(p.data(), d_, codes);
    if (st_ == Storage::I8) {
        double err = 0.0;
        int32_t sum = 0;
        for (int64_t j = 0; j < d_; ++j) {
            panel[(j / 4) * 64 + lane * 4 + j % 4] = static_cast<uint8_t>(codes[j]);
            const double e = static_cast<double>(p[j]) - static_cast<double>(step) * codes[j];
            err += e * e;
            sum += codes[j];
        }
        const double r = std::sqrt(err);
        const int32_t corr = 128 * sum;
        float corr_bits;
        std::memcpy(&corr_bits, &corr, 4);
        set(0, step);
        set(1, corr_bits);
        set(2, static_cast<float>(g));
        set(3, up(r));
        set(4, up(pn + r));
        set(5, xn);
        return;
    }
    // Binary: sign bits of p in the panel, int8 codes of p in the record for re-scoring.
    for (int64_t j = 0; j < d_; ++j) {
        uint8_t* w = panel + (j / 32) * 64 + lane * 4 + (j % 32) / 8;
        const uint8_t bit = static_cast<uint8_t>(1u << (j % 8));
        *w = p[j] > 0.0f ? (*w | bit) : (*w & ~bit);
    }
    set(0, static_cast<float>(g));
    set(1, static_cast<float>(pn));
    const float gf = static_cast<float>(g);
    std::memcpy(rec, &step, 4);
    std::memcpy(rec + 4, &gf, 4);
    std::memcpy(rec + 8, codes, d_);
    std::memset(rec + 8 + d_, 0, record_bytes() - 8 - d_);
}

void Codec::move(int64_t src, int64_t dst, uint8_t* panels, float* meta) const {
    const size_t pb = panel_bytes();
    const uint8_t* s = panels + (src / kLanes) * pb + (src % kLanes) * 4;
    uint8_t* t = panels + (dst / kLanes) * pb + (dst % kLanes) * 4;
    for (size_t step = 0; step < pb / 64; ++step) std::memcpy(t + step * 64, s + step * 64, 4);
    for (int row = 0; row < kmeta(); ++row)
        const_cast<float*>(meta_lane(meta, dst, row))[0] = meta_lane(meta, src, row)[0];
}

void Codec::clear(int64_t pos, uint8_t* panels, float* meta) const {
    const size_t pb = panel_bytes();
    uint8_t* t = panels + (pos / kLanes) * pb + (pos % kLanes) * 4;
    for (size_t step = 0; step < pb / 64; ++step) std::memset(t + step * 64, 0, 4);
    for (int row = 0; row < kmeta(); ++row) const_cast<float*>(meta_lane(meta, pos, row))[0] = 0.0f;
}

void Codec::prepare(const float* q, int64_t nq, bool bounds, QueryBatch& out) const {
    const int64_t d = d_;
    out.nq = nq;
    out.q.assign(q, q + nq * d);
    for (auto* v : {&out.qscale, &out.t, &out.a, &out.b, &out.c, &out.e}) v->assign(static_cast<size_t>(nq), 0.0f);
    if (st_ == Storage::F32) {
        out.scan.resize(static_cast<size_t>(nq * d * 4));
        std::memcpy(out.scan.data(), q, static_cast<size_t>(nq * d * 4));
        return;
    }
    out.qperp.resize(static_cast<size_t>(nq * d));
    const size_t row_bytes = st_ == Storage::Bin ? static_cast<size_t>(dp_ / 8)
                             : st_ == Storage::BF16 ? static_cast<size_t>(dp_ * 2)
                                                    : static_cast<size_t>(dp_);
    out.scan.assign(static_cast<size_t>(nq) * row_bytes, 0);
    const double gamma = d * kU / (1.0 - d * kU);
    for (int64_t i = 0; i < nq; ++i) {
        const float* qi = q + i * d;
        float* qp = out.qperp.data() + i * d;
        double tau = 0.0;
        if (!center_.empty()) {
            for (int64_t j = 0; j < d; ++j) tau += static_cast<double>(qi[j]) * center_[j];
            const double beta = tau / cc_;
            for (int64_t j = 0; j < d; ++j) qp[j] = static_cast<float>(qi[j] - beta * center_[j]);
        } else {
            std::memcpy(qp, qi, sizeof(float) * d);
        }
        out.t[i] = static_cast<float>(tau);
        uint8_t* row = out.scan.data() + i * row_bytes;
        double qq = 0.0, ff = 0.0;  // |q~_perp|^2, |q_perp - q~_perp|^2
        if (st_ == Storage::Bin) {
            for (int64_t j = 0; j < d; ++j)
                if (qp[j] > 0.0f) row[j / 8] |= static_cast<uint8_t>(1u << (j % 8));
            out.qscale[i] = static_cast<float>(norm(qp, d) / d);
            continue;  // no bound: binary search is approximate
        }
        if (st_ == Storage::BF16) {
            for (int64_t j = 0; j < d; ++j) {
                const uint16_t b = to_bf16(qp[j]);
                std::memcpy(row + 2 * j, &b, 2);
                const double v = from_bf16(b), f = qp[j] - v;
                qq += v * v;
                ff += f * f;
            }
        } else {
            const float step = quantize(qp, d, reinterpret_cast<int8_t*>(row));
            out.qscale[i] = step;
            for (int64_t j = 0; j < d; ++j) {
                const double v = static_cast<double>(step) * static_cast<int8_t>(row[j]), f = qp[j] - v;
                qq += v * v;
                ff += f * f;
            }
        }
        if (!bounds) continue;
        const double qt = std::sqrt(qq), qn = norm(qi, d), qpn = norm(qp, d);
        const double k1 = (st_ == Storage::BF16 ? gamma + 4 * kU : 4 * kU) * qt + kU * (qpn + qn);
        const double safety = 1.0 + 16 * kU;
        out.a[i] = up(qt * safety);
        out.b[i] = up((std::sqrt(ff) + k1) * safety);
        out.c[i] = up((gamma + 16 * kU) * qn * safety);
        out.e[i] = up((2.0 * d + 8.0) * std::ldexp(1.0, -126));
    }
}

float Codec::rescore_panel(const QueryBatch& b, int64_t i, const uint8_t* panels, const float* meta, int64_t pos) const {
    const uint8_t* panel = panels + (pos / kLanes) * panel_bytes() + (pos % kLanes) * 4;
    const float* qp = b.qperp.data() + i * d_;
    float acc = 0.0f;
    if (st_ == Storage::BF16) {
        for (int64_t j = 0; j < d_; ++j) {
            uint16_t v;
            std::memcpy(&v, panel + (j / 2) * 64 + (j % 2) * 2, 2);
            acc += qp[j] * from_bf16(v);
        }
        return b.t[i] * meta_lane(meta, pos, 0)[0] + acc;
    }
    for (int64_t j = 0; j < d_; ++j) acc += qp[j] * static_cast<float>(static_cast<int8_t>(panel[(j / 4) * 64 + j % 4]));
    return b.t[i] * meta_lane(meta, pos, 2)[0] + acc * meta_lane(meta, pos, 0)[0];
}

float Codec::rescore_record(const QueryBatch& b, int64_t i, const uint8_t* rec) const {
    float step, g;
    std::memcpy(&step, rec, 4);
    std::memcpy(&g, rec + 4, 4);
    const int8_t* codes = reinterpret_cast<const int8_t*>(rec + 8);
    const float* qp = b.qperp.data() + i * d_;
    float acc = 0.0f;
    for (int64_t j = 0; j < d_; ++j) acc += qp[j] * static_cast<float>(codes[j]);
    return b.t[i] * g + acc * step;
}

void Codec::decode_panel(const uint8_t* panels, const float* meta, int64_t pos, float* out) const {
    const uint8_t* panel = panels + (pos / kLanes) * panel_bytes() + (pos % kLanes) * 4;
    if (st_ == Storage::F32) {
        for (int64_t j = 0; j < d_; ++j) std::memcpy(out + j, panel + j * 64, 4);
        return;
    }
    float g = 0.0f;
    if (st_ == Storage::BF16) {
        g = meta_lane(meta, pos, 0)[0];
        for (int64_t j = 0; j < d_; ++j) {
            uint16_t v;
            std::memcpy(&v, panel + (j / 2) * 64 + (j % 2) * 2, 2);
            out[j] = from_bf16(v);
        }
    } else {
        g = meta_lane(meta, pos, 2)[0];
        const float step = meta_lane(meta, pos, 0)[0];
        for (int64_t j = 0; j < d_; ++j) out[j] = step * static_cast<int8_t>(panel[(j / 4) * 64 + j % 4]);
    }
    for (int64_t j = 0; !center_.empty() && j < d_; ++j) out[j] += g * center_[j];
}

void Codec::decode_record(const uint8_t* rec, float* out) const {
    float step, g;
    std::memcpy(&step, rec, 4);
    std::memcpy(&g, rec + 4, 4);
    const int8_t* codes = reinterpret_cast<const int8_t*>(rec + 8);
    for (int64_t j = 0; j < d_; ++j) out[j] = step * codes[j] + (center_.empty() ? 0.0f : g * center_[j]);
}

}  // namespace fastemb
