"""Builds the C++ extension ``fastemb._C`` (pybind11). Everything else lives in pyproject.toml."""

from __future__ import annotations

from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

sources = sorted(glob("csrc/*.cpp"))
ext_modules = []
if sources:
    ext_modules.append(
        Pybind11Extension(
            "fastemb._C",
            sources,
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=["-O3"],
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
