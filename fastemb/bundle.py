"""The bundle: the one contract between training and serving.

A bundle is a directory with ``fastemb.json`` (the manifest), ONNX graphs, ``tokenizer.json`` and
optionally a TensorRT ``model.plan``. The path of any file inside it resolves to the bundle. The
manifest records a sha256 for every file, checked on load, so a truncated copy or a swapped file
is refused with a message that names it. Nothing in a bundle is executable: loading never runs code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastemb._io import atomic_write_bytes, sha256_file

MANIFEST = "fastemb.json"
FORMAT_VERSION = 1
KINDS = ("encoder", "generator")
POOLINGS = ("cls", "mean", "max")


class BundleError(ValueError):
    """A bundle is missing, incomplete, corrupt or of the wrong kind."""


@dataclass
class Manifest:
    """What ``fastemb.json`` says about a bundle.

    ``files`` maps each file name in the bundle to its sha256. ``inputs`` are the graph's input
    names, in the order the tokenizer fills them. ``graphs`` names the ONNX files by role
    (``encoder``; for generators also ``encode_source`` / ``decode_step``), and ``extra`` holds
    kind-specific settings.
    """

    kind: Literal["encoder", "generator"]
    dim: int
    max_length: int
    inputs: list[str]
    pooling: str = "mean"
    normalize: bool = True
    precision: str = "fp32"
    output: str = "sentence_embedding"
    graphs: dict[str, str] = field(default_factory=lambda: {"encoder": "model.onnx"})
    source: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST) -> Manifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise BundleError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise BundleError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{where}: format_version {version!r} is not supported (this fastemb reads {FORMAT_VERSION})"
            )
        missing = [k for k in ("kind", "dim", "max_length", "inputs") if k not in raw]
        if missing:
            raise BundleError(f"{where}: missing field(s) {', '.join(missing)}")
        if raw["kind"] not in KINDS:
            raise BundleError(f"{where}: kind {raw['kind']!r} is not one of {', '.join(KINDS)}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})


def resolve_bundle_dir(path: str | Path) -> Path:
    """The bundle directory for ``path``: the directory itself, or the directory of a file in it."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"bundle path does not exist: {p}")
    d = p if p.is_dir() else p.parent
    if not (d / MANIFEST).is_file():
        raise BundleError(f"not a fastemb bundle: {d} has no {MANIFEST} (export one with `python -m fastemb export`)")
    return d


class Bundle:
    """A bundle directory with its manifest; ``verify`` checks every file's sha256."""

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.dir = resolve_bundle_dir(path)
        self.manifest = Manifest.from_json((self.dir / MANIFEST).read_text(encoding="utf-8"), str(self.dir / MANIFEST))
        if verify:
            self.verify()

    def file(self, name: str) -> Path:
        """The path of a file the manifest lists, checked to exist."""
        if name not in self.manifest.files:
            raise BundleError(f"{self.dir}: {MANIFEST} lists no file {name!r} (it has {', '.join(sorted(self.manifest.files))})")
        p = self.dir / name
        if not p.is_file():
            raise BundleError(f"{self.dir}: file {name!r} is missing")
        return p

    def graph(self, role: str = "encoder") -> Path:
        if role not in self.manifest.graphs:
            raise BundleError(f"{self.dir}: this {self.manifest.kind} bundle has no {role!r} graph")
        return self.file(self.manifest.graphs[role])

    def verify(self) -> None:
        for name, digest in self.manifest.files.items():
            p = self.dir / name
            if not p.is_file():
                raise BundleError(f"{self.dir}: file {name!r} listed in {MANIFEST} is missing")
            actual = sha256_file(p)
            if actual != digest:
                raise BundleError(
                    f"{self.dir}: checksum mismatch for {name!r} (manifest {digest[:12]}..., file {actual[:12]}...): "
                    "the file is corrupt or was replaced; re-export the bundle"
                )

    def __repr__(self) -> str:
        m = self.manifest
        return f"Bundle({str(self.dir)!r}, kind={m.kind}, dim={m.dim}, precision={m.precision})"


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    """Record the sha256 of every file in ``directory`` and write ``fastemb.json`` atomically."""
    directory = Path(directory)
    manifest.files = {
        p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    path = directory / MANIFEST
    atomic_write_bytes(path, manifest.to_json().encode("utf-8"))
    return path
