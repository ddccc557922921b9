// Index::search: scan the codes into bounded heaps, re-score the candidates, and for exact
// compressed search prove the result (see codec.h) or scan again with a larger heap.
//
// Exact compressed search. The heap keeps the `cap` vectors with the highest upper bound u of
// their float32 score. Their float32 scores are computed (from the rows, in the float32 scan's
// order and rounding), giving L, the k-th best of them. Every vector left out of the heap has
// u <= the heap's smallest u; if that is below L, none of them can reach the top k (their
// float32 score is <= u < L), so the top k of the candidates is the float32 index's top k, ties
// by id included. Otherwise the query is scanned once more, collecting every vector whose u
// reaches L, and all of those are re-scored: the result is then proven by construction.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <limits>
#include <thread>

#include "checks.h"
#include "index.h"
#include "system.h"
#include "topk.h"

namespace py = pybind11;

namespace fastemb {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kMinPanels = 256;          // 4,096 vectors: below that a thread costs more than it saves
constexpr int64_t kBudget = int64_t{64} << 20;  // bytes of heaps per round of queries
constexpr int64_t kFinishChunk = 32;

struct Entry {
    float score;
    int64_t id;
    int64_t pos;
};

inline float rank_key(float s) { return s == s ? s : kNegInf; }  // NaN (a corrupt mapped file) ranks last

inline bool better(const Entry& a, const Entry& b) {
    const float x = rank_key(a.score), y = rank_key(b.score);
    return x > y || (x == y && a.id < b.id);
}

// Runs fn(t) on `threads` threads (the caller is thread 0); an exception must not escape a
// std::thread, so the first one is rethrown here.
template <class Fn>
void parallel(int64_t threads, Fn&& fn) {
    std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
    auto guarded = [&](int64_t t) {
        try {
            fn(t);
        } catch (...) {
            errors[t] = std::current_exception();
        }
    };
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < threads; ++t) pool.emplace_back(guarded, t);
    guarded(0);
    for (auto& th : pool) th.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

// The rows `rows` of a batch, as a batch of their own.
QueryBatch take(const QueryBatch& b, const std::vector<int64_t>& rows, int64_t d) {
    QueryBatch o;
    o.nq = static_cast<int64_t>(rows.size());
    const size_t sb = b.nq ? b.scan.size() / static_cast<size_t>(b.nq) : 0;
    auto rows_of = [&](const std::vector<float>& src, std::vector<float>& dst, int64_t width) {
        if (src.empty()) return;
        dst.resize(rows.size() * static_cast<size_t>(width));
        for (size_t r = 0; r < rows.size(); ++r) std::memcpy(dst.data() + r * width, src.data() + rows[r] * width, width * 4);
    };
    rows_of(b.q, o.q, d);
    rows_of(b.qperp, o.qperp, d);
    for (auto [src, dst] : {std::pair{&b.qscale, &o.qscale}, {&b.t, &o.t}, {&b.a, &o.a}, {&b.b, &o.b}, {&b.c, &o.c}, {&b.e, &o.e}})
        rows_of(*src, *dst, 1);
    o.scan.resize(rows.size() * sb);
    for (size_t r = 0; r < rows.size(); ++r) std::memcpy(o.scan.data() + r * sb, b.scan.data() + rows[r] * sb, sb);
    return o;
}

}  // namespace

struct Index::Search {
    const Index& ix;
    const Kernels& kern;
    int64_t k;
    int64_t threads;
    const uint16_t* allow;  // bitmap per panel (filtered scan), or nullptr
    int64_t avail;          // vectors the search may return

    Storage st() const { return ix.codec_.storage(); }

    ScanFn scan_fn() const {
        switch (st()) {
            case Storage::F32: return kern.f32;
            case Storage::BF16: return kern.bf16;
            case Storage::I8: return kern.i8;
            case Storage::Bin: return kern.bin;
        }
        return kern.f32;
    }

    int64_t npanels() const { return (ix.n_ + kLanes - 1) / kLanes; }
    int64_t tasks() const { return std::max<int64_t>(1, std::min(npanels() / kMinPanels, 16 * threads)); }
    int64_t scan_threads() const { return std::min(threads, tasks()); }

