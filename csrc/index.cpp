// fastemb::Index: storage, add / remove / reset / reconstruct, and the Python binding (see
// index.h; search in search.cpp, the file format in format.cpp).
#include "index.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "checks.h"
#include "system.h"

namespace py = pybind11;

namespace fastemb {

namespace {

constexpr int64_t kMaxDim = 65536;  // keeps the int8 int32 accumulator exact (see kernels_avx512_i8)

Storage parse_storage(const std::string& s) {
    if (s == "float32") return Storage::F32;
    if (s == "bfloat16") return Storage::BF16;
    if (s == "int8") return Storage::I8;
    if (s == "binary") return Storage::Bin;
    throw py::value_error(cat("storage must be 'float32', 'bfloat16', 'int8' or 'binary', got '", s, "'"));
}

int64_t check_dim(int64_t dim) {
    if (dim < 1 || dim > kMaxDim) throw py::value_error(cat("dim must be in [1, ", kMaxDim, "], got ", dim));
    return dim;
}

// Reads exactly n bytes at `offset`; a short file or an I/O error is a RuntimeError.
void pread_all(const Mapping& m, void* dst, size_t n, uint64_t offset) {
    auto* p = static_cast<uint8_t*>(dst);
    while (n > 0) {
        const ssize_t got = ::pread(m.fd(), p, n, static_cast<off_t>(offset));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0)
            throw std::runtime_error(cat(m.path(), ": read of ", n, " bytes at offset ", offset, " failed: ",
                                         got < 0 ? std::strerror(errno) : "unexpected end of file"));
        p += got;
        n -= static_cast<size_t>(got);
        offset += static_cast<uint64_t>(got);
    }
}

// Sorted copy, adjacent equal: one contiguous allocation (a hash set of a million ids would
// leave megabytes of small blocks in the heap after a remove that is meant to give memory back).
void check_unique(const std::vector<int64_t>& ids, const char* where) {
    std::vector<int64_t> s(ids);
    std::sort(s.begin(), s.end());
    const auto dup = std::adjacent_find(s.begin(), s.end());
    if (dup != s.end()) throw py::value_error(cat("duplicate id ", *dup, " ", where));
}

}  // namespace

Index::Index(int64_t dim, const std::string& metric, const std::string& storage, bool exact)
    : codec_(check_dim(dim), parse_storage(storage)), exact_(exact) {
    if (metric == "cosine") metric_ = Metric::Cosine;
    else if (metric == "ip") metric_ = Metric::IP;
    else throw py::value_error(cat("metric must be 'cosine' or 'ip', got '", metric, "'"));
    if (codec_.storage() == Storage::F32 && !exact)
        throw py::value_error("storage 'float32' is always exact: exact=False needs 'bfloat16', 'int8' or 'binary'");
    if (codec_.storage() == Storage::Bin && exact)
        throw py::value_error("storage 'binary' has no error bound and cannot be exact: use 'int8' or 'bfloat16' for exact=True");
}

std::string Index::storage() const {
    switch (codec_.storage()) {
        case Storage::F32: return "float32";
        case Storage::BF16: return "bfloat16";
        case Storage::I8: return "int8";
        case Storage::Bin: return "binary";
    }
    return "?";
}

void Index::check_writable(const char* what) const {
    if (map_)
        throw py::value_error(cat(what, "(): this index was loaded with mmap=True from ", map_->path(),
                                  " and is read-only; Index.load(path) (mmap=False) gives a writable copy"));
}

void Index::grow(int64_t n) {
    const size_t panels = static_cast<size_t>((n + kLanes - 1) / kLanes);
    panels_.resize(panels * codec_.panel_bytes());
    meta_.resize(panels * codec_.meta_bytes());
    if (has_rows()) rows_.resize(static_cast<size_t>(n * dim()) * 4);
    if (has_records()) records_.resize(static_cast<size_t>(n) * codec_.record_bytes());
    ids_.resize(static_cast<size_t>(n) * 8);
}

void Index::shrink_to(int64_t n) { grow(n); }  // Buffer::resize shrinks and returns pages too

const float* Index::row(int64_t pos, float* buf) const {
    const size_t bytes = static_cast<size_t>(dim()) * 4;
    if (rows_offset_ < 0) return rows_.as<float>() + pos * dim();
    pread_all(*map_, buf, bytes, static_cast<uint64_t>(rows_offset_) + static_cast<uint64_t>(pos) * bytes);
    disk_reads_.fetch_add(1, std::memory_order_relaxed);
    return buf;
}

