// What the index needs from the system: how many CPUs this process may use, and CRC-32C.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastemb {

// CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (v2 cpu.max or
// v1 cfs_quota_us / cfs_period_us, rounded up); at least 1.
int usable_cpus();

// CRC-32C (Castagnoli) of `n` bytes, continuing from `crc` (0 to start). SSE4.2 where the CPU has
// it, a table otherwise: the same value either way.
uint32_t crc32c(uint32_t crc, const void* data, size_t n);

}  // namespace fastemb
