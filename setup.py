"""Builds the C++ extension ``fastemb._C`` (pybind11). Everything else lives in pyproject.toml.

Portable build: no -march flag. The AVX-512 kernels carry their instruction set in a
``#pragma GCC target`` and are chosen at run time (csrc/kernels.h), so one wheel runs on any
x86-64 CPU and uses VNNI / BF16 / VPOPCNTDQ where present. POSIX only (mmap, pread).
"""

from __future__ import annotations

from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

SOURCES = [
    "csrc/module.cpp",
    "csrc/index.cpp",
    "csrc/search.cpp",
    "csrc/format.cpp",
    "csrc/codec.cpp",
    "csrc/checks.cpp",
    "csrc/buffer.cpp",
    "csrc/idmap.cpp",
    "csrc/system.cpp",
    "csrc/topk.cpp",
    "csrc/kernels_generic.cpp",
    "csrc/kernels_avx512_f32.cpp",
    "csrc/kernels_avx512_bf16.cpp",
    "csrc/kernels_avx512_i8.cpp",
    "csrc/kernels_avx512_bin.cpp",
]
HEADERS = [
    "csrc/index.h",
    "csrc/codec.h",
    "csrc/checks.h",
    "csrc/buffer.h",
    "csrc/idmap.h",
    "csrc/system.h",
    "csrc/topk.h",
    "csrc/kernels.h",
    "csrc/scan_driver.h",
]

here = Path(__file__).resolve().parent
missing = [p for p in SOURCES + HEADERS if not (here / p).is_file()]
if missing:
    raise SystemExit(f"setup.py: C++ sources missing: {', '.join(missing)}")

# Compile the sources in parallel (NPY_NUM_BUILD_JOBS, default: all cores).
ParallelCompile("NPY_NUM_BUILD_JOBS").install()

ext_modules = [
    Pybind11Extension(
        "fastemb._C",
        SOURCES,
        include_dirs=["csrc"],
        depends=HEADERS,
        cxx_std=17,
        extra_compile_args=["-O3", "-pthread", "-fno-math-errno"],
        extra_link_args=["-pthread"],
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
