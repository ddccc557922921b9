// fastemb::Index: top-k inner-product / cosine search over float32, bfloat16, int8 or binary
// panels (kernels.h), with exact re-scoring by an error bound (codec.h).
//
// Columns, each one contiguous Buffer (owned pages, or a view into a memory-mapped file):
//   panels  [npanels] the scan's codes                      every storage
//   meta    [npanels][kMeta][16] per-vector numbers           bfloat16, int8, binary
//   rows    [n, dim] float32 rows for exact re-scoring        bfloat16 / int8 with exact = true
//   records [n] int8 records for re-scoring binary codes      binary
//   ids     [n] int64
// Removal moves the last vector into the hole (storage stays dense) and returns freed pages.
// A memory-mapped index reads rows and records from the file with pread, only for candidates,
// and is read-only.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "buffer.h"
#include "codec.h"
#include "idmap.h"
#include "kernels.h"

namespace fastemb {

// Ids are 0 ..= kMaxId, so that the next automatic id (largest + 1) always fits in int64.
constexpr int64_t kMaxId = INT64_MAX - 1;
// search(k): k may exceed the number of stored vectors (the rest is padding) only up to this.
constexpr int64_t kMaxPad = 1024;

// A checked, row-major float32 [rows, dim] view of a caller's array.
struct Matrix {
    const float* data;
    int64_t rows;
};

enum class Metric { Cosine, IP };

class Index {
public:
    Index(int64_t dim, const std::string& metric, const std::string& storage, bool exact);

    pybind11::array_t<int64_t> add(const pybind11::array& vectors, const pybind11::object& ids, bool normalize);
    pybind11::tuple search(const pybind11::array& queries, int64_t k, int64_t oversample, int threads,
                           bool force_generic, const pybind11::object& allowed_ids) const;
    void remove(const pybind11::array& ids);
    void reset();
    int64_t size() const;
    pybind11::array_t<float> reconstruct(const pybind11::array& ids) const;  // [m, dim], as scored
    pybind11::array_t<int64_t> ids() const;                                 // [n], storage order
    pybind11::array_t<float> center() const;                                // [dim] or [0]

    int64_t dim() const { return codec_.dim(); }
    std::string metric() const { return metric_ == Metric::Cosine ? "cosine" : "ip"; }
    std::string storage() const;
    bool exact() const { return exact_; }
    bool mapped() const { return map_ != nullptr; }
    int64_t next_id() const;
    void set_next_id(int64_t v);
    int64_t memory_bytes() const;
    // Counters since creation: candidates re-scored, queries scanned again because the bound
    // did not prove their result (exact modes), rows / records read from disk.
    pybind11::dict stats() const;

    // Persistence (format.cpp): the file format version 2, written to a descriptor or to bytes;
    // read from a path (copied into memory, or memory-mapped) or from bytes.
    void write_fd(int fd) const;
    pybind11::bytes to_bytes() const;
    static std::unique_ptr<Index> load(const std::string& path, bool mmap, bool verify);
    static std::unique_ptr<Index> from_bytes(const pybind11::bytes& data);

private:
    friend struct Loader;
    friend struct Writer;
    struct Search;  // search.cpp

    bool has_rows() const { return exact_ && codec_.storage() != Storage::F32; }
    bool has_records() const { return codec_.storage() == Storage::Bin; }
    const int64_t* idp() const { return ids_.as<int64_t>(); }
    void check_writable(const char* what) const;
    void grow(int64_t n);
    void shrink_to(int64_t n);
    // Row `pos` as float32 (exact rows): a pointer into memory, or read into `buf` from the file.
    const float* row(int64_t pos, float* buf) const;
    const uint8_t* record(int64_t pos, uint8_t* buf) const;
    void ensure_idmap() const;  // a memory-mapped index builds its id map on first use
    void decode(int64_t pos, float* out) const;

    Codec codec_;
    Metric metric_;
    bool exact_;
    int64_t n_ = 0;
    int64_t next_id_ = 0;
    Buffer panels_, meta_, rows_, records_, ids_;
    std::shared_ptr<const Mapping> map_;
    int64_t rows_offset_ = -1, records_offset_ = -1;  // file offsets when read from disk
    mutable IdMap idmap_;
    mutable bool idmap_ready_ = true;
    mutable std::mutex idmap_mu_;
    mutable std::atomic<int64_t> rescored_{0}, rescans_{0}, disk_reads_{0};
    mutable std::shared_mutex mu_;
};

void register_index(pybind11::module_& m);

}  // namespace fastemb
