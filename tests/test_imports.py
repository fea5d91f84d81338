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
            if node.level:  # from .x (level 1) is package.x; from ..x (level 2) is parent(package).x
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                yield base if not node.module else f"{base}.{node.module}"
            else:
                yield node.module


def test_model_imports_only_torch_einops_and_itself():
    std = {"__future__", "dataclasses", "functools", "math", "re", "typing"}
    for path in (PKG / "model").glob("*.py"):
        for mod in imported_modules(path, "timesformer.model"):
            root = mod.split(".")[0]
            assert root in std or any(mod == a or mod.startswith(a + ".") for a in ALLOWED["model"]), (
                f"{path.name} imports {mod}"
            )


def package_imports(sub: str):
    for path in (PKG / sub).rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        package = "timesformer." + ".".join(rel.parts[:-1]) if len(rel.parts) > 1 else "timesformer"
        for mod in imported_modules(path, package):
            if mod and mod.startswith("timesformer"):
                yield path.name, mod


def test_layers_import_one_way():
    """data never imports model; convert imports only model; nothing imports the CLI."""
    forbidden = {
        "data": (
            "timesformer.model",
            "timesformer.engine",
            "timesformer.convert",
            "timesformer.cli",
            "timesformer.inference",
            "timesformer.pretrained",
        ),
        "convert": (
            "timesformer.data",
            "timesformer.engine",
            "timesformer.cli",
            "timesformer.inference",
            "timesformer.pretrained",
        ),
        "engine": ("timesformer.cli", "timesformer.inference"),
        "inference": ("timesformer.cli", "timesformer.engine"),
        "viz": ("timesformer.cli", "timesformer.engine", "timesformer.inference"),
    }
    for sub, bad in forbidden.items():
        for name, mod in package_imports(sub):
            assert not mod.startswith(bad), f"{sub}/{name} imports {mod}"


def test_the_version_is_defined_once_and_the_project_files_agree():
    """pyproject reads the version from the package; CITATION.cff names the same one; LICENSE is the declared one."""
    import re
    import tomllib
    from pathlib import Path

    import timesformer

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "timesformer.__version__"}
    assert re.search(r"^version: (\S+)$", (root / "CITATION.cff").read_text(), re.M)[1] == timesformer.__version__
    assert (root / "LICENSE").read_text().startswith(project["project"]["license"]["text"] + " License")
    assert (root / "src" / "timesformer" / "py.typed").exists()
    assert f"## [{timesformer.__version__}]" in (root / "CHANGELOG.md").read_text()
