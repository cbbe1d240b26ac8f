"""The package's folders are its layers, and imports only go down (issue 25; design.md section 4).

Every module's imports are read from its source (those inside functions too, which run later but couple
all the same) and checked against one table of the directions allowed. A new module is placed by its
folder; a new folder must be given a row here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lrpcli"

#: the modules at the top of the package that every layer may use
GROUND = {"errors", "limits", "registry", "outputs"}

#: each layer and the layers it may import (itself and the ground always)
ALLOWED: dict[str, set[str]] = {
    "ground": set(),
    "data": set(),
    "render": {"data"},
    "engine": {"render"},  # render only for Explanation.heatmap, the picture `lrp explain` writes
    "sources": {"engine"},
    "evaluate": {"engine", "sources", "data", "render"},
    "report": {"render", "data"},
    "runs": {"engine", "sources", "data", "render", "report", "evaluate"},
    "api": {"engine", "sources", "evaluate", "runs"},  # runs for explain_texts: the text run lrp explain does
    "cli": {"engine", "sources", "data", "render", "report", "evaluate", "runs", "api"},
}

#: third-party packages only one layer may import
ONLY_IN = {"click": "cli", "rich": "cli"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("api", "__init__", "ray"):
        return "api"  # lrpcli/__init__.py (the lazy public API), api.py and ray.py (explain_dataset)
    if parts[1] == "architectures":
        return "sources"  # the alias of sources.architectures that specs name
    if parts[1] in GROUND or parts[1] == "__version__":
        return "ground"
    if parts[1] not in ALLOWED:
        raise AssertionError(f"{module}: lrpcli/{parts[1]} belongs to no layer; put it in a layer's folder or give it a row in ALLOWED")
    return parts[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
                if not node.module:  # from . import x, y: each name may be a module
                    found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
                    continue
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path):
    own = layer_of(module_name(path))
    allowed = ALLOWED[own] | {own, "ground"}
    wrong = []
    for line, target in imports(path):
        top = target.split(".")[0]
        if top == "lrpcli":
            other = layer_of(target)
            if other not in allowed:
                wrong.append(f"line {line}: {own} imports {target} ({other})")
        elif top in ONLY_IN and ONLY_IN[top] != own:
            wrong.append(f"line {line}: {own} imports {top}, which only {ONLY_IN[top]} may")
    assert not wrong, f"{path.relative_to(PACKAGE.parent)}:\n  " + "\n  ".join(wrong)


def test_the_table_can_fail():
    """The check itself sees an upward import (engine -> runs) and a stray rich."""
    engine_file = PACKAGE / "engine" / "explainer.py"
    assert layer_of("lrpcli.runs.images") not in ALLOWED[layer_of(module_name(engine_file))] | {"engine", "ground"}
    assert layer_of("lrpcli.sources.cache") not in ALLOWED["engine"]
    assert ONLY_IN["rich"] != layer_of("lrpcli.render.text")


def test_every_layer_says_what_it_may_import():
    for folder in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert "May import" in doc or folder.name == "cli", f"lrpcli/{folder.name}/__init__.py: say what the layer is and what it may import"
