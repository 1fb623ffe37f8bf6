"""The layering the code promises, checked: no import circles, one module for files, models only through the
registry, no path outside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import repo_root

PACKAGES = ("transfer", "datamodules")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (repo_root() / package).rglob("*.py"):
            rel = path.relative_to(repo_root()).with_suffix("")
            out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of the project ``name`` imports, at any depth of the file (lazy imports count)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycles(graph) == []
    assert not [m for m in graph if m.startswith("datamodules") and any(d.startswith("transfer") for d in graph[m])]


def test_methods_share_only_through_the_lower_layers():
    modules = _modules()
    shared = ("transfer.methods.base", "transfer.methods.source_only")
    for name, path in modules.items():
        if name.startswith("transfer.methods.") and name not in shared and not name.startswith(shared):
            own = ".".join(name.split(".")[:3])
            others = [d for d in _imports(name, path, modules) if d.startswith("transfer.methods.")
                      and not d.startswith((own, *shared)) and d != "transfer.methods"]
            assert others == [], f"{name} imports another method: {others}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_one_module_renames_syncs_and_locks_files():
    pattern = re.compile(r"os\.replace|os\.rename|fsync|fcntl\.|tempfile\.mkstemp")
    owner = repo_root() / "datamodules" / "files.py"
    offenders = [str(p.relative_to(repo_root())) for package in PACKAGES for p in (repo_root() / package).rglob("*.py")
                 if p != owner and pattern.search(re.sub(r'""".*?"""|#.*', "", p.read_text(), flags=re.S))]
    assert offenders == [], "use datamodules.files (atomic_path, publish, file_lock, append_locked)"


def test_methods_build_models_through_the_registry():
    factories = re.compile(r"\bcreate_(detector|translator|segmentation_net|wav2vec2|classifier)\(")
    users = [*(repo_root() / "transfer" / "methods").rglob("*.py"), repo_root() / "transfer" / "detect.py",
             *(repo_root() / "transfer" / "predict").rglob("*.py")]
    offenders = [str(p.relative_to(repo_root())) for p in users if factories.search(p.read_text())]
    assert offenders == [], "build models with transfer.models.create_model('family/name', ...)"


def test_the_package_names_no_path_outside_the_repository():
    outside = re.compile(r"\.\./shared|shared/specs|ARCHITECTURE\.md")
    for folder in ("transfer", "datamodules", "experiments", "weights", "benchmarks", "docs"):
        for f in (repo_root() / folder).rglob("*"):
            if f.suffix in (".py", ".yaml", ".md", ".sh", ".json") and outside.search(f.read_text(errors="ignore")):
                raise AssertionError(f"{f.relative_to(repo_root())} refers to a path outside the repository")
    assert not outside.search((repo_root() / "README.md").read_text())


def test_a_module_that_breaks_the_method_contract_is_named():
    import lightning as L
    import pytest

    from datamodules.contract import check_data_module
    from transfer.methods.base import Method, MethodModule, check_method

    class Plain(L.LightningModule):
        pass

    with pytest.raises(TypeError, match="Plain is not a transfer method: it lacks pooled_val_target, has_stages, "
                                        "prepare, attach_data, pool_folds .subclass transfer.methods.base.MethodModule"):
        check_method(Plain())
    check_method(MethodModule())
    assert isinstance(MethodModule(), Method)
    with pytest.raises(TypeError, match="LightningDataModule is not a transfer data module: it lacks train_seed, "
                                        "data_summary"):
        check_data_module(L.LightningDataModule())


def test_single_run_does_not_probe_methods():
    source = (repo_root() / "transfer" / "single_run.py").read_text()
    assert not re.search(r"\bhasattr\(|getattr\((model|datamodule)", source)
