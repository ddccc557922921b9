// Buffer and Mapping (see buffer.h). POSIX: mmap / munmap / madvise; mremap where Linux has it.
#include "buffer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <stdexcept>

namespace fastemb {

size_t page_size() {
    static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return p;
}

namespace {

size_t round_pages(size_t bytes) {
    const size_t p = page_size();
    return (bytes + p - 1) / p * p;
}

void* map_pages(size_t bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return p;
}

}  // namespace

Mapping::Mapping(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (fstat(fd_, &st) != 0) {
        const int e = errno;
        ::close(fd_);
        throw std::runtime_error(path + ": cannot stat: " + std::strerror(e));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
        addr_ = mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd_, 0);
        if (addr_ == MAP_FAILED) {
            const int e = errno;
            ::close(fd_);
            addr_ = nullptr;
            throw std::runtime_error(path + ": cannot memory-map: " + std::strerror(e));
        }
    }
}

Mapping::~Mapping() {
    if (addr_) munmap(addr_, size_);
    if (fd_ >= 0) ::close(fd_);
}

Buffer::~Buffer() { clear(); }

Buffer::Buffer(Buffer&& o) noexcept
    : ptr_(o.ptr_), size_(o.size_), cap_(o.cap_), owner_(std::move(o.owner_)) {
    o.ptr_ = nullptr;
    o.size_ = o.cap_ = 0;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
    if (this != &o) {
        clear();
        ptr_ = o.ptr_;
        size_ = o.size_;
        cap_ = o.cap_;
        owner_ = std::move(o.owner_);
        o.ptr_ = nullptr;
        o.size_ = o.cap_ = 0;
    }
    return *this;
}

Buffer Buffer::view(const void* p, size_t bytes, std::shared_ptr<const Mapping> owner) {
    Buffer b;
    b.ptr_ = const_cast<void*>(p);  // never written: owned() is false, resize() refuses
    b.size_ = bytes;
    b.owner_ = std::move(owner);
    return b;
}

size_t Buffer::resident() const { return owned() ? round_pages(size_) : 0; }

void Buffer::clear() {
    if (owned() && ptr_) munmap(ptr_, cap_);
    ptr_ = nullptr;
    size_ = cap_ = 0;
    owner_.reset();
}

void Buffer::resize(size_t bytes) {
    if (!owned()) throw std::logic_error("Buffer::resize on a read-only view");
    if (bytes == size_) return;
    if (bytes < size_) {
        // Zero the cut bytes that stay inside a kept page; give whole pages beyond back.
        const size_t keep = round_pages(bytes);
        std::memset(data() + bytes, 0, std::min(size_, keep) - bytes);
        if (keep < round_pages(size_)) madvise(data() + keep, round_pages(size_) - keep, MADV_DONTNEED);
        size_ = bytes;
        return;
    }
    if (bytes > cap_) {
        const size_t want = round_pages(std::max(bytes, cap_ + cap_ / 2));
        if (!ptr_) {
            ptr_ = map_pages(want);
        } else {
#ifdef MREMAP_MAYMOVE
            void* p = mremap(ptr_, cap_, want, MREMAP_MAYMOVE);  // moves page tables, not data
            if (p == MAP_FAILED) throw std::bad_alloc();
            ptr_ = p;
#else
            void* p = map_pages(want);
            std::memcpy(p, ptr_, size_);
            munmap(ptr_, cap_);
            ptr_ = p;
#endif
        }
        cap_ = want;
    }
    // Pages past the old size are fresh or were returned with MADV_DONTNEED: already zero.
    size_ = bytes;
}

}  // namespace fastemb
