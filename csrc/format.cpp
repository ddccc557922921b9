// The index file format, version 2 (version 1 is read by fastemb/index.py). Little endian:
//
//   offset 0     magic "FEMBIDX\0", u32 version = 2, u32 header bytes = 4096
//   offset 16    u64 dim, u64 count, u64 next_id, u32 metric (0 cosine, 1 ip),
//                u32 storage (0 float32, 1 bfloat16, 2 int8, 3 binary), u32 exact, u32 lanes = 16,
//                u32 sections, u32 0
//   offset 64    sections x {u32 kind, u32 crc32c, u64 offset, u64 bytes}
//   offset 4092  u32 crc32c of bytes 0 .. 4091
//   sections, each at a multiple of 4096, in this order, the file ending with the last:
//     1 center  float32 [dim]                   (compressed storage with a center)
//     2 ids     int64 [count]
//     3 panels  the scan's panels, as in memory (kernels.h)
//     4 meta    per-panel vector numbers        (bfloat16, int8, binary)
//     5 rows    float32 [count, dim]             (exact bfloat16 / int8)
//     6 records int8 records [count]            (binary)
// The arrays are the index's memory image, so a memory-mapped load uses them in place.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>

#include "checks.h"
#include "index.h"
#include "system.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the index file format is little endian");

namespace py = pybind11;

namespace fastemb {

namespace {

constexpr char kMagic[8] = {'F', 'E', 'M', 'B', 'I', 'D', 'X', '\0'};
constexpr uint32_t kVersion = 2;
constexpr size_t kHeader = 4096;
constexpr size_t kAlign = 4096;
constexpr int kMaxSections = 8;
enum Kind : uint32_t { kCenter = 1, kIds, kPanels, kMeta, kRows, kRecords };
const char* kind_name(uint32_t k) {
    static const char* names[] = {"?", "center", "ids", "panels", "meta", "rows", "records"};
    return k >= 1 && k <= 6 ? names[k] : "?";
}

struct Section {
    uint32_t kind;
    uint32_t crc;
    uint64_t offset;
    uint64_t bytes;
};

template <class T>
void put(uint8_t* h, size_t at, T v) {
    std::memcpy(h + at, &v, sizeof v);
}
template <class T>
T get(const uint8_t* h, size_t at) {
    T v;
    std::memcpy(&v, h + at, sizeof v);
    return v;
}

uint64_t align_up(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

// Where a section's bytes come from when writing: memory, or the index's file (pread).
struct Part {
    Section s;
    const uint8_t* mem;      // nullptr: read from `file` at `file_offset`
    const Mapping* file;
    uint64_t file_offset;
};

void pread_exact(int fd, const std::string& path, void* dst, size_t n, uint64_t offset) {
    auto* p = static_cast<uint8_t*>(dst);
    while (n > 0) {
        const ssize_t got = ::pread(fd, p, n, static_cast<off_t>(offset));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0)
            throw py::value_error(cat(path, ": cannot read ", n, " bytes at offset ", offset, ": ",
                                      got < 0 ? std::strerror(errno) : "the file is truncated"));
        p += got;
        n -= static_cast<size_t>(got);
        offset += static_cast<uint64_t>(got);
    }
}

// Streams a part in chunks (memory directly, a file through a bounded buffer).
void each_chunk(const Part& p, const std::function<void(const uint8_t*, size_t)>& fn) {
    if (p.mem) {
        if (p.s.bytes) fn(p.mem, p.s.bytes);
        return;
    }
    constexpr size_t kChunk = size_t{8} << 20;
    std::vector<uint8_t> buf(std::min<uint64_t>(kChunk, p.s.bytes));
    for (uint64_t done = 0; done < p.s.bytes;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, p.s.bytes - done));
        pread_exact(p.file->fd(), p.file->path(), buf.data(), n, p.file_offset + done);
        fn(buf.data(), n);
        done += n;
    }
}

void write_all(int fd, const uint8_t* p, size_t n) {
    while (n > 0) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) throw std::runtime_error(cat("writing the index failed: ", std::strerror(errno)));
        p += w;
        n -= static_cast<size_t>(w);
    }
}

void check_finite(const float* x, size_t count, const std::string& where) {
    for (size_t i = 0; i < count; ++i)
        if (!std::isfinite(x[i])) throw py::value_error(cat(where, ": value ", i, " is not finite (", x[i], "): file is corrupt"));
}

}  // namespace

struct Writer {
    const Index& ix;
    std::vector<Part> parts;
    std::vector<uint8_t> header = std::vector<uint8_t>(kHeader, 0);
    uint64_t total = kHeader;

