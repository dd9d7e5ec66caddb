"""The package's layout rules (DESIGN.md, srl/*/__init__.py): no import cycle among srl's modules, no
import from a lower folder into a higher one, no module over 300 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SRL = ROOT / "srl"
# A folder may import its own modules and those of the folders listed before it; the entry points
# (srl/*.py) and pipeline may import everything.
LAYERS = ["core", "data", "models", "generation", "judging", "training", "evaluation", "config", "pipeline"]
ENTRY = {"run", "evaluate", "compare", "prepare_data"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRL.rglob("*.py"))}


def imports(path: Path, top_level_only: bool) -> set[str]:
    """srl modules ``path`` imports (``from srl.x import y`` counts srl.x.y when that is a module)."""
    known = modules()
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "srl" and node.level == 0:
            for a in node.names:
                found.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "srl"}
    return {m for m in found if m in known and m != "srl"}


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "entry"


def test_no_import_cycle_among_srl_modules():
    graph = {m: imports(p, top_level_only=True) for m, p in modules().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n] if n in stack else [m, n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_no_import_from_a_lower_folder_into_a_higher_one():
    wrong = []
    for m, p in modules().items():
        here = folder(m)
        if here == "entry" or here == "pipeline":
            continue
        allowed = set(LAYERS[: LAYERS.index(here) + 1])
        for n in imports(p, top_level_only=False):  # function-level imports count too
            if folder(n) not in allowed:
                wrong.append(f"{m} imports {n}")
    assert wrong == []


def test_every_module_is_in_a_folder_or_an_entry_point_and_under_300_lines():
    loose = [m for m in modules() if folder(m) == "entry" and m.split(".")[-1] not in ENTRY | {"srl"}]
    assert loose == []
    long = {m: len(p.read_text().splitlines()) for m, p in modules().items() if len(p.read_text().splitlines()) > 300}
    assert long == {}


def test_the_layer_check_finds_a_wrong_import(tmp_path, monkeypatch):
    """The checks can fail: a data module importing pipeline is reported."""
    bad = SRL / "data" / "_layout_probe.py"
    bad.write_text("from srl.pipeline import loop\n")
    try:
        wrong = [f"{m} imports {n}" for m, p in modules().items() if m.endswith("_layout_probe") for n in imports(p, False)]
        assert wrong == ["srl.data._layout_probe imports srl.pipeline.loop"]
        assert folder("srl.pipeline.loop") not in LAYERS[: LAYERS.index("data") + 1]
    finally:
        bad.unlink()
