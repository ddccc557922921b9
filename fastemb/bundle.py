"""The bundle: the one contract between training and serving.

A bundle is a directory with ``fastemb.json`` (the manifest), ONNX graphs, ``tokenizer.json`` and
optionally a TensorRT ``model.plan``. The path of any file inside it resolves to the bundle. The
manifest records a sha256 for every file and one of its own content (``manifest_sha256``), checked
on load, so a truncated copy, a swapped file or an edited manifest is refused with a message that
names it. The runtimes also check the manifest against the graphs (:func:`check_graph`): output
width against ``dim``, the position limit exported into the graph against ``max_length``. Nothing
in a bundle is executable: loading never runs code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastemb._io import atomic_write_bytes, sha256_file

MANIFEST = "fastemb.json"
FORMAT_VERSION = 1
KINDS = ("encoder", "generator")
POOLINGS = ("cls", "mean", "max")
# ONNX metadata (model properties) the exporters write into each graph: what the graph itself
# supports, which the runtime compares with the manifest's claims
META_DIM, META_POSITIONS = "fastemb.dim", "fastemb.max_positions"


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
    manifest_sha256: str = ""  # of the other fields (see digest); empty in bundles from before it existed

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def digest(self) -> str:
        """sha256 of every field but ``manifest_sha256``, as canonical JSON."""
        fields = {k: v for k, v in asdict(self).items() if k != "manifest_sha256"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()

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
        m = cls(**{k: v for k, v in raw.items() if k in known})
        m._check_fields(where)
        return m

    def _check_fields(self, where: str) -> None:
        for name in ("dim", "max_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BundleError(f"{where}: {name} must be an integer >= 1, got {v!r}")
        if not isinstance(self.inputs, list) or not all(isinstance(i, str) for i in self.inputs):
            raise BundleError(f"{where}: inputs must be a list of names, got {self.inputs!r}")
        for name in ("graphs", "files", "source", "extra"):
            if not isinstance(getattr(self, name), dict):
                raise BundleError(f"{where}: {name} must be a JSON object, got {getattr(self, name)!r}")
        for f in [*self.files, *self.graphs.values()]:
            if not isinstance(f, str) or not f or Path(f).name != f or f in (".", ".."):
                raise BundleError(f"{where}: {f!r} is not a plain file name (bundle files live in the bundle directory)")


def resolve_bundle_dir(path: str | Path) -> Path:
    """The bundle directory for ``path``: the directory itself, or the directory of a file in it."""
    p = Path(path)
    if not p.exists():
        parked = sorted(p.parent.glob(f".{p.name}.old-*")) if p.parent.is_dir() else []
        hint = (f" (the previous version is parked in {parked[0]} by an interrupted replacement; the next "
                "export to this path restores it)") if parked else ""
        raise FileNotFoundError(f"bundle path does not exist: {p}{hint}")
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
        m = self.manifest
        if m.manifest_sha256 and m.manifest_sha256 != m.digest():
            raise BundleError(
                f"{self.dir}: {MANIFEST} was changed after export (its manifest_sha256 does not match its "
                "content); re-export the bundle (e.g. with --max-length) rather than editing the manifest"
            )
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
    manifest.manifest_sha256 = manifest.digest()
    path = directory / MANIFEST
    atomic_write_bytes(path, manifest.to_json().encode("utf-8"))
    return path


def check_graph(bundle: Bundle, session: Any, output: str, dim: int | None = None,
                max_positions: int | None = None) -> None:
    """Refuse a manifest that claims what the graph (an onnxruntime session) cannot do.

    ``output``'s last dimension, where the graph declares it (else the ``fastemb.dim`` metadata),
    must equal ``dim`` (default: the manifest's ``dim``); ``max_positions`` (default: the
    manifest's ``max_length``) must not exceed the position limit the exporter stamped into the
    graph. Graphs exported before the stamp existed are checked for their width only.
    """
    m, where = bundle.manifest, f"{bundle.dir}/{MANIFEST}"
    dim = m.dim if dim is None else dim
    meta = dict(session.get_modelmeta().custom_metadata_map)
    shapes = {o.name: o.shape for o in session.get_outputs()}
    if output not in shapes:
        raise BundleError(f"{bundle.dir}: the graph has no {output!r} output (outputs: {', '.join(shapes)})")
    width = shapes[output][-1] if shapes[output] else None
    width = width if isinstance(width, int) else (int(meta[META_DIM]) if META_DIM in meta else None)
    if width is not None and width != dim:
        raise BundleError(f"{where}: dim is {dim} but the graph's {output!r} output has width {width}; "
                          "the manifest does not belong to this graph (re-export the bundle)")
    if META_POSITIONS in meta:
        limit, wanted = int(meta[META_POSITIONS]), m.max_length if max_positions is None else max_positions
        if wanted > limit:
            what = "max_length" if max_positions is None else "max_positions"
            raise BundleError(f"{where}: {what} is {wanted} but the graph has {limit} positions; "
                              "the manifest does not belong to this graph (re-export the bundle)")
