"""The fused pooling kernel (``csrc/cuda/pool_normalize.cu``), built by nvcc at run time.

Why nvcc + ctypes rather than ``torch.utils.cpp_extension.load_inline`` or a CuPy RawKernel:
the kernel is one plain CUDA C++ file with an ``extern "C"`` launcher, so the shared library
builds in a few seconds (no torch headers, no ninja) and is called with torch's current stream,
which keeps it inside CUDA graph capture; CuPy would add a second array library and its own
stream handling to a torch backend. The library is cached under ``~/.cache/fastemb/kernels``,
keyed by the source's hash, the GPU architecture and nvcc's version. ``nvcc_command`` is also
what the compile test runs on machines with nvcc and no GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "cuda" / "pool_normalize.cu"
SYMBOL = "fastemb_pool_normalize_f16"


def find_nvcc() -> str | None:
    for cand in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def nvcc_command(nvcc: str, src: Path, out: Path, arch: str = "90", mode: str = "shared") -> list[str]:
    """``mode``: ``shared`` (the library loaded at run time), ``obj`` (``-c``) or ``ptx``."""
    if not arch.isalnum():
        raise ValueError(f"arch must look like '90' or '90a', got {arch!r}")
    flags = {"shared": ["-shared", "-Xcompiler", "-fPIC"], "obj": ["-c", "-Xcompiler", "-fPIC"], "ptx": ["-ptx"]}[mode]
    target = [f"-arch=compute_{arch}"] if mode == "ptx" else [f"-gencode=arch=compute_{arch},code=sm_{arch}"]
    return [nvcc, "-O3", "-std=c++17", *target, *flags, "-o", str(out), str(src)]


def build(arch: str, cache_dir: Path | None = None, src: Path = SOURCE) -> Path:
    """Build (or reuse) the kernel library for GPU architecture ``arch`` (e.g. ``"90"``)."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise RuntimeError("the fused pooling kernel needs nvcc (CUDA toolkit) on PATH or in $CUDA_HOME/bin")
    if not src.is_file():
        raise FileNotFoundError(f"kernel source {src} not found (the fused kernel needs a source checkout)")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(src.read_bytes() + arch.encode() + version.encode()).hexdigest()[:16]
    cache_dir = cache_dir or Path(os.environ.get("FASTEMB_CACHE", Path.home() / ".cache" / "fastemb")) / "kernels"
    lib = cache_dir / f"pool_normalize-sm{arch}-{key}.so"
    if lib.is_file():
        return lib
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp.so")
    run = subprocess.run(nvcc_command(nvcc, src, tmp, arch), capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"nvcc failed to build {src} for sm_{arch}:\n{run.stderr[-2000:]}")
    os.replace(tmp, lib)  # atomic: a concurrent build never loads a half-written library
    return lib


class FusedPoolNormalize:
    """``(hidden [B,S,D] float16 cuda, mask [B,S] int64 cuda) -> (normalized, pooled)`` float32 [B,D]."""

    def __init__(self, lib: Path) -> None:
        self._lib = ctypes.CDLL(str(lib))
        fn = getattr(self._lib, SYMBOL)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        self._fn = fn
        self._err = ctypes.create_string_buffer(512)

    @classmethod
    def for_device(cls, device: Any = None) -> FusedPoolNormalize:
        import torch

        major, minor = torch.cuda.get_device_capability(device)
        return cls(build(f"{major}{minor}"))

    def __call__(self, hidden: Any, mask: Any, want_pooled: bool = False) -> tuple[Any, Any]:
        import torch

        if hidden.dim() != 3 or mask.dim() != 2 or tuple(mask.shape) != tuple(hidden.shape[:2]):
            raise ValueError(f"pool_normalize: hidden must be [batch, seq, dim] and mask [batch, seq], "
                             f"got {tuple(hidden.shape)} and {tuple(mask.shape)}")
        if hidden.dtype != torch.float16 or mask.dtype != torch.int64:
            raise ValueError(f"pool_normalize: needs float16 hidden and int64 mask, got {hidden.dtype} and {mask.dtype}")
        if not (hidden.is_cuda and mask.is_cuda and hidden.device == mask.device):
            raise ValueError(f"pool_normalize: hidden and mask must be on one CUDA device, got {hidden.device} and {mask.device}")
        hidden, mask = hidden.contiguous(), mask.contiguous()
        b, s, d = hidden.shape
        out = torch.empty((b, d), dtype=torch.float32, device=hidden.device)
        pooled = torch.empty_like(out) if want_pooled else None
        stream = torch.cuda.current_stream(hidden.device).cuda_stream
        rc = self._fn(hidden.data_ptr(), mask.data_ptr(), out.data_ptr(), pooled.data_ptr() if pooled is not None else None,
                      b, s, d, stream, self._err, len(self._err))
        if rc != 0:
            raise RuntimeError(self._err.value.decode(errors="replace"))
        return out, pooled


def reference(hidden: Any, mask: Any) -> tuple[Any, Any]:
    """The unfused torch ops the kernel replaces: the ONNX graph's pooling head (fastemb.export.heads)."""
    from fastemb.export.heads import l2_normalize, pool

    pooled = pool(hidden, mask, "mean")
    return l2_normalize(pooled), pooled