    explicit Writer(const Index& index) : ix(index) {
        const int64_t n = ix.n_, d = ix.dim();
        const uint64_t npanels = static_cast<uint64_t>((n + kLanes - 1) / kLanes);
        auto add = [&](uint32_t kind, uint64_t bytes, const uint8_t* mem, int64_t file_offset) {
            Part p{{kind, 0, align_up(total), bytes}, mem, ix.map_.get(), static_cast<uint64_t>(std::max<int64_t>(0, file_offset))};
            total = p.s.offset + bytes;
            parts.push_back(p);
        };
        const std::vector<float>& c = ix.codec_.center();
        if (!c.empty()) add(kCenter, c.size() * 4, reinterpret_cast<const uint8_t*>(c.data()), -1);
        add(kIds, static_cast<uint64_t>(n) * 8, ix.ids_.data(), -1);
        add(kPanels, npanels * ix.codec_.panel_bytes(), ix.panels_.data(), -1);
        if (ix.codec_.kmeta()) add(kMeta, npanels * ix.codec_.meta_bytes(), ix.meta_.data(), -1);
        const uint64_t rb = static_cast<uint64_t>(d) * 4, cb = ix.codec_.record_bytes();
        if (ix.has_rows()) add(kRows, static_cast<uint64_t>(n) * rb, ix.rows_offset_ < 0 ? ix.rows_.data() : nullptr, ix.rows_offset_);
        if (ix.has_records())
            add(kRecords, static_cast<uint64_t>(n) * cb, ix.records_offset_ < 0 ? ix.records_.data() : nullptr, ix.records_offset_);
        for (Part& p : parts) {
            uint32_t crc = 0;
            each_chunk(p, [&](const uint8_t* b, size_t len) { crc = crc32c(crc, b, len); });
            p.s.crc = crc;
        }
        uint8_t* h = header.data();
        std::memcpy(h, kMagic, 8);
        put<uint32_t>(h, 8, kVersion);
        put<uint32_t>(h, 12, static_cast<uint32_t>(kHeader));
        put<uint64_t>(h, 16, static_cast<uint64_t>(d));
        put<uint64_t>(h, 24, static_cast<uint64_t>(n));
        put<uint64_t>(h, 32, static_cast<uint64_t>(ix.next_id_));
        put<uint32_t>(h, 40, ix.metric_ == Metric::Cosine ? 0 : 1);
        put<uint32_t>(h, 44, static_cast<uint32_t>(ix.codec_.storage()));
        put<uint32_t>(h, 48, ix.exact_ ? 1 : 0);
        put<uint32_t>(h, 52, kLanes);
        put<uint32_t>(h, 56, static_cast<uint32_t>(parts.size()));
        for (size_t i = 0; i < parts.size(); ++i) {
            const Section& s = parts[i].s;
            put<uint32_t>(h, 64 + 24 * i, s.kind);
            put<uint32_t>(h, 68 + 24 * i, s.crc);
            put<uint64_t>(h, 72 + 24 * i, s.offset);
            put<uint64_t>(h, 80 + 24 * i, s.bytes);
        }
        put<uint32_t>(h, kHeader - 4, crc32c(0, h, kHeader - 4));
    }

    void emit(const std::function<void(const uint8_t*, size_t)>& out) const {
        out(header.data(), header.size());
        uint64_t at = kHeader;
        static const std::vector<uint8_t> zeros(kAlign, 0);
        for (const Part& p : parts) {
            if (p.s.offset > at) out(zeros.data(), static_cast<size_t>(p.s.offset - at));
            each_chunk(p, out);
            at = p.s.offset + p.s.bytes;
        }
    }
};

void Index::write_fd(int fd) const {
    std::shared_lock lock(mu_);  // one consistent image; add / remove wait
    Writer w(*this);
    w.emit([&](const uint8_t* p, size_t n) { write_all(fd, p, n); });
}

py::bytes Index::to_bytes() const {
    std::string image;
    {
        // Never take the GIL while holding mu_ (a thread holding the GIL may wait for mu_).
        py::gil_scoped_release nogil;
        std::shared_lock lock(mu_);
        Writer w(*this);
        image.reserve(static_cast<size_t>(w.total));
        w.emit([&](const uint8_t* p, size_t n) { image.append(reinterpret_cast<const char*>(p), n); });
    }
    return py::bytes(image);
}

// Reads a version-2 image from a file (pread), a mapping, or memory, checking as it goes.
struct Loader {
    std::string name;
    const uint8_t* mem = nullptr;  // whole image in memory (mapping or bytes), or nullptr
    int fd = -1;                   // otherwise read with pread
    uint64_t size = 0;

