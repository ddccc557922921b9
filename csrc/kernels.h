// Scan kernels: score a block of queries against a range of database panels and feed a bounded
// top-k heap per query. One implementation per instruction set; `best_kernels()` picks at run time.
//
// Database layout ("panels"): vectors are stored in groups of kLanes = 16, so that one 64-byte
// SIMD load holds the same dimensions of 16 different vectors. Element j of vector `pos`, with
// g elements per 32-bit group (float32: g = 1, bfloat16: g = 2, int8: g = 4, binary: g = 32
// bits), lives at
//   panel(pos / 16) * dp * 16 + (j / g) * 16 * g + (pos % 16) * g + j % g
// where dp is the dimension rounded up to a multiple of g (padding is zero). Every score is then a
// lane-wise accumulation over j in order, so one (query, vector) pair gets the same float32 score
// whatever the batch, the thread split or the tile it is computed in.
//
// Compressed storage (bfloat16, int8, binary) also keeps per-vector numbers ("meta"), per panel
// as [kMeta][16] floats (see codec.h), and the kernels report, instead of the raw dot product,
//   s = t_q * g + dot                         (the centered score estimate, see codec.h)
//   u = s + A_q * r + B_q * m + C_q * n + E_q (an upper bound of the float32 score; A..E = 0 for
//                                              the approximate modes, where u = s)
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastemb {

constexpr int kLanes = 16;

// Bounded min-heap of (score, pos) holding the best `cap` entries; "better" is a higher score,
// then a smaller id. Plain data so that kernels compiled for other targets can read `threshold`
// inline; pushes are rare and go through topk_push (compiled once, for the baseline target).
// With `sink` set the heap is a collector instead: every pushed entry is appended there and
// `threshold` stays where the caller put it.
struct Collector;
struct TopK {
    float threshold;      // -inf until full, then the worst kept score: only scores >= it can enter
    int32_t size;
    int32_t cap;
    float* score;         // [cap]
    int64_t* pos;         // [cap]
    const int64_t* ids;   // [n] user ids, for tie-breaking
    Collector* sink;      // nullptr: a bounded heap
};

void topk_push(TopK& h, float score, int64_t pos);

// Per-query numbers of the epilogue above, each [nq].
struct QueryTerms {
    const float* qscale;  // int8: the query's quantization step; binary: |q_perp| / dim
    const float* t;
    const float* a;
    const float* b;
    const float* c;
    const float* e;
};

struct ScanArgs {
    const void* queries;   // prepared queries, row-major [nq, dp]: float32 / bf16 bits / int8 / bits
    int64_t nq;
    QueryTerms qt;
    const void* panels;    // database panels (layout above)
    const float* meta;     // per-panel vector data [npanels][kMeta][16]; nullptr for float32
    const uint16_t* allow; // optional [npanels]: bit l set = lane l may be reported (filtered search)
    int64_t p0, p1;        // panel range to scan
    int64_t n;             // number of stored vectors; lanes at pos >= n are padding
    int64_t dp;            // padded dimension (bits for binary)
    int64_t dim;           // true dimension (binary: the number of meaningful bits)
    TopK* heaps;           // [nq]
    void* work;            // scratch for packed queries: at least (nq + 16) * dp * 4 bytes
    bool pack;             // pack the queries into `work` first (false: reuse the last packing)
};

using ScanFn = void (*)(const ScanArgs&);
// out[c] = sum_j q[j] * rows[c][j], accumulated in the same order and rounding as the float32 scan.
using DotsFn = void (*)(const float* q, const float* const* rows, int64_t count, int64_t d, float* out);

struct Kernels {
    const char* f32_name;
    const char* bf16_name;
    const char* i8_name;
    const char* bin_name;
    ScanFn f32;
    ScanFn bf16;
    ScanFn i8;
    ScanFn bin;
    DotsFn dots;
};

const Kernels& generic_kernels();
// Each returns nullptr when the CPU lacks the instructions.
ScanFn avx512_f32_scan();
DotsFn avx512_f32_dots();
ScanFn avx512_i8_scan();
ScanFn avx512_bf16_scan();
ScanFn avx512_bin_scan();

// The fastest kernels this CPU runs; `force_generic` (tests) or the environment variable
// FASTEMB_KERNELS=generic (read once) select the portable ones.
const Kernels& best_kernels(bool force_generic);

// Meta layout: number of float rows per panel for each storage, and the row of each quantity.
namespace meta {
constexpr int kI8 = 6;    // scale, corr (int32 bits: 128 * sum of codes), g, r, m, n
constexpr int kBF16 = 4;  // g, r, m, n
constexpr int kBin = 2;   // g, m
}  // namespace meta

}  // namespace fastemb
