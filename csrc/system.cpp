// usable_cpus and crc32c (see system.h).
#include "system.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#ifdef __linux__
#include <sched.h>
#endif

namespace fastemb {

namespace {

// CPUs allowed by a cgroup quota, or 0 when there is none (or no cgroup file could be read).
int cgroup_cpus() {
#ifdef __linux__
    auto read_first = [](const std::string& path, std::string& out) {
        std::ifstream f(path);
        return static_cast<bool>(std::getline(f, out));
    };
    auto quota = [](double q, double period) { return q > 0 && period > 0 ? static_cast<int>(std::ceil(q / period)) : 0; };
    // cgroup v2: the process's own group (from /proc/self/cgroup, "0::/path"), then the root.
    std::string line, group;
    std::ifstream self("/proc/self/cgroup");
    while (std::getline(self, line))
        if (line.rfind("0::", 0) == 0) group = line.substr(3);
    for (const std::string& dir : {"/sys/fs/cgroup" + group, std::string("/sys/fs/cgroup")}) {
        std::string v;
        if (read_first(dir + "/cpu.max", v)) {
            std::istringstream s(v);
            std::string q;
            double period = 0;
            s >> q >> period;
            return q == "max" ? 0 : quota(std::atof(q.c_str()), period);
        }
    }
    for (const char* dir : {"/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"}) {  // cgroup v1
        std::string q, p;
        if (read_first(std::string(dir) + "/cpu.cfs_quota_us", q) && read_first(std::string(dir) + "/cpu.cfs_period_us", p))
            return quota(std::atof(q.c_str()), std::atof(p.c_str()));
    }
#endif
    return 0;
}

uint32_t crc_table[8][256];

bool init_table() {
    for (uint32_t i = 0; i < 256; ++i) {
        uint32_t c = i;
        for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
        for (int t = 1; t < 8; ++t) crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
    return true;
}

uint32_t crc_portable(uint32_t c, const uint8_t* p, size_t n) {
    static const bool ready = init_table();
    (void)ready;
    for (; n >= 8; n -= 8, p += 8) {  // slicing by 8
        uint64_t w;
        std::memcpy(&w, p, 8);
        w ^= c;
        c = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^ crc_table[5][(w >> 16) & 0xff] ^
            crc_table[4][(w >> 24) & 0xff] ^ crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
            crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
    }
    for (; n; --n, ++p) c = (c >> 8) ^ crc_table[0][(c ^ *p) & 0xff];
    return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc_sse42(uint32_t c, const uint8_t* p, size_t n) {
    uint64_t c64 = c;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        std::memcpy(&w, p, 8);
        c64 = __builtin_ia32_crc32di(c64, w);
    }
    uint32_t c32 = static_cast<uint32_t>(c64);
    for (; n; --n, ++p) c32 = __builtin_ia32_crc32qi(c32, *p);
    return c32;
}
#endif

}  // namespace

int usable_cpus() {
    int n = static_cast<int>(std::thread::hardware_concurrency());
#ifdef __linux__
    cpu_set_t* set = CPU_ALLOC(4096);
    const size_t bytes = CPU_ALLOC_SIZE(4096);
    if (set && sched_getaffinity(0, bytes, set) == 0) n = CPU_COUNT_S(bytes, set);
    if (set) CPU_FREE(set);
#endif
    static const int quota = cgroup_cpus();  // read once: quotas rarely change under a process
    if (quota > 0) n = std::min(n, quota);
    return std::max(1, n);
}

uint32_t crc32c(uint32_t crc, const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    crc = ~crc;
#if defined(__x86_64__)
    static const bool hw = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("sse4.2");
    }();
    if (hw) return ~crc_sse42(crc, p, n);
#endif
    return ~crc_portable(crc, p, n);
}

}  // namespace fastemb
