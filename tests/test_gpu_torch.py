"""The torch GPU backend: its hand-written BERT forward equals the exported graph (checked on the
CPU in float32, everywhere); float16 + fused kernel + CUDA graphs on a GPU (skipped elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest

from fastemb.encoder import Encoder
from fastemb.tokenize import length_batches, pad_batch

TEXTS = ["short", "a somewhat longer sentence about cats and dogs", "x", "medium length text here",
         "the longest sentence of all of them, by a wide margin indeed, with many many more words"] * 3


def _feeds(enc: Encoder, texts: list[str], batch_size: int):
    ids = [e.ids for e in enc.tokenizer.encode_batch(texts)]
    for b in length_batches([len(x) for x in ids], batch_size):
        yield b, pad_batch([ids[j] for j in b], enc.backend.inputs, enc._pad_id)


def test_bert_forward_matches_onnx_on_cpu(tiny_bert, tiny_bundle) -> None:
    from fastemb.backends.torch_cuda import TorchCudaBackend

    be = TorchCudaBackend(tiny_bert, device="cpu", dtype="float32", fused=False, cuda_graphs=False)
    assert be.provider == "torch-cpu+float32"
    enc = Encoder(tiny_bundle)
    for _idx, feed in _feeds(enc, TEXTS, 4):
        for output in ("sentence_embedding", "pooled_embedding"):
            np.testing.assert_allclose(be.run(feed, output), enc.backend.run(feed, output), atol=2e-5)


def test_padding_to_a_graph_bucket_changes_no_row(tiny_bert, tiny_bundle) -> None:
    """What the CUDA-graph path relies on: extra rows and positions with mask 0 leave real rows as they were."""
    import torch

    from fastemb.backends.torch_cuda import TorchCudaBackend

    be = TorchCudaBackend(tiny_bert, device="cpu", dtype="float32", fused=False, cuda_graphs=False)
    _, feed = next(_feeds(Encoder(tiny_bundle), TEXTS, 5))
    b, s = feed["input_ids"].shape
    t = {k: torch.from_numpy(v) for k, v in feed.items()}
    padded = {k: torch.zeros((8, 32), dtype=torch.long) for k in feed}
    for k in feed:
        padded[k][:b, :s] = t[k]
    with torch.inference_mode():
        ref, _ = be.forward(t["input_ids"], t["attention_mask"], t["token_type_ids"])
        got, _ = be.forward(padded["input_ids"], padded["attention_mask"], padded["token_type_ids"])
    np.testing.assert_allclose(got[:b].numpy(), ref.numpy(), atol=1e-5)
    assert torch.isfinite(got).all()  # all-masked padding rows do not turn to NaN


def test_cpu_refuses_gpu_only_options(tiny_bert) -> None:
    from fastemb.backends.torch_cuda import TorchCudaBackend

    with pytest.raises(ValueError, match="need a CUDA device"):
        TorchCudaBackend(tiny_bert, device="cpu", dtype="float32", fused=True, cuda_graphs=False)


def test_no_gpu_when_one_is_asked_for(tiny_bert) -> None:
    import torch

    from fastemb.backends.torch_cuda import TorchCudaBackend

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU error cannot be provoked")
    with pytest.raises(RuntimeError, match=r"device='cuda' was asked for, but torch .* sees no CUDA GPU"):
        TorchCudaBackend(tiny_bert, device="cuda")


def _gpu_reason() -> str:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch.cuda.is_available() is False (torch {torch.__version__})"
    from fastemb.backends.kernels import find_nvcc

    return "" if find_nvcc() else "nvcc not found (the fused kernel is built at run time)"


GPU_WHY = _gpu_reason()


@pytest.mark.skipif(bool(GPU_WHY), reason=GPU_WHY or "no GPU")
def test_fp16_fused_graphs_match_onnx_fp32(tiny_bert, tiny_bundle) -> None:
    from fastemb.backends.torch_cuda import TorchCudaBackend

    be = TorchCudaBackend(tiny_bert, device="cuda", max_batch=8)
    eager = TorchCudaBackend(tiny_bert, device="cuda", fused=False, cuda_graphs=False)
    enc = Encoder(tiny_bundle)
    for _ in range(2):  # second pass replays the captured graphs
        for _idx, feed in _feeds(enc, TEXTS, 5):
            ref = enc.backend.run(feed, "sentence_embedding")
            for b in (be, eager):
                got = b.run(feed, "sentence_embedding")
                assert (ref * got).sum(1).min() >= 0.999
    assert be.graphs and all(r in be.batch_buckets and s in be.seq_buckets for r, s in be.graphs)
    big = next(_feeds(enc, TEXTS, 15))[1]  # 15 rows > max_batch 8: run in two pieces
    np.testing.assert_allclose(be.run(big, "sentence_embedding"), enc.backend.run(big, "sentence_embedding"), atol=3e-3)
