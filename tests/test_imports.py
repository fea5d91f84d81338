"""Imports go one way: the model knows nothing of data, training, conversion or the CLI."""

import ast
from pathlib import Path

import timesformer

PKG = Path(timesformer.__file__).parent
ALLOWED = {
    "model": {"torch", "einops", "timesformer.model"},
}


def imported_modules(path: Path, package: str):
    """Every module ``path`` imports, at its top or inside functions (ast.walk sees both)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield _from_module(node, package)


def _from_module(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module
    # from .x (level 1) is package.x; from ..x (level 2) is parent(package).x
    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
    return base if not node.module else f"{base}.{node.module}"


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


def module_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package modules it imports, wherever the import statement sits: one inside a
    function makes a dependency as much as one at the top. ``from pkg import name`` imports ``pkg.name`` where that is
    a module, else ``pkg``."""
    modules = {}
    for path in PKG.rglob("*.py"):
        parts = ("timesformer", *path.relative_to(PKG).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, name if parts[-1] == "__init__" else name.rpartition(".")[0])
    graph = {}
    for name, (path, package) in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _from_module(node, package)
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A path ``a -> b -> ... -> a`` in ``graph``, or None."""
    state, stack = {}, []  # state: 1 on the current path, 2 done

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_imports_one_that_imports_it_back():
    """No import cycle between the package's modules, counting imports inside functions: a lazy import hides a cycle
    from Python, not from a reader (``hub`` builds on ``pretrained``, which once imported ``hub`` back). The top-level
    ``timesformer/__init__`` is left out: it is the public face that imports the rest, and modules read
    ``__version__`` from it."""
    graph = {name: deps - {"timesformer"} for name, deps in module_graph().items() if name != "timesformer"}
    assert graph["timesformer.hub"] >= {"timesformer.pretrained"}  # the graph sees the imports it should
    assert find_cycle(graph) is None, "import cycle: " + " -> ".join(find_cycle(graph))


def test_files_need_neither_the_weight_loader_nor_the_hub():
    """A writer of plots or shards imports ``timesformer.files``: nothing of the package, nor ``huggingface_hub``."""
    mods = set(imported_modules(PKG / "files.py", "timesformer"))
    assert not {m for m in mods if m.startswith(("timesformer", "huggingface_hub"))}, mods


def test_errors_import_nothing_of_the_package():
    """Every layer but the model raises ``UserError``: its module must sit below them all."""
    assert not [m for m in imported_modules(PKG / "errors.py", "timesformer") if m.startswith("timesformer")]


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


def test_torch_hub_loads_every_preset_from_a_local_clone(tmp_path):
    """``torch.hub.load(repo_dir, name, source="local")`` builds the preset (config overrides apply) and loads a
    checkpoint folder with ``checkpoint=``: the same logits as the model saved there."""
    from pathlib import Path

    import torch

    import timesformer as tf

    root = str(Path(__file__).resolve().parent.parent)
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", Path(root) / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert entries == set(tf.list_models()) - {"lucidrains"}  # the presets (the seed's has its own loader)
    model = torch.hub.load(root, "timesformer_tiny", source="local", num_classes=5).eval()
    assert model.config == tf.get_config("timesformer_tiny", num_classes=5)
    tf.save_pretrained(model, tmp_path / "ckpt")
    loaded = torch.hub.load(root, "timesformer_tiny", source="local", checkpoint=str(tmp_path / "ckpt")).eval()
    video = torch.randn(1, 8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video))