const uint8_t* Index::record(int64_t pos, uint8_t* buf) const {
    const size_t bytes = codec_.record_bytes();
    if (records_offset_ < 0) return records_.data() + pos * bytes;
    pread_all(*map_, buf, bytes, static_cast<uint64_t>(records_offset_) + static_cast<uint64_t>(pos) * bytes);
    disk_reads_.fetch_add(1, std::memory_order_relaxed);
    return buf;
}

void Index::ensure_idmap() const {
    std::lock_guard guard(idmap_mu_);
    if (idmap_ready_) return;
    IdMap map;
    map.reserve(n_);
    const int64_t* ids = idp();
    for (int64_t pos = 0; pos < n_; ++pos) {
        if (ids[pos] < 0 || ids[pos] > kMaxId) throw py::value_error(cat("corrupt index: stored id ", ids[pos], " at position ", pos, " is out of range"));
        if (map.find(ids[pos]) >= 0) throw py::value_error(cat("corrupt index: id ", ids[pos], " is stored twice"));
        map.put(ids[pos], pos);
    }
    idmap_ = std::move(map);
    idmap_ready_ = true;
}

void Index::decode(int64_t pos, float* out) const {
    const int64_t d = dim();
    if (has_rows()) {
        std::vector<float> buf(static_cast<size_t>(d));
        std::memcpy(out, row(pos, buf.data()), sizeof(float) * d);
    } else if (has_records()) {
        std::vector<uint8_t> buf(codec_.record_bytes());
        codec_.decode_record(record(pos, buf.data()), out);
    } else {
        codec_.decode_panel(panels_.data(), meta_.as<float>(), pos, out);
    }
}

py::array_t<int64_t> Index::add(const py::array& vectors, const py::object& ids, bool normalize) {
    const int64_t d = dim();
    const Matrix m = check_matrix(vectors, d, "vectors");
    std::vector<int64_t> new_ids;
    const bool explicit_ids = !ids.is_none();
    if (explicit_ids) {
        new_ids = check_ids(py::array(ids), "ids");
        if (static_cast<int64_t>(new_ids.size()) != m.rows)
            throw py::value_error(cat("got ", m.rows, " vectors but ", new_ids.size(), " ids"));
    }
    {
        py::gil_scoped_release nogil;
        const bool norm = normalize && metric_ == Metric::Cosine;
        const std::vector<double> norms = check_rows(m, d, norm, "vectors");
        std::vector<float> x(static_cast<size_t>(d));
        // The center of compressed storage: the mean of the first vectors added to an empty index
        // (computed before taking the lock; used only if the index is still empty then).
        const bool first = codec_.storage() != Storage::F32 && size() == 0;
        std::vector<double> mean(first ? static_cast<size_t>(d) : 0, 0.0);
        for (int64_t i = 0; !mean.empty() && i < m.rows; ++i) {
            prepare_row(m.data + i * d, d, norms[i], norm, x.data());
            for (int64_t j = 0; j < d; ++j) mean[j] += x[j];
        }

        std::unique_lock lock(mu_);
        check_writable("add");
        if (explicit_ids) {  // validate everything first: a failed add changes nothing
            for (int64_t id : new_ids) {
                if (id < 0) throw py::value_error(cat("ids must be >= 0 (-1 marks missing results), got ", id));
                if (id > kMaxId) throw py::value_error(cat("ids must be <= ", kMaxId, " (2**63 - 2), got ", id));
            }
            check_unique(new_ids, "in this batch");
            for (int64_t id : new_ids)
                if (idmap_.find(id) >= 0) throw py::value_error(cat("id ", id, " is already in the index"));
        } else if (m.rows > 0) {
            if (next_id_ > kMaxId - (m.rows - 1))
                throw py::value_error(cat("automatic ids ", next_id_, " .. ", next_id_, " + ", m.rows - 1,
                                          " would pass the largest id ", kMaxId, " (2**63 - 2); pass ids explicitly"));
            new_ids.resize(m.rows);
            for (int64_t i = 0; i < m.rows; ++i) new_ids[i] = next_id_ + i;
        }
        if (m.rows > 0) {
            if (n_ == 0 && !mean.empty()) {
                std::vector<float> c(static_cast<size_t>(d));
                for (int64_t j = 0; j < d; ++j) c[j] = static_cast<float>(mean[j] / m.rows);
                codec_.set_center(c.data());
            }
            grow(n_ + m.rows);
            idmap_.reserve(n_ + m.rows);
            int64_t* idw = ids_.as<int64_t>();
            for (int64_t i = 0; i < m.rows; ++i) {
                const int64_t pos = n_ + i;
                prepare_row(m.data + i * d, d, norms[i], norm, x.data());
                codec_.encode(x.data(), pos, panels_.data(), meta_.as<float>(), has_records() ? records_.data() + pos * codec_.record_bytes() : nullptr);
                if (has_rows()) std::memcpy(rows_.as<float>() + pos * d, x.data(), sizeof(float) * d);
                idw[pos] = new_ids[i];
                idmap_.put(new_ids[i], pos);
                next_id_ = std::max(next_id_, new_ids[i] + 1);
            }
            n_ += m.rows;
        }
    }
    py::array_t<int64_t> out(static_cast<py::ssize_t>(new_ids.size()));
    std::copy(new_ids.begin(), new_ids.end(), out.mutable_data());
    return out;
}

