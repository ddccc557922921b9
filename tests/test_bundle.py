"""fastemb.bundle: the manifest is covered by its own checksum and checked against the graph, so an
edited or mismatched manifest is refused at load with a BundleError that says what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fastemb.bundle import MANIFEST, Bundle, BundleError
from fastemb.encoder import Encoder


def edited(bundle: Path, where: Path, keep_checksum: bool = True, **changes: object) -> Path:
    """A copy of ``bundle`` with manifest fields changed (its recorded checksum kept or dropped)."""
    b = where / "edited"
    shutil.rmtree(b, ignore_errors=True)
    shutil.copytree(bundle, b)
    m = json.loads((b / MANIFEST).read_text())
    m.update(changes)
    if not keep_checksum:
        m.pop("manifest_sha256", None)
    (b / MANIFEST).write_text(json.dumps(m))
    return b


@pytest.mark.parametrize("field, value", [("dim", 768), ("max_length", 100_000), ("pooling", "cls"),
                                          ("normalize", "flipped")])
def test_an_edited_manifest_is_refused(tiny_bundle: Path, tmp_path: Path, field: str, value: object) -> None:
    if value == "flipped":  # whatever the source model does, the edit says the opposite
        value = not json.loads((tiny_bundle / MANIFEST).read_text())[field]
    b = edited(tiny_bundle, tmp_path, **{field: value})
    with pytest.raises(BundleError, match="fastemb.json was changed after export"):
        Encoder(b)


@pytest.mark.parametrize(
    "field, value, message",
    [("dim", 768, "dim is 768 but the graph's 'sentence_embedding' output has width 32"),
     ("max_length", 100_000, "max_length is 100000 but the graph has 128 positions")],
)
def test_the_manifest_is_checked_against_the_graph(tiny_bundle: Path, tmp_path: Path, field: str, value: int,
                                                   message: str) -> None:
    """Without its checksum (an older or a hand-written manifest), the graph still refuses the claim,
    also when checksums are skipped."""
    b = edited(tiny_bundle, tmp_path, keep_checksum=False, **{field: value})
    for verify in (True, False):
        with pytest.raises(BundleError, match=message):
            Encoder(b, verify=verify)


def test_a_manifest_without_checksum_that_fits_its_graph_loads(tiny_bundle: Path, tmp_path: Path) -> None:
    b = edited(tiny_bundle, tmp_path, keep_checksum=False, max_length=64)
    texts = ["word " * 100, "short"]
    got = Encoder(b).encode(texts)
    assert Encoder(b).max_length == 64
    np.testing.assert_allclose(got[1], Encoder(tiny_bundle).encode("short"), atol=1e-6)


@pytest.mark.parametrize(
    "changes, message",
    [({"dim": "32"}, "dim must be an integer >= 1, got '32'"),
     ({"dim": 0}, "dim must be an integer >= 1, got 0"),
     ({"max_length": True}, "max_length must be an integer >= 1, got True"),
     ({"inputs": "input_ids"}, "inputs must be a list of names"),
     ({"graphs": {"encoder": "../model.onnx"}}, "'../model.onnx' is not a plain file name"),
     ({"files": {"/etc/passwd": "0" * 64}}, "'/etc/passwd' is not a plain file name"),
     ({"extra": []}, "extra must be a JSON object")],
)
def test_malformed_fields_are_refused(tiny_bundle: Path, tmp_path: Path, changes: dict, message: str) -> None:
    b = edited(tiny_bundle, tmp_path, keep_checksum=False, **changes)
    with pytest.raises(BundleError, match=message):
        Bundle(b, verify=False)


def test_a_missing_bundle_names_the_version_an_interrupted_replacement_parked(tmp_path: Path) -> None:
    (tmp_path / ".b.old-1a2b3c4d").mkdir()
    with pytest.raises(FileNotFoundError, match=r"previous version is parked in .*\.b\.old-1a2b3c4d"):
        Bundle(tmp_path / "b")
