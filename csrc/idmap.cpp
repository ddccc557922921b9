// IdMap (see idmap.h).
#include "idmap.h"

#include <cstring>
#include <stdexcept>

namespace fastemb {

namespace {

inline uint64_t mix(uint64_t x) {  // splitmix64 finalizer: sequential ids spread over the table
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t capacity_for(int64_t n) {
    uint64_t c = 16;
    while (c < 2 * static_cast<uint64_t>(n)) c <<= 1;
    return c;
}

}  // namespace

int64_t IdMap::find(int64_t id) const {
    if (cap_ == 0) return -1;
    const Slot* s = slots();
    for (uint64_t i = mix(static_cast<uint64_t>(id)) & (cap_ - 1);; i = (i + 1) & (cap_ - 1)) {
        if (s[i].key == id) return s[i].pos;
        if (s[i].key < 0) return -1;
    }
}

void IdMap::put(int64_t id, int64_t pos) {
    if (2 * static_cast<uint64_t>(size_ + 1) > cap_) rehash(capacity_for(size_ + 1));
    Slot* s = slots();
    uint64_t i = mix(static_cast<uint64_t>(id)) & (cap_ - 1);
    for (; s[i].key >= 0 && s[i].key != id; i = (i + 1) & (cap_ - 1)) {
    }
    if (s[i].key < 0) ++size_;
    s[i] = {id, pos};
}

void IdMap::erase(int64_t id) {
    Slot* s = slots();
    const uint64_t m = cap_ - 1;
    uint64_t i = mix(static_cast<uint64_t>(id)) & m;
    while (s[i].key != id) {
        if (s[i].key < 0) throw std::logic_error("IdMap::erase: id not present");
        i = (i + 1) & m;
    }
    // Backward-shift deletion: move later entries of the run into the hole when their home slot
    // does not lie strictly between the hole and them (cyclically).
    for (uint64_t j = (i + 1) & m;; j = (j + 1) & m) {
        if (s[j].key < 0) break;
        const uint64_t home = mix(static_cast<uint64_t>(s[j].key)) & m;
        const bool between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!between) {
            s[i] = s[j];
            i = j;
        }
    }
    s[i] = {-1, -1};
    --size_;
}

void IdMap::reserve(int64_t n) {
    if (2 * static_cast<uint64_t>(n) > cap_) rehash(capacity_for(n));
}

void IdMap::shrink() {
    if (cap_ > 16 && 8 * static_cast<uint64_t>(size_) <= cap_) rehash(capacity_for(size_));
}

void IdMap::clear() {
    table_.clear();
    cap_ = 0;
    size_ = 0;
}

void IdMap::rehash(uint64_t cap) {
    Buffer old = std::move(table_);
    const uint64_t old_cap = cap_;
    table_ = Buffer();
    table_.resize(cap * sizeof(Slot));
    std::memset(table_.data(), 0xff, cap * sizeof(Slot));  // key -1: empty
    cap_ = cap;
    size_ = 0;
    const Slot* o = old.as<Slot>();
    for (uint64_t i = 0; i < old_cap; ++i)
        if (o[i].key >= 0) put(o[i].key, o[i].pos);
}

}  // namespace fastemb