void Index::remove(const py::array& ids) {
    const std::vector<int64_t> del = check_ids(ids, "ids");
    py::gil_scoped_release nogil;
    std::unique_lock lock(mu_);
    check_writable("remove");
    check_unique(del, "in remove()");  // validate everything first: a failed remove changes nothing
    for (int64_t id : del)
        if (idmap_.find(id) < 0) throw py::value_error(cat("id ", id, " is not in the index"));
    if (del.empty()) return;
    const int64_t d = dim();
    const size_t rb = codec_.record_bytes();
    int64_t* idw = ids_.as<int64_t>();
    for (int64_t id : del) {
        const int64_t pos = idmap_.find(id), last = n_ - 1;
        idmap_.erase(id);
        if (pos != last) {  // swap-remove: storage stays dense
            codec_.move(last, pos, panels_.data(), meta_.as<float>());
            if (has_rows()) std::memcpy(rows_.as<float>() + pos * d, rows_.as<float>() + last * d, sizeof(float) * d);
            if (has_records()) std::memcpy(records_.data() + pos * rb, records_.data() + last * rb, rb);
            idw[pos] = idw[last];
            idmap_.put(idw[pos], pos);
        }
        codec_.clear(last, panels_.data(), meta_.as<float>());
        --n_;
    }
    shrink_to(n_);
    idmap_.shrink();
}

void Index::reset() {
    py::gil_scoped_release nogil;
    std::unique_lock lock(mu_);
    for (Buffer* b : {&panels_, &meta_, &rows_, &records_, &ids_}) b->clear();
    map_.reset();
    rows_offset_ = records_offset_ = -1;
    idmap_.clear();
    idmap_ready_ = true;
    codec_.set_center(nullptr);
    n_ = 0;
    next_id_ = 0;
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
    py::gil_scoped_release nogil;  // never wait for mu_ holding the GIL: a lock holder may need it
    std::unique_lock lock(mu_);
    if (v < 0 || v > kMaxId + 1) throw py::value_error(cat("next_id must be in [0, ", kMaxId + 1, "], got ", v));
    const int64_t* ids = idp();
    for (int64_t pos = 0; pos < n_; ++pos)
        if (ids[pos] >= v) throw py::value_error(cat("next_id ", v, " must exceed every stored id (found ", ids[pos], ")"));
    next_id_ = v;
}

int64_t Index::memory_bytes() const {
    std::shared_lock lock(mu_);
    size_t bytes = idmap_.resident() + codec_.center().size() * 4;
    for (const Buffer* b : {&panels_, &meta_, &rows_, &records_, &ids_})
        bytes += b->owned() ? b->resident() : b->size();  // a mapped scan column is resident once searched
    return static_cast<int64_t>(bytes);
}

