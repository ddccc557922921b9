"""Shared helpers for bench scripts: machine description, table formatting, result files.

Every bench script prints a table, ends with one JSON line, and writes both to
``bench/results/<name>.md`` with the date, the machine and the exact command.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_model() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().replace("\n", "; ")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "none"


def machine() -> dict[str, str]:
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        have = set(text.split("flags", 1)[1].split("\n", 1)[0].split())
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16") if f in have)
    except (OSError, IndexError):
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "cpu_flags": flags,
        "gpu": gpu_model(),
        "python": platform.python_version(),
    }


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats are printed as given (format them before)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def write_result(name: str, title: str, body: str, summary: dict, versions: dict[str, str] | None = None) -> Path:
    """Print ``body`` and the JSON summary, and write them with the machine and command."""
    info = machine()
    if versions:
        info.update(versions)
    doc = [f"# {title}", "", f"Command: `{command()}`", ""]
    doc += [f"- {k}: {v}" for k, v in info.items()]
    doc += ["", body, "", "```json", json.dumps(summary, sort_keys=True), "```", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(doc))
    os.replace(tmp, path)
    print(body)
    print(json.dumps(summary, sort_keys=True))
    return path


def _cpu_line() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal


class StealMeter:
    """CPU steal time (another tenant's use of our cores) since creation, as a fraction of all CPU time."""

    def __init__(self) -> None:
        try:
            self.start = _cpu_line()
        except OSError:
            self.start = None

    def read(self) -> float:
        if self.start is None:
            return float("nan")
        now = _cpu_line()
        delta = [b - a for a, b in zip(self.start, now, strict=True)]
        total = sum(delta)
        return delta[7] / total if total else 0.0
