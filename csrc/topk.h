// Collector: where a TopK with `sink` set puts everything pushed (kernels.h). Kept out of
// kernels.h so that no std::vector code is instantiated in the AVX-512 translation units.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels.h"

namespace fastemb {

struct Collector {
    std::vector<float> score;
    std::vector<int64_t> pos;
};

}  // namespace fastemb