    // Scans batch b into heaps [scan_threads()][nq] (each thread fills its own row).
    void scan_raw(const QueryBatch& b, TopK* heaps) const {
        const int64_t T = scan_threads(), ntasks = tasks(), np = npanels();
        std::vector<std::vector<uint32_t>> work(static_cast<size_t>(T));
        for (auto& w : work) w.resize(static_cast<size_t>((b.nq + 16) * ix.codec_.dp()));
        const ScanFn fn = scan_fn();
        std::atomic<int64_t> next{0};
        parallel(T, [&](int64_t t) {
            ScanArgs a{};
            a.queries = b.scan.data();
            a.nq = b.nq;
            a.qt = b.terms();
            a.panels = ix.panels_.data();
            a.meta = ix.meta_.as<float>();
            a.allow = allow;
            a.n = ix.n_;
            a.dp = ix.codec_.dp();
            a.dim = ix.dim();
            a.heaps = heaps + t * b.nq;
            a.work = work[t].data();
            a.pack = true;  // once per thread
            for (int64_t j; (j = next.fetch_add(1)) < ntasks;) {
                a.p0 = np * j / ntasks;
                a.p1 = np * (j + 1) / ntasks;
                fn(a);
                a.pack = false;
            }
        });
    }

    // Scans batch b into heaps of `cap` entries and merges them: returns one heap per query,
    // whose arrays live in `score` / `pos`.
    std::vector<TopK> scan(const QueryBatch& b, int32_t cap, std::vector<float>& score, std::vector<int64_t>& pos) const {
        const int64_t nq = b.nq, T = scan_threads();
        score.assign(static_cast<size_t>(T * nq * cap), 0.0f);
        pos.assign(static_cast<size_t>(T * nq * cap), 0);
        std::vector<TopK> heaps(static_cast<size_t>(T * nq));
        for (int64_t c = 0; c < T * nq; ++c)
            heaps[c] = TopK{kNegInf, 0, cap, score.data() + c * cap, pos.data() + c * cap, ix.idp(), nullptr};
        scan_raw(b, heaps.data());
        for (int64_t i = 0; i < nq; ++i)  // merge into the first thread's heaps
            for (int64_t t = 1; t < T; ++t) {
                const TopK& h = heaps[t * nq + i];
                for (int32_t c = 0; c < h.size; ++c) topk_push(heaps[i], h.score[c], h.pos[c]);
            }
        heaps.resize(static_cast<size_t>(nq));
        return heaps;
    }

    // Every position whose scan value (the upper bound) reaches threshold[i], per query.
    std::vector<std::vector<int64_t>> collect(const QueryBatch& b, const std::vector<float>& threshold) const {
        const int64_t nq = b.nq, T = scan_threads();
        std::vector<Collector> sinks(static_cast<size_t>(T * nq));
        std::vector<TopK> heaps(static_cast<size_t>(T * nq));
        for (int64_t t = 0; t < T; ++t)
            for (int64_t i = 0; i < nq; ++i)
                heaps[t * nq + i] = TopK{threshold[i], 0, 0, nullptr, nullptr, ix.idp(), &sinks[t * nq + i]};
        scan_raw(b, heaps.data());
        std::vector<std::vector<int64_t>> out(static_cast<size_t>(nq));
        for (int64_t i = 0; i < nq; ++i)  // threads scan disjoint panels: no position twice
            for (int64_t t = 0; t < T; ++t) out[i].insert(out[i].end(), sinks[t * nq + i].pos.begin(), sinks[t * nq + i].pos.end());
        return out;
    }

    // Scores of query i of b for the candidates e (their pos), as the final ranking uses them:
    // float32 (exact) for float32 storage and exact modes, the codes' estimate otherwise.
    void rescore(const QueryBatch& b, int64_t i, std::vector<Entry>& e, std::vector<float>& buf) const {
        const int64_t d = ix.dim();
        ix.rescored_.fetch_add(static_cast<int64_t>(e.size()), std::memory_order_relaxed);
        if (st() == Storage::F32 || ix.has_rows()) {
            constexpr size_t kChunk = 256;
            std::vector<const float*> rows(kChunk);
            std::vector<float> out(kChunk);
            buf.resize(kChunk * d);
            for (size_t c0 = 0; c0 < e.size(); c0 += kChunk) {
                const size_t cnt = std::min(kChunk, e.size() - c0);
                for (size_t c = 0; c < cnt; ++c) {
                    float* slot = buf.data() + c * d;
                    if (ix.has_rows()) {
                        rows[c] = ix.row(e[c0 + c].pos, slot);
                    } else {
                        ix.codec_.decode_panel(ix.panels_.data(), nullptr, e[c0 + c].pos, slot);
                        rows[c] = slot;
                    }
                }
                kern.dots(b.q.data() + i * d, rows.data(), static_cast<int64_t>(cnt), d, out.data());
                for (size_t c = 0; c < cnt; ++c) e[c0 + c].score = out[c];
            }
        } else if (ix.has_records()) {
            std::vector<uint8_t> rec(ix.codec_.record_bytes());
            for (Entry& x : e) x.score = ix.codec_.rescore_record(b, i, ix.record(x.pos, rec.data()));
        } else {
            for (Entry& x : e) x.score = ix.codec_.rescore_panel(b, i, ix.panels_.data(), ix.meta_.as<float>(), x.pos);
        }
    }