    void read(void* dst, uint64_t offset, size_t n) const {
        if (offset + n > size) throw py::value_error(cat(name, ": truncated (", size, " bytes, needs ", offset + n, ")"));
        if (mem) std::memcpy(dst, mem + offset, n);
        else pread_exact(fd, name, dst, n, offset);
    }

    std::unique_ptr<Index> load(std::shared_ptr<const Mapping> mapping, bool verify) const {
        if (size < kHeader) throw py::value_error(cat(name, ": ", size, " bytes is too short for a fastemb index"));
        std::vector<uint8_t> hb(kHeader);
        read(hb.data(), 0, kHeader);
        const uint8_t* h = hb.data();
        if (std::memcmp(h, kMagic, 8) != 0) throw py::value_error(cat(name, ": not a fastemb index (bad magic)"));
        const uint32_t version = get<uint32_t>(h, 8);
        if (version != kVersion) throw py::value_error(cat(name, ": index format version ", version, ", expected ", kVersion));
        const uint32_t stored = get<uint32_t>(h, kHeader - 4), crc = crc32c(0, h, kHeader - 4);
        if (stored != crc) throw py::value_error(cat(name, ": header checksum mismatch (stored ", stored, ", computed ", crc, "): file is corrupt"));
        const uint64_t d = get<uint64_t>(h, 16), n = get<uint64_t>(h, 24), next_id = get<uint64_t>(h, 32);
        const uint32_t metric = get<uint32_t>(h, 40), storage = get<uint32_t>(h, 44), exact = get<uint32_t>(h, 48);
        const uint32_t lanes = get<uint32_t>(h, 52), nsec = get<uint32_t>(h, 56);
        if (get<uint32_t>(h, 12) != kHeader || lanes != kLanes || metric > 1 || storage > 3 || exact > 1 || nsec > kMaxSections)
            throw py::value_error(cat(name, ": bad index header (header ", get<uint32_t>(h, 12), ", lanes ", lanes, ", metric ", metric,
                                      ", storage ", storage, ", exact ", exact, ", sections ", nsec, ")"));
        if (d < 1 || d > 65536 || n > size / 8 || next_id > static_cast<uint64_t>(kMaxId) + 1)
            throw py::value_error(cat(name, ": bad index header (dim ", d, ", count ", n, ", next_id ", next_id, ")"));
        static const char* metrics[] = {"cosine", "ip"};
        static const char* storages[] = {"float32", "bfloat16", "int8", "binary"};
        auto ix = std::make_unique<Index>(static_cast<int64_t>(d), metrics[metric], storages[storage], exact == 1);
        const int64_t count = static_cast<int64_t>(n);
        const uint64_t npanels = (n + kLanes - 1) / kLanes;

        // The sections the header must list, in order, with their exact sizes.
        Section sec[kMaxSections];
        for (uint32_t i = 0; i < nsec; ++i)
            sec[i] = {get<uint32_t>(h, 64 + 24 * i), get<uint32_t>(h, 68 + 24 * i), get<uint64_t>(h, 72 + 24 * i), get<uint64_t>(h, 80 + 24 * i)};
        std::vector<std::pair<uint32_t, uint64_t>> expect;
        const bool center = nsec > 0 && sec[0].kind == kCenter;
        if (center) {
            if (storage == 0) throw py::value_error(cat(name, ": bad index header: a float32 index has no center"));
            expect.push_back({kCenter, d * 4});
        }
        expect.push_back({kIds, n * 8});
        expect.push_back({kPanels, npanels * ix->codec_.panel_bytes()});
        if (ix->codec_.kmeta()) expect.push_back({kMeta, npanels * ix->codec_.meta_bytes()});
        if (ix->has_rows()) expect.push_back({kRows, n * d * 4});
        if (ix->has_records()) expect.push_back({kRecords, n * ix->codec_.record_bytes()});
        if (expect.size() != nsec) throw py::value_error(cat(name, ": bad index header: ", nsec, " sections, expected ", expect.size()));
        uint64_t at = kHeader;
        for (uint32_t i = 0; i < nsec; ++i) {
            if (sec[i].kind != expect[i].first || sec[i].bytes != expect[i].second || sec[i].offset % kAlign || sec[i].offset < at)
                throw py::value_error(cat(name, ": bad index header: section ", i, " (", kind_name(sec[i].kind), ", ", sec[i].bytes,
                                          " bytes at ", sec[i].offset, "), expected ", kind_name(expect[i].first), ", ",
                                          expect[i].second, " bytes at or after ", at));
            at = sec[i].offset + sec[i].bytes;
        }
        if (at != size)
            throw py::value_error(cat(name, ": ", size, " bytes, the header implies ", at, ": file is truncated or corrupt"));

        auto crc_check = [&](const Section& s, const uint8_t* p) {
            const uint32_t c = crc32c(0, p, s.bytes);
            if (c != s.crc)
                throw py::value_error(cat(name, ": checksum mismatch in section '", kind_name(s.kind), "' (stored ", s.crc, ", computed ", c,
                                          "): file is corrupt"));
        };
        auto section = [&](uint32_t kind) -> const Section* {
            for (uint32_t i = 0; i < nsec; ++i)
                if (sec[i].kind == kind) return &sec[i];
            return nullptr;
        };
        if (center) {
            std::vector<float> c(d);
            read(c.data(), sec[0].offset, d * 4);
            crc_check(sec[0], reinterpret_cast<const uint8_t*>(c.data()));
            check_finite(c.data(), d, name + ": center");
            ix->codec_.set_center(c.data());
        }
        ix->n_ = count;
        ix->next_id_ = static_cast<int64_t>(next_id);
        if (mapping) {
            auto view = [&](uint32_t kind) {
                const Section* s = section(kind);
                if (!s) return Buffer();
                if (verify) crc_check(*s, mem + s->offset);
                return Buffer::view(mem + s->offset, s->bytes, mapping);
            };
            ix->ids_ = view(kIds);
            ix->panels_ = view(kPanels);
            ix->meta_ = view(kMeta);
            if (const Section* s = section(kRows)) {
                ix->rows_offset_ = static_cast<int64_t>(s->offset);
                if (verify) crc_check(*s, mem + s->offset);
            }
            if (const Section* s = section(kRecords)) {
                ix->records_offset_ = static_cast<int64_t>(s->offset);
                if (verify) crc_check(*s, mem + s->offset);
            }
            ix->map_ = std::move(mapping);
            ix->idmap_ready_ = false;
            if (verify) validate(*ix);
            return ix;
        }
        ix->grow(count);
        auto fill = [&](uint32_t kind, Buffer& b) {
            const Section* s = section(kind);
            if (!s) return;
            read(b.data(), s->offset, s->bytes);
            crc_check(*s, b.data());
        };
        fill(kIds, ix->ids_);
        fill(kPanels, ix->panels_);
        fill(kMeta, ix->meta_);
        fill(kRows, ix->rows_);
        fill(kRecords, ix->records_);
        ix->idmap_ready_ = false;
        validate(*ix);
        return ix;
    }

