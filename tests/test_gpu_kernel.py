"""The fused pooling kernel: it compiles with nvcc wherever nvcc exists, and on a GPU it matches a
float64 reference (and the unfused torch ops) to float32 rounding."""

from __future__ import annotations

import importlib.util
import subprocess

import numpy as np
import pytest

from fastemb.backends import kernels

NVCC = kernels.find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH or in $CUDA_HOME/bin")


def _cuda_available() -> tuple[bool, str]:
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, f"torch.cuda.is_available() is False (torch {torch.__version__})"
    return True, ""


CUDA_OK, CUDA_WHY = _cuda_available()
needs_gpu = pytest.mark.skipif(not CUDA_OK, reason=CUDA_WHY or "no GPU")


@needs_nvcc
@pytest.mark.parametrize("mode", ["obj", "ptx"])
def test_kernel_compiles_with_nvcc(tmp_path, mode: str) -> None:
    out = tmp_path / f"pool_normalize.{mode}"
    cmd = kernels.nvcc_command(NVCC, kernels.SOURCE, out, arch="90", mode=mode)
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.stat().st_size > 0
    if mode == "ptx":
        text = out.read_text()
        assert "pool_normalize_f16" in text and ".target sm_90" in text


def test_nvcc_command_rejects_odd_arch() -> None:
    with pytest.raises(ValueError, match="arch"):
        kernels.nvcc_command("nvcc", kernels.SOURCE, kernels.SOURCE, arch="90; rm -rf /")


def _reference64(h: np.ndarray, m: np.ndarray) -> np.ndarray:
    h64, m64 = h.astype(np.float64), m.astype(np.float64)[..., None]
    pooled = (h64 * m64).sum(1) / np.maximum(m64.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12), pooled


@needs_gpu
@needs_nvcc
@pytest.mark.parametrize("shape", [(1, 1, 384), (3, 7, 384), (64, 128, 384), (5, 256, 768), (4, 9, 33), (2, 600, 1024)])
def test_kernel_matches_float64_reference(shape: tuple[int, int, int]) -> None:
    import torch

    b, s, d = shape
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(b, s, d, generator=g) * 3).half()
    lengths = torch.randint(1, s + 1, (b,), generator=g)
    m = (torch.arange(s)[None, :] < lengths[:, None]).long()
    if b > 2:
        m[1] = 0  # an all-masked row pools to zeros
    fused = kernels.FusedPoolNormalize.for_device()
    out, pooled = fused(h.cuda(), m.cuda(), want_pooled=True)
    ref, ref_pooled = _reference64(h.numpy(), m.numpy())
    np.testing.assert_allclose(out.cpu().numpy(), ref, atol=1e-5, rtol=1e-4)  # float32 accumulation in another order
    np.testing.assert_allclose(pooled.cpu().numpy(), ref_pooled, atol=1e-4, rtol=1e-4)
    torch_out, _ = kernels.reference(h.cuda(), m.cuda())
    np.testing.assert_allclose(out.cpu().numpy(), torch_out.cpu().numpy(), atol=1e-5)


@needs_gpu
@needs_nvcc
def test_kernel_checks_inputs() -> None:
    import torch

    fused = kernels.FusedPoolNormalize.for_device()
    h = torch.zeros(2, 3, 8, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="float16 hidden and int64 mask"):
        fused(h.float(), torch.ones(2, 3, dtype=torch.long, device="cuda"))
    with pytest.raises(ValueError, match=r"got \(2, 3, 8\) and \(2, 4\)"):
        fused(h, torch.ones(2, 4, dtype=torch.long, device="cuda"))
    with pytest.raises(RuntimeError, match="too large"):
        fused(torch.zeros(1, 1, 20000, dtype=torch.float16, device="cuda"), torch.ones(1, 1, dtype=torch.long, device="cuda"))