    void write(std::vector<Entry>& e, float* os, int64_t* oi) const {
        const size_t top = std::min<size_t>(e.size(), static_cast<size_t>(k));
        std::partial_sort(e.begin(), e.begin() + top, e.end(), better);
        for (int64_t c = 0; c < k; ++c) {
            const bool have = c < static_cast<int64_t>(top);
            os[c] = have ? e[c].score : kNegInf;
            oi[c] = have ? e[c].id : -1;
        }
    }

    // One block of queries through the scan and re-scoring. Exact modes: a query whose result
    // the bound does not prove (kernels.h, codec.h) is scanned once more, collecting every vector
    // whose bound reaches its L, and all of those are re-scored.
    void run(const QueryBatch& b, int64_t want, float* os, int64_t* oi) const {
        const bool prove = ix.has_rows();
        const int32_t cap = static_cast<int32_t>(std::min<int64_t>(std::min(want, avail), std::numeric_limits<int32_t>::max()));
        std::vector<float> hs;
        std::vector<int64_t> hp;
        const std::vector<TopK> heaps = scan(b, cap, hs, hp);
        std::vector<float> L(static_cast<size_t>(b.nq), std::numeric_limits<float>::quiet_NaN());
        std::atomic<int64_t> next{0};
        const int64_t nq = b.nq;
        parallel(nq >= 4 * kFinishChunk ? threads : 1, [&](int64_t) {
            std::vector<Entry> e;
            std::vector<float> buf;
            for (int64_t q0; (q0 = next.fetch_add(kFinishChunk)) < nq;) {
                for (int64_t i = q0; i < std::min(nq, q0 + kFinishChunk); ++i) {
                    const TopK& h = heaps[i];
                    e.resize(h.size);
                    for (int32_t c = 0; c < h.size; ++c) e[c] = {h.score[c], ix.idp()[h.pos[c]], h.pos[c]};
                    if (st() != Storage::F32) rescore(b, i, e, buf);
                    write(e, os + i * k, oi + i * k);
                    // Proven when nothing was left out, or when all that was has u below L.
                    const bool left_out = h.size == h.cap && h.cap < avail;
                    if (prove && left_out && static_cast<int64_t>(e.size()) >= k && !(h.threshold < e[k - 1].score))
                        L[i] = e[k - 1].score;
                }
            }
        });
        std::vector<int64_t> pending;
        for (int64_t i = 0; i < nq; ++i)
            if (L[i] == L[i]) pending.push_back(i);
        ix.rescans_.fetch_add(static_cast<int64_t>(pending.size()), std::memory_order_relaxed);
        // Collected lists can reach the whole index (everything tied within the bound): a few
        // queries at a time keep that under ~256 MB.
        const int64_t per_round = std::clamp<int64_t>((int64_t{256} << 20) / (12 * std::max<int64_t>(1, ix.n_)), 1, 64);
        for (size_t r0 = 0; r0 < pending.size(); r0 += static_cast<size_t>(per_round)) {
            const std::vector<int64_t> rows(pending.begin() + r0, pending.begin() + std::min(pending.size(), r0 + static_cast<size_t>(per_round)));
            const QueryBatch sub = take(b, rows, ix.dim());
            std::vector<float> thresholds(rows.size());
            for (size_t r = 0; r < rows.size(); ++r) thresholds[r] = L[rows[r]];
            const std::vector<std::vector<int64_t>> found = collect(sub, thresholds);
            std::atomic<int64_t> nxt{0};
            parallel(std::min<int64_t>(threads, static_cast<int64_t>(rows.size())), [&](int64_t) {
                std::vector<Entry> e;
                std::vector<float> buf;
                for (int64_t r; (r = nxt.fetch_add(1)) < static_cast<int64_t>(rows.size());) {
                    e.clear();
                    for (int64_t p : found[r]) e.push_back({0.0f, ix.idp()[p], p});
                    rescore(sub, r, e, buf);
                    write(e, os + rows[r] * k, oi + rows[r] * k);
                }
            });
        }
    }

