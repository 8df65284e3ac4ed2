"""Read from the imports: dnnq.service -> dnnq.workers -> dnnq.models, never upward, and one module
of the engine knows CuPy. A static walk of every module's import statements (functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What each layer may import of dnnq (its own package included); the console script sits on top.
ALLOWED = {
    "models": ("dnnq.models",),
    "workers": ("dnnq.workers", "dnnq.models"),
    "service": ("dnnq.service", "dnnq.workers", "dnnq.models"),
}
CUPY_MODULES = {"models/backend.py"}  # the one module that imports CuPy


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_imports_point_service_to_workers_to_models():
    upward = []
    for layer, allowed in ALLOWED.items():
        files = sorted((ROOT / layer).rglob("*.py"))
        assert files, layer
        for path in files:
            for name in _imports(path):
                if name == "dnnq" or (name.startswith("dnnq.") and not name.startswith(allowed)):
                    upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == []


def test_one_module_imports_cupy():
    importers = {
        str(path.relative_to(ROOT))
        for folder in ("models", "workers", "service", "dnnq")
        for path in (ROOT / folder).rglob("*.py")
        if any(name == "cupy" or name.startswith(("cupy.", "cupyx")) for name in _imports(path))
    }
    assert importers == CUPY_MODULES
