"""Imports go one way: distill -> fastemb, never fastemb -> distill (DESIGN.md: the bundle is the
one contract between training and serving). Export finds distill's model types through
fastemb.export.registry, which distill fills."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FASTEMB = ROOT / "fastemb"
FORBIDDEN = "distill"


def imports_of(source: str, filename: str = "<test>") -> list[tuple[int, str]]:
    """(line, module) of every import in ``source``, at any depth (inside functions and
    ``try`` blocks too), including ``importlib.import_module("...")`` / ``__import__("...")``
    with a constant name."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def names_forbidden(module: str) -> bool:
    return module == FORBIDDEN or module.startswith(FORBIDDEN + ".")


def test_the_scanner_sees_lazy_and_dynamic_imports() -> None:
    source = (
        "import numpy\n"
        "def f():\n"
        "    try:\n"
        "        from distill.sts import evaluate_sts\n"
        "    except ImportError:\n"
        "        pass\n"
        "class C:\n"
        "    def g(self):\n"
        "        import distill.textcnn as t\n"
        "        importlib.import_module('distill.simbert')\n"
        "        return __import__('distill')\n"
        "from distiller import x\n"  # another package whose name merely starts the same
    )
    hits = [(line, m) for line, m in imports_of(source) if names_forbidden(m)]
    assert hits == [(4, "distill.sts"), (9, "distill.textcnn"), (10, "distill.simbert"), (11, "distill")]


def test_no_fastemb_module_imports_distill() -> None:
    files = sorted(FASTEMB.rglob("*.py"))
    assert len(files) > 20, f"expected the fastemb package under {FASTEMB}, found {len(files)} files"
    offenders = [f"{f.relative_to(ROOT)}:{line}: imports {m}"
                 for f in files for line, m in imports_of(f.read_text(encoding="utf-8"), str(f))
                 if names_forbidden(m)]
    assert offenders == [], "fastemb must not import distill:\n" + "\n".join(offenders)


def test_importing_every_fastemb_module_leaves_distill_out() -> None:
    """The same at run time, in a fresh interpreter: every fastemb module whose dependencies are
    installed is imported, and distill must not be in sys.modules afterwards."""
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in FASTEMB.rglob("*.py") if p.name != "__main__.py"
    )
    code = (
        "import importlib, json, sys\n"
        f"done, missing = [], []\n"
        f"for m in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "        done.append(m)\n"
        "    except ImportError as e:\n"  # an optional extra (tensorrt, ...) absent here
        "        missing.append(f'{m}: {e}')\n"
        "print(json.dumps({'done': done, 'missing': missing,\n"
        "                  'distill': sorted(k for k in sys.modules if k == 'distill' or k.startswith('distill.'))}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"fastemb.export", "fastemb.export.source", "fastemb.export.check", "fastemb.export.generator",
            "fastemb.export.layout"} <= set(result["done"]), result["missing"]
    assert result["distill"] == [], f"imported {result['distill']}"