    // Everything a checksum cannot vouch for (a file written by another program): ids in range
    // and unique, next_id above them, per-vector numbers and float32 values finite.
    void validate(const Index& ix) const {
        ix.ensure_idmap();
        const int64_t* ids = ix.idp();
        for (int64_t p = 0; p < ix.n_; ++p)
            if (ids[p] >= ix.next_id_)
                throw py::value_error(cat(name, ": next_id ", ix.next_id_, " does not exceed stored id ", ids[p], ": file is corrupt"));
        const size_t lanes = ix.meta_.size() / 4;
        const float* meta = ix.meta_.as<float>();
        const int kmeta = ix.codec_.kmeta();
        for (size_t i = 0; i < lanes; ++i) {
            const bool corr_row = ix.codec_.storage() == Storage::I8 && (i / kLanes) % kmeta == 1;  // int32 bits
            if (!corr_row && !std::isfinite(meta[i])) throw py::value_error(cat(name, ": per-vector value ", i, " is not finite: file is corrupt"));
        }
        if (ix.codec_.storage() == Storage::F32) check_finite(ix.panels_.as<float>(), ix.panels_.size() / 4, name + ": vectors");
        if (ix.rows_offset_ < 0) check_finite(ix.rows_.as<float>(), ix.rows_.size() / 4, name + ": rows");
    }
};

std::unique_ptr<Index> Index::load(const std::string& path, bool mmap, bool verify) {
    Loader l;
    l.name = path;
    if (mmap) {
        auto m = std::make_shared<const Mapping>(path);
        l.mem = m->data();
        l.size = m->size();
        return l.load(std::move(m), verify);
    }
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw py::value_error(cat(path, ": cannot open: ", std::strerror(errno)));
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    const off_t end = ::lseek(fd, 0, SEEK_END);
    if (end < 0) throw py::value_error(cat(path, ": cannot seek: ", std::strerror(errno)));
    l.fd = fd;
    l.size = static_cast<uint64_t>(end);
    return l.load(nullptr, false);
}

std::unique_ptr<Index> Index::from_bytes(const py::bytes& data) {
    const std::string_view v(data);
    Loader l;
    l.name = "index bytes";
    l.mem = reinterpret_cast<const uint8_t*>(v.data());
    l.size = v.size();
    py::gil_scoped_release nogil;  // the caller's bytes object stays alive: it is our argument
    return l.load(nullptr, false);
}

}  // namespace fastemb