    // Filtered search over a few allowed vectors: score each one directly.
    void direct(const QueryBatch& b, const std::vector<int64_t>& positions, float* os, int64_t* oi) const {
        std::atomic<int64_t> next{0};
        parallel(b.nq >= 4 * kFinishChunk ? threads : 1, [&](int64_t) {
            std::vector<Entry> e;
            std::vector<float> buf;
            for (int64_t i; (i = next.fetch_add(1)) < b.nq;) {
                e.resize(positions.size());
                for (size_t c = 0; c < positions.size(); ++c) e[c] = {0.0f, ix.idp()[positions[c]], positions[c]};
                rescore(b, i, e, buf);  // float32 storage: decode + dots, the scan's own numbers
                write(e, os + i * k, oi + i * k);
            }
        });
    }
};

py::tuple Index::search(const py::array& queries, int64_t k, int64_t oversample, int threads, bool force_generic,
                        const py::object& allowed_ids) const {
    if (k < 1) throw py::value_error(cat("k must be >= 1, got ", k));
    if (oversample < 1) throw py::value_error(cat("oversample must be >= 1, got ", oversample));
    if (threads < 0) throw py::value_error(cat("threads must be >= 0 (0: the CPUs this process may use), got ", threads));
    const int64_t d = dim();
    const Matrix m = check_matrix(queries, d, "queries");
    if (m.rows == 0) throw py::value_error("empty query batch: queries has 0 rows");
    std::vector<int64_t> allowed;
    const bool filtered = !allowed_ids.is_none();
    if (filtered) allowed = check_ids(py::array(allowed_ids), "allowed_ids");
    const int64_t n_now = size();
    if (k > std::max(n_now, kMaxPad))
        throw py::value_error(cat("k = ", k, " is larger than the index (", n_now, " vectors); k may exceed the index size only up to ",
                                  kMaxPad, " (the rest of each row is padding)"));
    const int64_t nq = m.rows;
    py::array_t<float> out_scores({nq, k});
    py::array_t<int64_t> out_ids({nq, k});
    float* os = out_scores.mutable_data();
    int64_t* oi = out_ids.mutable_data();
    const Kernels& kern = best_kernels(force_generic);
    {
        py::gil_scoped_release nogil;  // no Python object is touched inside
        const bool norm = metric_ == Metric::Cosine;
        const std::vector<double> norms = check_rows(m, d, norm, "queries");
        std::shared_lock lock(mu_);
        const int64_t n = n_;
        const int64_t T = threads > 0 ? threads : usable_cpus();
        // Filtered: the allowed positions (unknown ids are ignored), as a list or a bitmap.
        std::vector<int64_t> positions;
        std::vector<uint16_t> bitmap;
        if (filtered) {
            ensure_idmap();
            std::vector<uint8_t> seen(static_cast<size_t>(n), 0);
            for (int64_t id : allowed) {
                const int64_t p = idmap_.find(id);
                if (p >= 0 && !seen[p]) {
                    seen[p] = 1;
                    positions.push_back(p);
                }
            }
        }
        const int64_t avail = filtered ? static_cast<int64_t>(positions.size()) : n;
        const bool direct = filtered && static_cast<int64_t>(positions.size()) * 32 <= n;
        if (filtered && !direct) {
            bitmap.assign(static_cast<size_t>((n + kLanes - 1) / kLanes), 0);
            for (int64_t p : positions) bitmap[p / kLanes] |= static_cast<uint16_t>(1u << (p % kLanes));
        }
        std::fill(os, os + nq * k, kNegInf);
        std::fill(oi, oi + nq * k, int64_t{-1});
        const Search s{*this, kern, k, T, bitmap.empty() ? nullptr : bitmap.data(), avail};
        // Float32 storage keeps k candidates (its scan scores are final); compressed storage
        // k * oversample, re-scored.
        const int64_t want = codec_.storage() == Storage::F32 ? k : (k > avail / oversample ? avail : k * oversample);
        const int64_t per_query = T * std::max<int64_t>(1, std::min(want, avail)) * 12 + d * 12 + 64;
        const int64_t block = std::max<int64_t>(1, std::min(nq, kBudget / per_query));
        const bool bounds = has_rows();
        std::vector<float> qf;
        QueryBatch b;
        for (int64_t q0 = 0; avail > 0 && q0 < nq; q0 += block) {
            const int64_t nb = std::min(block, nq - q0);
            qf.resize(static_cast<size_t>(nb * d));
            for (int64_t i = 0; i < nb; ++i) prepare_row(m.data + (q0 + i) * d, d, norms[q0 + i], norm, qf.data() + i * d);
            codec_.prepare(qf.data(), nb, bounds, b);
            if (direct) s.direct(b, positions, os + q0 * k, oi + q0 * k);
            else s.run(b, want, os + q0 * k, oi + q0 * k);
        }
    }
    return py::make_tuple(out_scores, out_ids);
}

}  // namespace fastemb
