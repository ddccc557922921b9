"""The runtime stays small: importing and using it pulls in neither torch nor transformers."""

from __future__ import annotations

import subprocess
import sys


def test_runtime_does_not_import_torch_or_transformers(tiny_bundle) -> None:
    code = (
        "import sys, fastemb\n"
        "from fastemb import Encoder, Bundle\n"
        "import fastemb.cli, fastemb.encoder, fastemb.bundle, fastemb.tokenize, fastemb.backends.ort\n"
        "import fastemb.batcher, fastemb.serve.app  # the server stays torch-free too\n"
        f"v = Encoder({str(tiny_bundle)!r}).encode(['hello world'])\n"
        "assert v.shape == (1, 32), v.shape\n"
        "bad = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"runtime imported {out.stdout.strip()}"
