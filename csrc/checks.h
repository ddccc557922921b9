// Input checks shared by the Index's methods: everything a caller passes is checked here, before
// any memory is touched, and refused with a ValueError that names the offending numbers.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "index.h"

namespace fastemb {

template <class... T>
std::string cat(const T&... parts) {
    std::ostringstream s;
    (s << ... << parts);
    return s.str();
}

// Refuses (never converts) anything but float32 C-contiguous [rows, dim], so the Python layer
// decides the conversion policy in one place.
Matrix check_matrix(const pybind11::array& a, int64_t dim, const char* what);

// int64 [n] ids (copied: ids are small next to the vectors).
std::vector<int64_t> check_ids(const pybind11::array& a, const char* what);

// Checks every row of m (finite; norm small enough that no score overflows; not zero when it is
// to be normalized) and returns the rows' norms. Throws ValueError naming the first bad row.
std::vector<double> check_rows(const Matrix& m, int64_t d, bool normalize, const char* what);

// out = x / norm (normalize) or x.
void prepare_row(const float* x, int64_t d, double norm, bool normalize, float* out);

}  // namespace fastemb
