"""Imports point one way: service -> workers -> models. No module of dnnq.workers imports the API
(dnnq.service), the CLI (dnnq.cli and its commands) or FastAPI, even when every one is loaded."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import dnnq.workers


def test_workers_import_neither_the_service_nor_the_cli():
    names = sorted(f"dnnq.workers.{m.name}" for m in pkgutil.iter_modules([str(Path(dnnq.workers.__file__).parent)]))
    assert "dnnq.workers.runner" in names and "dnnq.workers.onnx_export" in names  # the walk found the package
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('dnnq.service', 'dnnq.cli', 'dnnq.commands', "
        "'dnnq.server_commands', 'dnnq.up', 'fastapi'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
