// fastemb::Index: exact top-k inner-product / cosine search over float32, bfloat16 or int8 panels.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <new>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels.h"

namespace fastemb {

// 64-byte aligned storage: every panel row is exactly one cache line, one aligned SIMD load.
template <class T>
struct AlignedAlloc {
    using value_type = T;
    AlignedAlloc() = default;
    template <class U>
    AlignedAlloc(const AlignedAlloc<U>&) {}
    T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
    void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
    template <class U>
    bool operator==(const AlignedAlloc<U>&) const { return true; }
    template <class U>
    bool operator!=(const AlignedAlloc<U>&) const { return false; }
};
template <class T>
using AlignedVec = std::vector<T, AlignedAlloc<T>>;

// A checked, row-major float32 [rows, dim] view of a caller's array.
struct Matrix {
    const float* data;
    int64_t rows;
};

enum class Metric { Cosine, IP };
enum class Storage { F32, BF16, I8 };

class Index {
public:
    Index(int64_t dim, const std::string& metric, const std::string& storage);

    pybind11::array_t<int64_t> add(const pybind11::array& vectors, const pybind11::object& ids, bool normalize);
    pybind11::tuple search(const pybind11::array& queries, int64_t k, int64_t oversample, int threads,
                           bool force_generic) const;
    void remove(const pybind11::array& ids);
    int64_t size() const;
    pybind11::array_t<float> vectors() const;  // [n, dim] as used for scoring (normalized for cosine)
    pybind11::array_t<int64_t> ids() const;    // [n], in storage order
    pybind11::tuple snapshot() const;          // (ids, vectors, next_id) under one lock

    int64_t dim() const { return d_; }
    std::string metric() const { return metric_ == Metric::Cosine ? "cosine" : "ip"; }
    std::string storage() const;
    int64_t next_id() const;
    void set_next_id(int64_t v);
    int64_t memory_bytes() const;

private:
    int group() const { return storage_ == Storage::F32 ? 1 : storage_ == Storage::BF16 ? 2 : 4; }
    size_t offset(int64_t pos, int64_t j) const;
    void write(int64_t pos, const float* x);
    void move(int64_t src, int64_t dst);
    void clear(int64_t pos);
    void grow(int64_t n);
    void read_row(int64_t pos, float* out) const;
    // The search proper, called without the GIL: writes os / oi [nq, k].
    void search_nogil(const Matrix& m, int64_t k, int64_t oversample, int threads, const Kernels& kern, float* os,
                      int64_t* oi) const;

    int64_t d_;
    int64_t dp_;  // d_ rounded up to group()
    Metric metric_;
    Storage storage_;
    int64_t n_ = 0;
    int64_t next_id_ = 0;
    AlignedVec<float> f32_;      // float32 panels
    AlignedVec<uint16_t> bf16_;  // bfloat16 panels
    AlignedVec<int8_t> i8_;      // int8 panels
    AlignedVec<float> vscale_;   // int8: per-vector quantization step
    AlignedVec<int32_t> vcorr_;  // int8: 128 * sum of codes (removes the u8 query bias)
    std::vector<float> rows_;    // bf16 / int8: float32 rows [n, d] for re-scoring candidates
    std::vector<int64_t> ids_;   // [n]
    std::unordered_map<int64_t, int64_t> pos_;  // id -> position
    mutable std::shared_mutex mu_;
};

void register_index(pybind11::module_& m);

}  // namespace fastemb
