"""fastemb.export.registry: model types export does not define, added by the package that does
(distill's TextCNN and SimBERT), at run time or through entry points without importing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from fastemb.export import registry

ROOT = Path(__file__).resolve().parents[1]


def test_register_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="kind must be one of sources, generators, got 'encoders'"):
        registry.register("encoders", "x", lambda *a: None)
    with pytest.raises(TypeError, match="loader must be a callable or a 'module:attribute' string, got 'nocolon'"):
        registry.register("sources", "x", "nocolon")
    with pytest.raises(ValueError, match="kind must be one of"):
        registry.lookup("nothing", "x")
    assert registry.lookup("sources", "no-such-type") is None


def test_a_string_loader_is_imported_when_first_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._registered, "sources", {})
    registry.register("sources", "toy", "json:dumps")
    assert registry.lookup("sources", "toy") is json.dumps and "toy" in registry.names("sources")
    registry.register("sources", "broken", "json:no_such_function")
    with pytest.raises(ImportError, match=r"the exporter of 'broken' \(json:no_such_function\) cannot be loaded"):
        registry.lookup("sources", "broken")


def test_distill_registers_what_pyproject_declares() -> None:
    import distill

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert {kind: declared[registry.GROUP.format(kind=kind)] for kind in registry.KINDS} == distill.EXPORTERS
    from distill.exporters import simbert_generator, textcnn_source

    assert registry.lookup("sources", "textcnn") is textcnn_source
    assert registry.lookup("generators", "simbert") is simbert_generator


def test_unregistered_model_type_is_refused_with_what_is_known(tmp_path: Path) -> None:
    from fastemb.export.source import load_source

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "gpt2", "hidden_size": 8}))
    with pytest.raises(ValueError, match=r"model_type 'gpt2' is not supported; fastemb exports bert, .*textcnn"):
        load_source(tmp_path / "m")


def test_cli_exports_a_textcnn_found_by_entry_point_without_importing_distill(tmp_path: Path) -> None:
    """An installed distribution's entry points (a dist-info directory on the path here, as pip
    writes it) let ``python -m fastemb export`` load distill's TextCNN exporter: distill is imported
    by the loader itself, not by anything in fastemb, and not before the export needs it."""
    from distill.students import textcnn_from_teacher
    from fastemb import Encoder
    from tests.conftest import make_tiny_bert

    model = textcnn_from_teacher(make_tiny_bert(tmp_path / "t"), out_dim=12, embed_dim=8, num_filters=4,
                                 max_length=32).eval()
    model.save(tmp_path / "cnn")
    site = tmp_path / "site"
    info = site / "distill_entry_points-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: distill-entry-points\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[fastemb.export.sources]\ntextcnn = distill.exporters:textcnn_source\n")
    probe = (
        "import sys, runpy\n"
        "from fastemb.export import registry\n"
        "assert 'distill' not in sys.modules and 'textcnn' not in registry._registered['sources']\n"
        "assert 'textcnn' in registry.names('sources'), registry.names('sources')\n"
        f"sys.argv = ['fastemb', 'export', {str(tmp_path / 'cnn')!r}, {str(tmp_path / 'bundle')!r}]\n"
        "runpy.run_module('fastemb', run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    texts = ["a small test", "another sentence entirely"]
    import numpy as np
    import torch

    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(**model.tokenize(texts)), dim=-1).numpy()
    np.testing.assert_allclose(Encoder(tmp_path / "bundle").encode(texts), expected, atol=1e-5)