py::array_t<float> Index::reconstruct(const py::array& ids) const {
    const std::vector<int64_t> want = check_ids(ids, "ids");
    py::array_t<float> out({static_cast<int64_t>(want.size()), dim()});
    float* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        std::shared_lock lock(mu_);
        ensure_idmap();
        std::vector<int64_t> pos(want.size());
        for (size_t i = 0; i < want.size(); ++i)
            if ((pos[i] = idmap_.find(want[i])) < 0) throw py::value_error(cat("id ", want[i], " is not in the index"));
        for (size_t i = 0; i < want.size(); ++i) decode(pos[i], o + i * dim());
    }
    return out;
}

py::dict Index::stats() const {
    py::dict d;
    d["rescored"] = rescored_.load();
    d["rescans"] = rescans_.load();
    d["disk_reads"] = disk_reads_.load();
    return d;
}

py::array_t<int64_t> Index::ids() const {
    std::shared_lock lock(mu_);
    py::array_t<int64_t> out(n_);
    if (n_) std::memcpy(out.mutable_data(), idp(), static_cast<size_t>(n_) * 8);
    return out;
}

py::array_t<float> Index::center() const {
    std::shared_lock lock(mu_);
    const std::vector<float>& c = codec_.center();
    py::array_t<float> out(static_cast<py::ssize_t>(c.size()));
    if (!c.empty()) std::memcpy(out.mutable_data(), c.data(), c.size() * 4);
    return out;
}

void register_index(py::module_& m) {
    py::class_<Index>(m, "Index", "Top-k search; use fastemb.Index (the Python wrapper) instead.")
        .def(py::init<int64_t, const std::string&, const std::string&, bool>(), py::arg("dim"), py::arg("metric"),
             py::arg("storage"), py::arg("exact"))
        .def("add", &Index::add, py::arg("vectors"), py::arg("ids"), py::arg("normalize") = true,
             "vectors: float32 C-contiguous [n, dim]; ids: int64 [n] or None (next free ids) -> ids int64 [n].")
        .def("search", &Index::search, py::arg("queries"), py::arg("k"), py::arg("oversample") = 4,
             py::arg("threads") = 0, py::arg("force_generic") = false, py::arg("allowed_ids") = py::none(),
             "queries: float32 C-contiguous [q, dim] -> (scores float32 [q, k], ids int64 [q, k]); "
             "missing results have score -inf and id -1. allowed_ids: int64 [m] or None.")
        .def("remove", &Index::remove, py::arg("ids"))
        .def("reset", &Index::reset)
        .def("reconstruct", &Index::reconstruct, py::arg("ids"), "ids int64 [m] -> float32 [m, dim]")
        .def("__len__", &Index::size)
        .def("ids", &Index::ids)
        .def("center", &Index::center)
        .def("write_fd", [](const Index& ix, int fd) {
            py::gil_scoped_release nogil;
            ix.write_fd(fd);
        }, py::arg("fd"), "Writes the index (file format version 2) to an open descriptor.")
        .def("to_bytes", &Index::to_bytes)
        .def_static("load", [](const std::string& path, bool mmap, bool verify) {
            py::gil_scoped_release nogil;
            return Index::load(path, mmap, verify);
        }, py::arg("path"), py::arg("mmap") = false, py::arg("verify") = false)
        .def_static("from_bytes", &Index::from_bytes, py::arg("data"))
        .def_property_readonly("dim", &Index::dim)
        .def_property_readonly("metric", &Index::metric)
        .def_property_readonly("storage", &Index::storage)
        .def_property_readonly("exact", &Index::exact)
        .def_property_readonly("mapped", &Index::mapped)
        .def_property("next_id", &Index::next_id, &Index::set_next_id)
        .def_property_readonly("memory_bytes", &Index::memory_bytes)
        .def("stats", &Index::stats);
    m.def("kernels", [](bool force_generic) {
        const Kernels& k = best_kernels(force_generic);
        py::dict d;
        d["float32"] = k.f32_name;
        d["bfloat16"] = k.bf16_name;
        d["int8"] = k.i8_name;
        d["binary"] = k.bin_name;
        return d;
    }, py::arg("force_generic") = false, "Names of the kernels search() uses on this CPU.");
    m.def("usable_cpus", &usable_cpus, "CPUs this process may run on (affinity and cgroup quota): search's default threads.");
    m.def("crc32c", [](const py::bytes& b) {
        const std::string_view v(b);
        return crc32c(0, v.data(), v.size());
    }, py::arg("data"), "CRC-32C of bytes (the checksum of the index file format).");
}

}  // namespace fastemb
