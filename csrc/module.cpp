// The one extension module, fastemb._C: each type registers itself.
#include <pybind11/pybind11.h>

#include "index.h"

PYBIND11_MODULE(_C, m) {
    m.doc() = "fastemb C++ core: exact top-k search (see fastemb.Index).";
    fastemb::register_index(m);
}
