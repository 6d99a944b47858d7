"""The package's folders depend one way, and no function grows past what a reader can hold.

The allowed imports are the README's "Code map"; this test reads every import of the package,
at module level and inside functions, and fails on one against that direction.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nnunet_isrg"

#: the package's layers, bottom first; a module may import its own layer and the layers below it
LAYERS: dict[str, int] = {
    # neutral base: schema, clicks, prompt geometry, files, lesion helpers, environment
    "attributes": 0, "clicks": 0, "prompts": 0, "prompt_sampling": 0, "files": 0, "lesions": 0, "environment": 0,
    "data": 1, "modeling": 1, "report": 1,
    "inference": 2,
    "evaluation": 3,
    "training": 4,
    "server": 5,
    "cli": 6, "__init__": 6,
}

#: the base modules may use each other; above the base, folders of one layer are independent
SHARED_LAYER = 0
#: edges downwards that are still refused: the server runs trained models, it never trains
FORBIDDEN = {("server", "training")}

MAX_FUNCTION_LINES = 120
MAX_SERVER_FUNCTION_LINES = 80


def _folder(module: str) -> str:
    """``nnunet_isrg.inference.session`` -> ``inference``; the package root -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_imports(root: Path = PACKAGE) -> list[tuple[str, str, int]]:
    """(importing module, imported nnunet_isrg module, line) for every import under ``root``, at
    module level and inside functions."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the importing package
                    base = package[: len(package) - node.level + 1]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                    if not node.module:  # from . import x  -> the submodules x
                        targets = [".".join(base + [a.name]) for a in node.names]
                else:
                    targets = [node.module or ""]
            else:
                continue
            found += [(module, t, node.lineno) for t in targets if t == "nnunet_isrg" or t.startswith("nnunet_isrg.")]
    return found


def edges_against_the_direction(imports: list[tuple[str, str, int]]) -> list[str]:
    wrong = []
    for module, target, line in imports:
        src, dst = _folder(module), _folder(target)
        if src == dst or dst == "__init__" and target != "nnunet_isrg":
            continue
        same_layer_apart = LAYERS[dst] == LAYERS[src] != SHARED_LAYER
        if LAYERS[dst] > LAYERS[src] or same_layer_apart or (src, dst) in FORBIDDEN:
            wrong.append(f"{module} (line {line}) imports {target}: {src} may not import {dst}")
    return wrong


def test_the_import_walker_finds_relative_and_in_function_imports(tmp_path):
    pkg = tmp_path / "nnunet_isrg"
    (pkg / "evaluation").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "evaluation" / "__init__.py").write_text("")
    (pkg / "evaluation" / "m.py").write_text("from ..report import structured\n"
                                              "def f():\n    from nnunet_isrg.training import losses\n")
    imports = package_imports(pkg)
    assert ("nnunet_isrg.evaluation.m", "nnunet_isrg.report", 1) in imports
    assert ("nnunet_isrg.evaluation.m", "nnunet_isrg.training", 3) in imports
    assert edges_against_the_direction(imports) == [
        "nnunet_isrg.evaluation.m (line 3) imports nnunet_isrg.training: evaluation may not import training"]
    assert len(package_imports()) > 50  # the real package was read too


def test_every_folder_is_placed_in_a_layer():
    folders = {_folder(m) for m, _, _ in package_imports()} | {_folder(t) for _, t, _ in package_imports()}
    assert folders <= set(LAYERS), f"folders without a layer in the code map: {sorted(folders - set(LAYERS))}"


def test_imports_flow_one_way():
    wrong = edges_against_the_direction(package_imports())
    assert not wrong, "imports against the code map's direction:\n" + "\n".join(wrong)


@pytest.mark.parametrize("src,dst", [("evaluation", "training"), ("inference", "training"), ("report", "server"),
                                     ("modeling", "inference"), ("data", "modeling"), ("report", "modeling"),
                                     ("server", "training")])
def test_the_direction_rule_refuses_the_edges_the_code_map_forbids(src, dst):
    imports = [(f"nnunet_isrg.{src}.a", f"nnunet_isrg.{dst}.b", 1)]
    assert len(edges_against_the_direction(imports)) == 1


def _long_functions(limit: int, under: Path) -> list[str]:
    out = []
    for path in sorted(under.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_is_longer_than_the_limit():
    long = _long_functions(MAX_FUNCTION_LINES, PACKAGE)
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_server_functions_are_short():
    long = _long_functions(MAX_SERVER_FUNCTION_LINES, PACKAGE / "server")
    assert not long, f"server functions over {MAX_SERVER_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_the_installed_package_does_not_write_the_readme():
    hits = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if "README.md" in p.read_text()]
    assert not hits, f"package modules that touch the README: {hits}"
