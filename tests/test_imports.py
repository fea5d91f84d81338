"""Imports go one way: the model knows nothing of data, training, conversion or the CLI."""
import ast
from pathlib import Path

import timesformer

PKG = Path(timesformer.__file__).parent
ALLOWED = {
    "model": {"torch", "einops", "timesformer.model"},
}


def imported_modules(path: Path, package: str):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield package if not node.module else f"{package}.{node.module}"
            else:
                yield node.module


def test_model_imports_only_torch_einops_and_itself():
    std = {"__future__", "dataclasses", "functools", "math", "re", "typing"}
    for path in (PKG / "model").glob("*.py"):
        for mod in imported_modules(path, "timesformer.model"):
            root = mod.split(".")[0]
            assert root in std or any(mod == a or mod.startswith(a + ".") for a in ALLOWED["model"]), \
                f"{path.name} imports {mod}"
