"""Torch-on-CUDA backend: a BERT encoder in float16 with SDPA attention, CUDA graphs for bucketed
shapes, and the fused pooling kernel (``csrc/cuda/pool_normalize.cu``).

This is the GPU path that runs where TensorRT cannot be installed. It loads the *source model
directory* (the one a bundle is exported from; the bundle records it), not the ONNX graph.
Needs torch with CUDA and transformers (``pip install 'fastemb[gpu]'``).

The encoder is written out here (embeddings, attention through
``torch.nn.functional.scaled_dot_product_attention``, feed-forward) from the Hugging Face
module's weights, rather than calling the Hugging Face module: its mask preparation inspects the
mask on the host (``mask.all()``), which breaks CUDA graph capture, and the forward is short.
Inputs are padded up to a (batch, sequence) bucket -- powers of two for the batch, 16, 32, ...
for the sequence -- and each bucket's forward is captured once as a CUDA graph and replayed:
at batch 1 the launch overhead of ~80 kernels is most of the time. Padded positions are masked,
so they change no real row.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastemb.backends.profiles import bucket, buckets

GELU = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}


def require_torch() -> Any:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(f"the torch GPU backend needs torch and transformers: pip install 'fastemb[gpu]' ({e})") from None
    return torch


def resolve_device(torch: Any, device: str) -> Any:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for, but torch {torch.__version__} sees no CUDA GPU "
                           f"(torch.cuda.is_available() is False; built for CUDA {torch.version.cuda})")
    return dev


def build_bert(hf: Any, dtype: Any, device: Any) -> Any:
    """An inference-only copy of a Hugging Face BertModel's encoder: ``(ids, mask, types) -> hidden``."""
    torch = require_torch()
    nn, F = torch.nn, torch.nn.functional
    cfg = hf.config
    if cfg.hidden_act not in GELU:
        raise ValueError(f"hidden_act {cfg.hidden_act!r} is not supported by the torch GPU backend ({', '.join(GELU)})")
    approximate = GELU[cfg.hidden_act]
    heads = cfg.num_attention_heads

    def copy(src: Any) -> Any:  # copies, so that moving this model leaves the Hugging Face one as it was
        return deepcopy(src)

    class Layer(nn.Module):
        def __init__(self, layer: Any) -> None:
            super().__init__()
            a = layer.attention
            self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # one GEMM instead of three
            with torch.no_grad():
                self.qkv.weight.copy_(torch.cat([a.self.query.weight, a.self.key.weight, a.self.value.weight]))
                self.qkv.bias.copy_(torch.cat([a.self.query.bias, a.self.key.bias, a.self.value.bias]))
            self.attn_out, self.ln1 = copy(a.output.dense), copy(a.output.LayerNorm)
            self.inter, self.out, self.ln2 = copy(layer.intermediate.dense), copy(layer.output.dense), copy(layer.output.LayerNorm)

        def forward(self, x: Any, bias: Any) -> Any:
            b, s, h = x.shape
            q, k, v = self.qkv(x).view(b, s, 3, heads, h // heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            x = self.ln1(x + self.attn_out(a.transpose(1, 2).reshape(b, s, h)))
            return self.ln2(x + self.out(F.gelu(self.inter(x), approximate=approximate)))

    class Bert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            e = hf.embeddings
            self.word, self.pos, self.types, self.ln = (copy(m) for m in (e.word_embeddings, e.position_embeddings,
                                                                          e.token_type_embeddings, e.LayerNorm))
            self.layers = nn.ModuleList(Layer(layer) for layer in hf.encoder.layer)
            self.register_buffer("positions", torch.arange(cfg.max_position_embeddings), persistent=False)

        def forward(self, ids: Any, mask: Any, types: Any = None) -> Any:
            x = self.word(ids) + self.pos(self.positions[: ids.shape[1]])[None]
            x = x + (self.types(types) if types is not None else self.types.weight[0])
            x = self.ln(x)
            # Additive mask with the dtype's minimum, as Hugging Face does: a row with no real
            # position then attends uniformly instead of turning to NaN.
            bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            for layer in self.layers:
                x = layer(x, bias)
            return x

    return Bert().eval().to(device=device, dtype=dtype)


@dataclass
class _Graph:
    graph: Any
    ids: Any
    mask: Any
    types: Any
    out: Any
    pooled: Any


class TorchCudaBackend:
    """``run(feed, output)`` like the other backends, on torch (float16 on a GPU by default)."""

    def __init__(self, model_dir: str | Path, device: str = "cuda", dtype: str = "float16", fused: bool = True,
                 cuda_graphs: bool = True, max_batch: int = 128, max_length: int | None = None) -> None:
        torch = require_torch()
        from fastemb.export.source import load_source

        self.torch = torch
        self.device = resolve_device(torch, device)
        on_gpu = self.device.type == "cuda"
        if (fused or cuda_graphs) and not on_gpu:
            raise ValueError(f"fused=True and cuda_graphs=True need a CUDA device, got device={device!r}")
        src = load_source(model_dir, max_length=max_length)
        hf = src.module.encoder
        if getattr(hf.config, "model_type", None) != "bert":
            raise ValueError(f"the torch GPU backend runs BERT encoders; {model_dir} is "
                             f"{getattr(hf.config, 'model_type', 'not a transformer')} (export a bundle and use ONNX Runtime)")
        self.dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
        self.model = build_bert(hf, self.dtype, self.device)
        self.dense = src.module.dense.to(self.device).float().eval()
        self.pooling, self.dim, self.max_length = src.pooling, src.dim, src.max_length
        self.inputs = list(src.inputs)
        self.outputs = ["sentence_embedding", "pooled_embedding"]
        self.fused = None
        if fused:
            if src.pooling != "mean" or len(self.dense) or self.dtype != torch.float16:
                raise ValueError(f"the fused kernel does mean pooling of float16 states straight into normalization; "
                                 f"this model has {src.pooling} pooling, {len(self.dense)} dense layer(s), dtype {dtype}")
            from fastemb.backends.kernels import FusedPoolNormalize

            self.fused = FusedPoolNormalize.for_device(self.device)
        self.max_batch = max_batch
        self.batch_buckets, self.seq_buckets = buckets(max_batch, 1), buckets(self.max_length, 16)
        self.graphs: dict[tuple[int, int], _Graph] | None = {} if cuda_graphs else None
        self._pool = None
        parts = [f"torch-{self.device.type}", dtype] + (["fused"] if self.fused else []) + (["graphs"] if cuda_graphs else [])
        self.provider = "+".join(parts)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, ids: Any, mask: Any, types: Any = None) -> tuple[Any, Any]:
        """Device tensors in, ``(normalized, pooled)`` float32 ``[batch, dim]`` device tensors out."""
        from fastemb.export.heads import l2_normalize, pool

        h = self.model(ids, mask, types)
        if self.fused is not None:
            return self.fused(h, mask, want_pooled=True)
        v = self.dense(pool(h, mask, self.pooling))  # the export graph's head (fastemb.export.heads)
        return l2_normalize(v), v

    def run(self, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
        if output not in self.outputs:
            raise ValueError(f"no output {output!r} (outputs: {self.outputs})")
        torch = self.torch
        rows = feed["input_ids"].shape[0]
        out = np.empty((rows, self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, rows, self.max_batch):
                part = {k: torch.from_numpy(np.ascontiguousarray(v[start:start + self.max_batch])) for k, v in feed.items()}
                normalized, pooled = self._run(part)
                res = normalized if output == "sentence_embedding" else pooled
                out[start:start + len(res)] = res.cpu().numpy()
        return out

    def _run(self, part: dict[str, Any]) -> tuple[Any, Any]:
        b, s = part["input_ids"].shape
        key = (bucket(b, self.batch_buckets), bucket(s, self.seq_buckets))
        if self.graphs is None or None in key:
            dev = {k: v.to(self.device, non_blocking=True) for k, v in part.items()}
            return self.forward(dev["input_ids"], dev["attention_mask"], dev.get("token_type_ids"))
        g = self.graphs.get(key) or self._capture(*key)
        for name, static in (("input_ids", g.ids), ("attention_mask", g.mask), ("token_type_ids", g.types)):
            if static is None:
                continue
            static.zero_()
            static[:b, :s].copy_(part[name], non_blocking=True)
        g.graph.replay()
        return g.out[:b], g.pooled[:b]

    def _capture(self, rows: int, seq: int) -> _Graph:
        torch = self.torch
        ids = torch.zeros((rows, seq), dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        types = torch.zeros_like(ids) if "token_type_ids" in self.inputs else None
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up: cuBLAS handles, SDPA kernel choice, the kernel library
            for _ in range(2):
                self.forward(ids, mask, types)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # One memory pool for all buckets: graphs never run concurrently, and each replay's
        # outputs are copied out before the next replay.
        with torch.cuda.graph(graph, pool=self._pool):
            out, pooled = self.forward(ids, mask, types)
        self._pool = graph.pool()
        g = _Graph(graph, ids, mask, types, out, pooled)
        self.graphs[(rows, seq)] = g  # type: ignore[index]
        return g

    def on_oom(self) -> None:
        """Before an out-of-memory retry: drop captured graphs and cached blocks."""
        if self.graphs:
            self.graphs.clear()
            self._pool = None
        self.torch.cuda.empty_cache()
