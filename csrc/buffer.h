// Buffer: a contiguous byte array backed by pages of its own (grown in place with mremap, so an
// index never holds its old and new arrays at once, and shrunk with madvise, so removing vectors
// gives memory back), or a read-only view into a memory-mapped file. Mapping: one mapped file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace fastemb {

// A read-only mapping of a whole file; the descriptor stays open for pread of columns that are
// read on demand (float32 rows of a memory-mapped index).
class Mapping {
public:
    explicit Mapping(const std::string& path);
    ~Mapping();
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;

    const uint8_t* data() const { return static_cast<const uint8_t*>(addr_); }
    size_t size() const { return size_; }
    int fd() const { return fd_; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    int fd_ = -1;
    void* addr_ = nullptr;
    size_t size_ = 0;
};

class Buffer {
public:
    Buffer() = default;
    ~Buffer();
    Buffer(Buffer&& o) noexcept;
    Buffer& operator=(Buffer&& o) noexcept;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;

    // A read-only view of `bytes` bytes at `p`, kept valid by `owner`.
    static Buffer view(const void* p, size_t bytes, std::shared_ptr<const Mapping> owner);

    uint8_t* data() { return static_cast<uint8_t*>(ptr_); }
    const uint8_t* data() const { return static_cast<const uint8_t*>(ptr_); }
    template <class T>
    T* as() { return reinterpret_cast<T*>(ptr_); }
    template <class T>
    const T* as() const { return reinterpret_cast<const T*>(ptr_); }
    size_t size() const { return size_; }
    bool owned() const { return owner_ == nullptr; }
    // Bytes of memory this buffer holds: its size rounded up to pages (0 for a view).
    size_t resident() const;

    // Owned buffers only. Growing keeps the contents and zero-fills the new bytes (capacity grows
    // by 1.5x, in place where the kernel allows); shrinking zeroes the cut bytes and returns whole
    // pages beyond the new size to the system.
    void resize(size_t bytes);
    void clear();  // back to empty, every page returned

private:
    void* ptr_ = nullptr;
    size_t size_ = 0;
    size_t cap_ = 0;  // bytes reserved (a multiple of the page size); 0 for a view
    std::shared_ptr<const Mapping> owner_;
};

size_t page_size();

}  // namespace fastemb
