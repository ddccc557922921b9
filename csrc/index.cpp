// fastemb::Index and its Python binding (see index.h, kernels.h for the layout and kernels).
#include "index.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_set>

namespace py = pybind11;

namespace fastemb {

namespace {

constexpr int64_t kMaxDim = 65536;  // keeps the int8 int32 accumulator exact (see kernels_avx512_i8)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <class... T>
std::string cat(const T&... parts) {
    std::ostringstream s;
    (s << ... << parts);
    return s.str();
}

// Refuses (never converts) anything but float32 C-contiguous [rows, dim], so the Python layer
// decides the conversion policy in one place.
Matrix check_matrix(const py::array& a, int64_t dim, const char* what) {
    if (!py::dtype::of<float>().is(a.dtype()))
        throw py::value_error(cat(what, " must be float32, got dtype ", std::string(py::str(a.dtype()))));
    if (a.ndim() != 2) throw py::value_error(cat(what, " must be 2-D [n, ", dim, "], got ", a.ndim(), " dimensions"));
    if (a.shape(1) != dim)
        throw py::value_error(cat(what, " have dimension ", a.shape(1), ", the index has dimension ", dim));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(cat(what, " must be C-contiguous, got strides (", a.strides(0), ", ", a.strides(1), ")"));
    return {static_cast<const float*>(a.data()), a.shape(0)};
}

// Copies rows into out, checking finiteness and norm; L2-normalizes when asked. Called without
// the GIL; throws ValueError naming the first bad row.
void prepare_rows(const Matrix& m, int64_t d, bool normalize, const char* what, float* out) {
    // |q . x| <= |q| |x| < FLT_MAX when both norms are below sqrt(FLT_MAX): no score overflows.
    const double max_norm = std::sqrt(static_cast<double>(std::numeric_limits<float>::max()));
    for (int64_t i = 0; i < m.rows; ++i) {
        const float* x = m.data + i * d;
        double ss = 0.0;
        for (int64_t j = 0; j < d; ++j) {
            if (!std::isfinite(x[j])) throw py::value_error(cat(what, " row ", i, " column ", j, " is not finite (", x[j], ")"));
            ss += static_cast<double>(x[j]) * x[j];
        }
        const double norm = std::sqrt(ss);
        if (norm >= max_norm) throw py::value_error(cat(what, " row ", i, " has norm ", norm, ", above ", max_norm, " (scores would overflow float32)"));
        float* o = out + i * d;
        if (normalize) {
            if (norm == 0.0) throw py::value_error(cat(what, " row ", i, " is all zeros: cosine similarity is undefined"));
            for (int64_t j = 0; j < d; ++j) o[j] = static_cast<float>(x[j] / norm);
        } else {
            std::memcpy(o, x, sizeof(float) * d);
        }
    }
}

inline uint16_t to_bf16(float f) {  // round to nearest even; inputs are finite
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

// Symmetric per-vector int8 quantization: codes in [-127, 127], x ~ codes * step.
inline float quantize(const float* x, int64_t d, int8_t* codes) {
    float amax = 0.0f;
    for (int64_t j = 0; j < d; ++j) amax = std::max(amax, std::fabs(x[j]));
    if (amax == 0.0f) {
        std::memset(codes, 0, d);
        return 0.0f;
    }
    const float inv = 127.0f / amax;
    for (int64_t j = 0; j < d; ++j) {
        const float c = std::nearbyint(x[j] * inv);
        codes[j] = static_cast<int8_t>(std::clamp(c, -127.0f, 127.0f));
    }
    return amax / 127.0f;
}

std::vector<int64_t> check_ids(const py::array& a, const char* what) {
    if (a.ndim() != 1) throw py::value_error(cat(what, " must be 1-D, got ", a.ndim(), " dimensions"));
    if (!py::dtype::of<int64_t>().is(a.dtype()))
        throw py::value_error(cat(what, " must be int64, got dtype ", std::string(py::str(a.dtype()))));
    // Copy through a contiguous view: ids are small next to the vectors.
    auto c = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    return std::vector<int64_t>(c.data(), c.data() + c.size());
}

struct Entry {
    float score;
    int64_t id;
    int64_t pos;
};

inline bool better(const Entry& a, const Entry& b) { return a.score > b.score || (a.score == b.score && a.id < b.id); }

}  // namespace

Index::Index(int64_t dim, const std::string& metric, const std::string& storage) : d_(dim) {
    if (dim < 1 || dim > kMaxDim) throw py::value_error(cat("dim must be in [1, ", kMaxDim, "], got ", dim));
    if (metric == "cosine") metric_ = Metric::Cosine;
    else if (metric == "ip") metric_ = Metric::IP;
    else throw py::value_error(cat("metric must be 'cosine' or 'ip', got '", metric, "'"));
    if (storage == "float32") storage_ = Storage::F32;
    else if (storage == "bfloat16") storage_ = Storage::BF16;
    else if (storage == "int8") storage_ = Storage::I8;
    else throw py::value_error(cat("storage must be 'float32', 'bfloat16' or 'int8', got '", storage, "'"));
    const int g = group();
    dp_ = (d_ + g - 1) / g * g;
}

std::string Index::storage() const {
    return storage_ == Storage::F32 ? "float32" : storage_ == Storage::BF16 ? "bfloat16" : "int8";
}

size_t Index::offset(int64_t pos, int64_t j) const {
    const int64_t g = group();
    return static_cast<size_t>((pos / kLanes) * dp_ * kLanes + (j / g) * kLanes * g + (pos % kLanes) * g + j % g);
}

void Index::grow(int64_t n) {
    const size_t lanes = static_cast<size_t>((n + kLanes - 1) / kLanes * kLanes);
    const size_t elems = lanes * static_cast<size_t>(dp_);
    switch (storage_) {
        case Storage::F32: if (f32_.size() < elems) f32_.resize(elems, 0.0f); break;
        case Storage::BF16: if (bf16_.size() < elems) bf16_.resize(elems, 0); break;
        case Storage::I8:
            if (i8_.size() < elems) i8_.resize(elems, 0);
            if (vscale_.size() < lanes) vscale_.resize(lanes, 0.0f);
            if (vcorr_.size() < lanes) vcorr_.resize(lanes, 0);
            break;
    }
    if (storage_ != Storage::F32 && rows_.size() < static_cast<size_t>(n * d_)) rows_.resize(static_cast<size_t>(n * d_));
}

void Index::write(int64_t pos, const float* x) {
    switch (storage_) {
        case Storage::F32:
            for (int64_t j = 0; j < d_; ++j) f32_[offset(pos, j)] = x[j];
            return;
        case Storage::BF16:
            for (int64_t j = 0; j < d_; ++j) bf16_[offset(pos, j)] = to_bf16(x[j]);
            break;
        case Storage::I8: {
            std::vector<int8_t> codes(d_);
            vscale_[pos] = quantize(x, d_, codes.data());
            int32_t sum = 0;
            for (int64_t j = 0; j < d_; ++j) {
                i8_[offset(pos, j)] = codes[j];
                sum += codes[j];
            }
            vcorr_[pos] = 128 * sum;
            break;
        }
    }
    std::memcpy(rows_.data() + pos * d_, x, sizeof(float) * d_);
}

void Index::move(int64_t src, int64_t dst) {
    for (int64_t j = 0; j < dp_; ++j) {
        const size_t s = offset(src, j), t = offset(dst, j);
        switch (storage_) {
            case Storage::F32: f32_[t] = f32_[s]; break;
            case Storage::BF16: bf16_[t] = bf16_[s]; break;
            case Storage::I8: i8_[t] = i8_[s]; break;
        }
    }
    if (storage_ == Storage::I8) {
        vscale_[dst] = vscale_[src];
        vcorr_[dst] = vcorr_[src];
    }
    if (storage_ != Storage::F32) std::memcpy(rows_.data() + dst * d_, rows_.data() + src * d_, sizeof(float) * d_);
    ids_[dst] = ids_[src];
    pos_[ids_[dst]] = dst;
}

void Index::clear(int64_t pos) {  // padding lanes hold zeros, as after grow()
    for (int64_t j = 0; j < dp_; ++j) {
        const size_t t = offset(pos, j);
        switch (storage_) {
            case Storage::F32: f32_[t] = 0.0f; break;
            case Storage::BF16: bf16_[t] = 0; break;
            case Storage::I8: i8_[t] = 0; break;
        }
    }
    if (storage_ == Storage::I8) {
        vscale_[pos] = 0.0f;
        vcorr_[pos] = 0;
    }
}

void Index::read_row(int64_t pos, float* out) const {
    if (storage_ == Storage::F32) {
        for (int64_t j = 0; j < d_; ++j) out[j] = f32_[offset(pos, j)];
    } else {
        std::memcpy(out, rows_.data() + pos * d_, sizeof(float) * d_);
    }
}

py::array_t<int64_t> Index::add(const py::array& vectors, const py::object& ids, bool normalize) {
    const Matrix m = check_matrix(vectors, d_, "vectors");
    std::vector<int64_t> new_ids;
    const bool explicit_ids = !ids.is_none();
    if (explicit_ids) {
        new_ids = check_ids(py::array(ids), "ids");
        if (static_cast<int64_t>(new_ids.size()) != m.rows)
            throw py::value_error(cat("got ", m.rows, " vectors but ", new_ids.size(), " ids"));
    }
    {
        py::gil_scoped_release nogil;
        std::vector<float> rows(static_cast<size_t>(m.rows * d_));
        prepare_rows(m, d_, normalize && metric_ == Metric::Cosine, "vectors", rows.data());

        std::unique_lock lock(mu_);
        if (explicit_ids) {  // validate everything first: a failed add changes nothing
            std::unordered_set<int64_t> seen;
            seen.reserve(new_ids.size());
            for (int64_t id : new_ids) {
                if (id < 0) throw py::value_error(cat("ids must be >= 0 (-1 marks missing results), got ", id));
                if (!seen.insert(id).second) throw py::value_error(cat("duplicate id ", id, " in this batch"));
                if (pos_.count(id)) throw py::value_error(cat("id ", id, " is already in the index"));
            }
        } else {
            new_ids.resize(m.rows);
            for (int64_t i = 0; i < m.rows; ++i) new_ids[i] = next_id_ + i;
        }
        grow(n_ + m.rows);
        ids_.reserve(n_ + m.rows);
        pos_.reserve(n_ + m.rows);
        for (int64_t i = 0; i < m.rows; ++i) {
            write(n_ + i, rows.data() + i * d_);
            ids_.push_back(new_ids[i]);
            pos_[new_ids[i]] = n_ + i;
            next_id_ = std::max(next_id_, new_ids[i] + 1);
        }
        n_ += m.rows;
    }
    py::array_t<int64_t> out(static_cast<py::ssize_t>(new_ids.size()));
    std::copy(new_ids.begin(), new_ids.end(), out.mutable_data());
    return out;
}

void Index::remove(const py::array& ids) {
    const std::vector<int64_t> del = check_ids(ids, "ids");
    py::gil_scoped_release nogil;
    std::unique_lock lock(mu_);
    std::unordered_set<int64_t> seen;
    for (int64_t id : del) {  // validate everything first: a failed remove changes nothing
        if (!seen.insert(id).second) throw py::value_error(cat("duplicate id ", id, " in remove()"));
        if (!pos_.count(id)) throw py::value_error(cat("id ", id, " is not in the index"));
    }
    for (int64_t id : del) {
        const int64_t pos = pos_.at(id), last = n_ - 1;
        pos_.erase(id);
        if (pos != last) move(last, pos);  // swap-remove: storage stays dense
        clear(last);
        ids_.pop_back();
        --n_;
    }
}

int64_t Index::size() const {
    std::shared_lock lock(mu_);
    return n_;
}

int64_t Index::next_id() const {
    std::shared_lock lock(mu_);
    return next_id_;
}

void Index::set_next_id(int64_t v) {
    std::unique_lock lock(mu_);
    for (int64_t id : ids_)
        if (id >= v) throw py::value_error(cat("next_id ", v, " must exceed every stored id (found ", id, ")"));
    next_id_ = v;
}

int64_t Index::memory_bytes() const {
    std::shared_lock lock(mu_);
    return static_cast<int64_t>(f32_.size() * 4 + bf16_.size() * 2 + i8_.size() + vscale_.size() * 4 +
                                vcorr_.size() * 4 + rows_.size() * 4 + ids_.size() * 8);
}

py::array_t<float> Index::vectors() const {
    std::shared_lock lock(mu_);
    py::array_t<float> out({n_, d_});
    float* o = out.mutable_data();
    for (int64_t i = 0; i < n_; ++i) read_row(i, o + i * d_);
    return out;
}

py::tuple Index::snapshot() const {
    std::shared_lock lock(mu_);  // one lock: ids and vectors from the same moment
    py::array_t<int64_t> ids(n_);
    std::copy(ids_.begin(), ids_.end(), ids.mutable_data());
    py::array_t<float> vecs({n_, d_});
    float* o = vecs.mutable_data();
    for (int64_t i = 0; i < n_; ++i) read_row(i, o + i * d_);
    return py::make_tuple(ids, vecs, next_id_);
}

py::array_t<int64_t> Index::ids() const {
    std::shared_lock lock(mu_);
    py::array_t<int64_t> out(n_);
    std::copy(ids_.begin(), ids_.end(), out.mutable_data());
    return out;
}

void Index::search_nogil(const Matrix& m, int64_t k, int64_t oversample, int threads, const Kernels& kern,
                         float* os, int64_t* oi) const {
    const int64_t nq = m.rows;
    std::vector<float> q(static_cast<size_t>(nq * d_));
    prepare_rows(m, d_, metric_ == Metric::Cosine, "queries", q.data());

    std::shared_lock lock(mu_);
    const int64_t n = n_;
    // Compressed storage keeps k * oversample candidates and re-scores them in float32.
    const int64_t want = storage_ == Storage::F32 ? k : (k > n / oversample ? n : k * oversample);
    const int64_t cap = std::min(want, n);
    if (cap > std::numeric_limits<int32_t>::max()) throw py::value_error(cat("k = ", k, " is too large"));
    if (cap == 0) {
        std::fill(os, os + nq * k, kNegInf);
        std::fill(oi, oi + nq * k, int64_t{-1});
        return;
    }

    // Queries in the storage's number format, [nq, dp], zero padded.
    std::vector<uint16_t> qb;
    std::vector<int8_t> qi;
    std::vector<float> qscale;
    const void* qdata = nullptr;
    ScanFn scan = kern.f32;
    if (storage_ == Storage::F32) {
        qdata = q.data();
    } else if (storage_ == Storage::BF16) {
        qb.assign(static_cast<size_t>(nq * dp_), 0);
        for (int64_t i = 0; i < nq; ++i)
            for (int64_t j = 0; j < d_; ++j) qb[i * dp_ + j] = to_bf16(q[i * d_ + j]);
        qdata = qb.data();
        scan = kern.bf16;
    } else {
        qi.assign(static_cast<size_t>(nq * dp_), 0);
        qscale.resize(nq);
        for (int64_t i = 0; i < nq; ++i) qscale[i] = quantize(q.data() + i * d_, d_, qi.data() + i * dp_);
        qdata = qi.data();
        scan = kern.i8;
    }

    // Work is split into database ranges (tasks) handed out through an atomic counter, so a
    // thread that the OS does not schedule (a busy machine) delays nothing: the others take its
    // share. Each thread keeps its own heaps for every query; they are merged at the end.
    const int64_t npanels = (n + kLanes - 1) / kLanes;
    constexpr int64_t kMinPanels = 256;  // 4,096 vectors: below that a thread costs more than it saves
    int64_t T = threads > 0 ? threads : std::max<int64_t>(1, std::thread::hardware_concurrency());
    const int64_t tasks = std::max<int64_t>(1, std::min(npanels / kMinPanels, 16 * T));
    T = std::min(T, tasks);
    std::vector<float> hscore(static_cast<size_t>(T * nq * cap));
    std::vector<int64_t> hpos(static_cast<size_t>(T * nq * cap));
    std::vector<TopK> heaps(static_cast<size_t>(T * nq));
    for (int64_t c = 0; c < T * nq; ++c)
        heaps[c] = TopK{kNegInf, 0, static_cast<int32_t>(cap), hscore.data() + c * cap, hpos.data() + c * cap, ids_.data()};
    std::vector<std::vector<uint32_t>> work(static_cast<size_t>(T));
    for (auto& w : work) w.resize(static_cast<size_t>((nq + 16) * dp_));
    std::vector<std::exception_ptr> errors(static_cast<size_t>(T));

    std::atomic<int64_t> next_task{0};
    auto scan_tasks = [&](int64_t t) {
        ScanArgs a{};
        a.queries = qdata;
        a.qscale = qscale.empty() ? nullptr : qscale.data();
        a.nq = nq;
        a.panels = storage_ == Storage::F32 ? static_cast<const void*>(f32_.data())
                   : storage_ == Storage::BF16 ? static_cast<const void*>(bf16_.data())
                                               : static_cast<const void*>(i8_.data());
        a.vscale = vscale_.data();
        a.vcorr = vcorr_.data();
        a.n = n;
        a.dp = dp_;
        a.heaps = heaps.data() + t * nq;
        a.work = work[t].data();
        a.pack = true;  // once per thread
        for (int64_t j; (j = next_task.fetch_add(1)) < tasks;) {
            a.p0 = npanels * j / tasks;
            a.p1 = npanels * (j + 1) / tasks;
            scan(a);
            a.pack = false;
        }
    };

    // Merge the threads' heaps into the first set, re-score (compressed storage), sort, pad.
    constexpr int64_t kFinishChunk = 32;
    std::atomic<int64_t> next_query{0};
    auto finish = [&](int64_t) {
        std::vector<Entry> e;
        std::vector<const float*> rowp;
        std::vector<float> exact;
        for (int64_t q0; (q0 = next_query.fetch_add(kFinishChunk)) < nq;) {
            for (int64_t i = q0; i < std::min(nq, q0 + kFinishChunk); ++i) {
                for (int64_t t = 1; t < T; ++t) {
                    const TopK& h = heaps[t * nq + i];
                    for (int32_t c = 0; c < h.size; ++c) topk_push(heaps[i], h.score[c], h.pos[c]);
                }
                const TopK& h = heaps[i];
                e.resize(h.size);
                for (int32_t c = 0; c < h.size; ++c) e[c] = {h.score[c], ids_[h.pos[c]], h.pos[c]};
                if (storage_ != Storage::F32) {
                    rowp.resize(e.size());
                    exact.resize(e.size());
                    for (size_t c = 0; c < e.size(); ++c) rowp[c] = rows_.data() + e[c].pos * d_;
                    kern.dots(q.data() + i * d_, rowp.data(), static_cast<int64_t>(e.size()), d_, exact.data());
                    for (size_t c = 0; c < e.size(); ++c) e[c].score = exact[c];
                }
                const size_t top = std::min<size_t>(e.size(), static_cast<size_t>(k));
                std::partial_sort(e.begin(), e.begin() + top, e.end(), better);
                for (int64_t c = 0; c < k; ++c) {
                    const bool have = c < static_cast<int64_t>(top);
                    os[i * k + c] = have ? e[c].score : kNegInf;
                    oi[i * k + c] = have ? e[c].id : -1;
                }
            }
        }
    };

    // Runs fn(t) on T threads (the caller is thread 0); an exception must not escape a std::thread.
    auto parallel = [&](auto&& fn, int64_t nthreads) {
        auto guarded = [&](int64_t t) {
            try {
                fn(t);
            } catch (...) {
                errors[t] = std::current_exception();
            }
        };
        std::vector<std::thread> pool;
        for (int64_t t = 1; t < nthreads; ++t) pool.emplace_back(guarded, t);
        guarded(0);
        for (auto& th : pool) th.join();
        for (auto& e : errors)
            if (e) std::rethrow_exception(e);
    };
    parallel(scan_tasks, T);
    // Finishing is cheap for float32 (a sort of k entries); compressed storage re-scores
    // k * oversample candidates per query, worth threads for large batches.
    parallel(finish, storage_ != Storage::F32 && nq >= 4 * kFinishChunk ? T : 1);
}

py::tuple Index::search(const py::array& queries, int64_t k, int64_t oversample, int threads, bool force_generic) const {
    if (k < 1) throw py::value_error(cat("k must be >= 1, got ", k));
    if (oversample < 1) throw py::value_error(cat("oversample must be >= 1, got ", oversample));
    if (threads < 0) throw py::value_error(cat("threads must be >= 0 (0: all cores), got ", threads));
    const Matrix m = check_matrix(queries, d_, "queries");
    if (m.rows == 0) throw py::value_error("empty query batch: queries has 0 rows");
    const int64_t nq = m.rows;
    py::array_t<float> out_scores({nq, k});
    py::array_t<int64_t> out_ids({nq, k});
    float* os = out_scores.mutable_data();
    int64_t* oi = out_ids.mutable_data();
    const Kernels& kern = best_kernels(force_generic);

    {
        py::gil_scoped_release nogil;  // no Python object is touched inside
        search_nogil(m, k, oversample, threads, kern, os, oi);
    }
    return py::make_tuple(out_scores, out_ids);
}

void register_index(py::module_& m) {
    py::class_<Index>(m, "Index", "Exact top-k search; use fastemb.Index (the Python wrapper) instead.")
        .def(py::init<int64_t, const std::string&, const std::string&>(), py::arg("dim"), py::arg("metric"),
             py::arg("storage"))
        .def("add", &Index::add, py::arg("vectors"), py::arg("ids"), py::arg("normalize") = true,
             "vectors: float32 C-contiguous [n, dim]; ids: int64 [n] or None (next free ids) -> ids int64 [n].")
        .def("search", &Index::search, py::arg("queries"), py::arg("k"), py::arg("oversample") = 4,
             py::arg("threads") = 0, py::arg("force_generic") = false,
             "queries: float32 C-contiguous [q, dim] -> (scores float32 [q, k], ids int64 [q, k]); "
             "missing results have score -inf and id -1.")
        .def("remove", &Index::remove, py::arg("ids"))
        .def("__len__", &Index::size)
        .def("vectors", &Index::vectors)
        .def("ids", &Index::ids)
        .def("snapshot", &Index::snapshot, "(ids int64 [n], vectors float32 [n, dim], next_id), consistent.")
        .def_property_readonly("dim", &Index::dim)
        .def_property_readonly("metric", &Index::metric)
        .def_property_readonly("storage", &Index::storage)
        .def_property("next_id", &Index::next_id, &Index::set_next_id)
        .def_property_readonly("memory_bytes", &Index::memory_bytes);
    m.def("kernels", [](bool force_generic) {
        const Kernels& k = best_kernels(force_generic);
        py::dict d;
        d["float32"] = k.f32_name;
        d["bfloat16"] = k.bf16_name;
        d["int8"] = k.i8_name;
        return d;
    }, py::arg("force_generic") = false, "Names of the kernels search() uses on this CPU.");
}

}  // namespace fastemb
