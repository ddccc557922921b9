// IdMap: id -> storage position, open addressing with linear probing (16 bytes a slot, load
// between 1/8 and 1/2), in a Buffer so that a shrinking index returns the table's pages too.
// Ids are >= 0; an empty slot holds -1.
#pragma once

#include <cstdint>

#include "buffer.h"

namespace fastemb {

class IdMap {
public:
    int64_t size() const { return size_; }
    size_t resident() const { return table_.resident(); }
    // Position of `id`, or -1.
    int64_t find(int64_t id) const;
    // Inserts or overwrites.
    void put(int64_t id, int64_t pos);
    void erase(int64_t id);  // id must be present
    void reserve(int64_t n);  // room for n ids without rehashing
    void shrink();            // rehash smaller when at most 1/8 full
    void clear();

private:
    struct Slot {
        int64_t key;
        int64_t pos;
    };
    Slot* slots() { return table_.as<Slot>(); }
    const Slot* slots() const { return table_.as<Slot>(); }
    void rehash(uint64_t cap);

    Buffer table_;
    uint64_t cap_ = 0;  // a power of two, or 0
    int64_t size_ = 0;
};

}  // namespace fastemb
