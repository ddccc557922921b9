// Input checks (see checks.h).
#include "checks.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace py = pybind11;

namespace fastemb {

Matrix check_matrix(const py::array& a, int64_t dim, const char* what) {
    if (!py::dtype::of<float>().is(a.dtype()))
        throw py::value_error(cat(what, " must be float32, got dtype ", std::string(py::str(a.dtype()))));
    if (a.ndim() != 2) throw py::value_error(cat(what, " must be 2-D [n, ", dim, "], got ", a.ndim(), " dimensions"));
    if (a.shape(1) != dim)
        throw py::value_error(cat(what, " have dimension ", a.shape(1), ", the index has dimension ", dim));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(cat(what, " must be C-contiguous, got strides (", a.strides(0), ", ", a.strides(1), ")"));
    return {static_cast<const float*>(a.data()), a.shape(0)};
}

std::vector<int64_t> check_ids(const py::array& a, const char* what) {
    if (a.ndim() != 1) throw py::value_error(cat(what, " must be 1-D, got ", a.ndim(), " dimensions"));
    if (!py::dtype::of<int64_t>().is(a.dtype()))
        throw py::value_error(cat(what, " must be int64, got dtype ", std::string(py::str(a.dtype()))));
    auto c = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    return std::vector<int64_t>(c.data(), c.data() + c.size());
}

std::vector<double> check_rows(const Matrix& m, int64_t d, bool normalize, const char* what) {
    // |q . x| <= |q| |x| < FLT_MAX when both norms are below sqrt(FLT_MAX): no score overflows.
    const double max_norm = std::sqrt(static_cast<double>(std::numeric_limits<float>::max()));
    std::vector<double> norms(static_cast<size_t>(m.rows));
    for (int64_t i = 0; i < m.rows; ++i) {
        const float* x = m.data + i * d;
        double ss = 0.0;
        for (int64_t j = 0; j < d; ++j) {
            if (!std::isfinite(x[j])) throw py::value_error(cat(what, " row ", i, " column ", j, " is not finite (", x[j], ")"));
            ss += static_cast<double>(x[j]) * x[j];
        }
        const double norm = std::sqrt(ss);
        if (norm >= max_norm)
            throw py::value_error(cat(what, " row ", i, " has norm ", norm, ", above ", max_norm, " (scores would overflow float32)"));
        if (normalize && norm == 0.0) throw py::value_error(cat(what, " row ", i, " is all zeros: cosine similarity is undefined"));
        norms[i] = norm;
    }
    return norms;
}

void prepare_row(const float* x, int64_t d, double norm, bool normalize, float* out) {
    if (!normalize) {
        std::memcpy(out, x, sizeof(float) * d);
        return;
    }
    for (int64_t j = 0; j < d; ++j) out[j] = static_cast<float>(x[j] / norm);
}

}  // namespace fastemb
