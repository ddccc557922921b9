"""What comes after the transformer, in torch: pooling, Dense layers, L2 normalization.

The one torch implementation of these, used by the export pipeline (whose ONNX graph computes
them), by ``distill``'s SentenceEncoder and by the torch-CUDA backend. Pooling and normalization
run in float32 whatever the encoder's precision: the sum of squares overflows float16.
Needs torch (``pip install 'fastemb[export]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import torch
    from torch import nn
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"this needs torch: pip install 'fastemb[export]' ({e})") from None

from fastemb.export.layout import ACTIVATIONS, POOLINGS, DenseLayer, ModelLayout, write_layout


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Token states ``[b, L, d]`` -> ``[b, d]`` in float32: the first token (``cls``), the mean
    of the real tokens (``mean``), or their element-wise maximum (``max``)."""
    h = hidden.float()
    m = mask.unsqueeze(-1).to(h.dtype)
    if mode == "cls":
        return h[:, 0]
    if mode == "mean":
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    if mode == "max":
        return h.masked_fill(m == 0, float("-inf")).amax(dim=1)
    raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLINGS)}")


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``x / max(||x||_2, eps)`` over the last axis, in float32."""
    x = x.float()
    return x / x.norm(p=2, dim=-1, keepdim=True).clamp(min=eps)


class Pooling(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in POOLINGS:
            raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLINGS)}")
        self.mode = mode

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pool(hidden, mask, self.mode)


class Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(x)


class Dense(nn.Module):
    """sentence-transformers' Dense module: ``activation(linear(x))``, activation identity or tanh.

    Its state dict (``linear.weight``, ``linear.bias``) is the one sentence-transformers saves.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "identity") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"Dense activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = activation

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return torch.tanh(y) if self.activation == "tanh" else y

    @classmethod
    def wrap(cls, module: nn.Module) -> Dense:
        """A Dense as is; an ``nn.Linear`` (whitening, a projection head) as an identity Dense sharing its weights."""
        if isinstance(module, Dense):
            return module
        if not isinstance(module, nn.Linear):
            raise TypeError(f"expected a Dense or an nn.Linear, got {type(module).__name__}")
        dense = cls(module.in_features, module.out_features, module.bias is not None)
        dense.linear = module
        return dense

    @classmethod
    def load(cls, layer: DenseLayer) -> Dense:
        dense = cls(layer.in_features, layer.out_features, layer.bias, layer.activation)
        if (layer.path / "model.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(layer.path / "model.safetensors"))
        else:
            state = torch.load(layer.path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        try:
            dense.linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        except RuntimeError as e:
            raise ValueError(f"{layer.path}: Dense weights do not match its config.json ({e})") from None
        return dense

    def spec(self) -> DenseLayer:
        return DenseLayer(Path(), self.in_features, self.out_features, self.linear.bias is not None, self.activation)

    def save_weights(self, directory: Path) -> None:
        from safetensors.torch import save_file

        state = {f"linear.{k}": v.detach().float().contiguous().cpu() for k, v in self.linear.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))


def load_dense(layout: ModelLayout) -> list[Dense]:
    return [Dense.load(layer) for layer in layout.dense]


def save_heads(directory: str | Path, *, pooling: str, hidden_size: int, dense: Sequence[nn.Module] = (),
               normalize: bool = False, max_length: int | None = None, **st_config: Any) -> None:
    """Write the sentence-transformers modules after a transformer saved in ``directory``
    (see :func:`fastemb.export.layout.write_layout`), Dense weights included."""
    layers = [Dense.wrap(d) for d in dense]
    dirs = write_layout(directory, pooling=pooling, hidden_size=hidden_size, dense=[d.spec() for d in layers],
                        normalize=normalize, max_length=max_length, **st_config)
    for layer, d in zip(layers, dirs, strict=True):
        layer.save_weights(d)
