"""The import contract: layers point one way, project imports sit at module top, one package talks to
``torch.distributed``.

Parsed with :mod:`ast` (nothing is imported), so it runs in a second. ``make lint`` and ``make test``
both run it; a violation fails with ``file:line: imports X: rule``. See docs/architecture.md.

Floors, lowest first. A module may import its own package and packages on lower floors; two different
packages on one floor may not import each other (``parallel`` and ``planning``, ``training`` and
``scoring`` are independent). Entry points, ``demo`` and ``integrations`` sit on top and may import
anything of ``megatron_polar``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FLOORS: dict[str, int] = {
    "utils": 0,
    "config": 1,
    "parallel": 2,
    "planning": 2,
    "data": 3,
    "model": 4,
    "checkpoint": 5,
    "training": 6,
    "scoring": 6,
    "demo": 7,
    "integrations": 7,
}
ENTRY_FLOOR = 7  # megatron_polar/<name>.py: train, convert, score, serve, evaluate, plan
# planning is a pure calculator: it reads configs, never the parallel set-up it plans.
PLANNING_MAY_IMPORT = {"planning", "config", "utils"}
# data_tools builds datasets offline, on machines without a process group.
DATA_TOOLS_MAY_IMPORT = {"config", "data", "utils"}
# ... and without torch or megatron-core: importing them costs ~11 s of CPU per build, merge and SLURM
# array task. megatron_polar/data/index_format.py reads and writes megatron-core's indexed format itself.
# (inspect and add-prefix-lengths read a built dataset through megatron_polar.data.pair_dataset, which
# opens it with megatron-core's own IndexedDataset, lazily: tests/data_tools/test_no_torch.py.)
DATA_TOOLS_NEVER_IMPORT = ("torch", "megatron")
# The one place that talks to torch.distributed and megatron-core's parallel_state.
DISTRIBUTED_MODULES = ("torch.distributed", "megatron.core.parallel_state")
DISTRIBUTED_HOME = "megatron_polar/parallel/"

# Allowed exceptions: (file, imported module, rule) -> reason. Keep this list short and say why.
EXCEPTIONS: dict[tuple[str, str, str], str] = {
    # megatron-core warns at import time that TE and Apex are missing; train.py installs the filter for
    # CPU hosts first, and keeps --help and --cfg free of the megatron-core import.
    ("megatron_polar/train.py", "megatron_polar.parallel.topology", "top"): "warning filter first",
    ("megatron_polar/train.py", "megatron_polar.training.trainer", "top"): "warning filter first",
}


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository root
    line: int
    module: str  # the absolute module imported (``from a.b import c`` -> ``a.b.c`` when c is a module)
    in_function: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[Import]:
    rel = path.relative_to(ROOT).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(rel, child.lineno, a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from megatron.core import parallel_state``: the names may be modules themselves.
                found.extend(Import(rel, child.lineno, f"{base}.{a.name}", in_function) for a in child.names)
            visit(
                child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            )

    visit(tree, False)
    return found


def _source_files() -> list[Path]:
    files = sorted((ROOT / "megatron_polar").rglob("*.py")) + sorted((ROOT / "data_tools").rglob("*.py"))
    # HF remote code ships inside exported checkpoints and must import only transformers.
    return [f for f in files if "remote_code" not in f.parts]


def _floor_of(module: str) -> tuple[str, int] | None:
    """(package, floor) of a megatron_polar module, or None outside megatron_polar."""
    parts = module.split(".")
    if parts[0] != "megatron_polar":
        return None
    if len(parts) == 1 or parts[1] not in FLOORS:
        return ("<entry point>", ENTRY_FLOOR)
    return (parts[1], FLOORS[parts[1]])


def violations(files: list[Path] | None = None) -> list[str]:
    """Every broken rule, as ``file:line: imports module: rule``."""
    out: list[str] = []
    for path in files if files is not None else _source_files():
        own = _module_name(path)
        for imp in _imports(path):
            for rule in _broken_rules(own, imp):
                if _excepted(imp, rule):
                    continue
                out.append(f"{imp.file}:{imp.line}: imports {imp.module}: {RULES[rule]}")
    return out


def _excepted(imp: Import, rule: str) -> bool:
    return any(
        file == imp.file and r == rule and (imp.module == module or imp.module.startswith(module + "."))
        for file, module, r in EXCEPTIONS
    )


RULES = {
    "layer": "a module imports its own package or lower floors only "
    "(utils < config < parallel, planning < data < model < checkpoint < training, scoring < entry points, demo)",
    "planning": "planning imports only planning, config and utils",
    "data_tools": "data_tools imports only data_tools and megatron_polar's config, data and utils",
    "data_tools_heavy": "data_tools imports neither torch nor megatron-core (~11 s per process); "
    "megatron_polar.data.index_format reads and writes the indexed-dataset format",
    "top": "project imports belong at module top; an import inside a function hides a layering problem",
    "distributed": "only megatron_polar/parallel/ talks to torch.distributed and parallel_state; "
    "ask megatron_polar.parallel instead",
}


def _is_project(module: str) -> bool:
    return module.split(".")[0] in ("megatron_polar", "data_tools")


def _broken_rules(own: str, imp: Import) -> list[str]:
    broken = []
    target = imp.module
    if imp.in_function and _is_project(target):
        broken.append("top")
    if any(target == d or target.startswith(d + ".") for d in DISTRIBUTED_MODULES):
        if not imp.file.startswith(DISTRIBUTED_HOME):
            broken.append("distributed")
    if own.split(".")[0] == "data_tools":
        if target.split(".")[0] in DATA_TOOLS_NEVER_IMPORT:
            broken.append("data_tools_heavy")
        tgt = _floor_of(target)
        if tgt is not None and tgt[0] not in DATA_TOOLS_MAY_IMPORT:
            broken.append("data_tools")
        return broken
    src, tgt = _floor_of(own), _floor_of(target)
    if src is None or tgt is None or target.split(".")[0] == "data_tools":
        if target.split(".")[0] == "data_tools":
            broken.append("layer")  # the library never imports the offline tool
        return broken
    if src[0] == "planning" and tgt[0] not in PLANNING_MAY_IMPORT:
        broken.append("planning")
    elif src[1] != ENTRY_FLOOR and src[0] != tgt[0] and tgt[1] >= src[1]:
        broken.append("layer")
    return broken


def test_the_import_contract_holds():
    found = violations()
    assert not found, "import contract broken:\n" + "\n".join(found)


def test_every_package_has_a_floor():
    """A new package must be placed on a floor here; otherwise it would pass as an entry point."""
    packages = {p.parent.name for p in (ROOT / "megatron_polar").glob("*/__init__.py")}
    assert packages <= set(FLOORS), f"add to FLOORS in {__file__}: {sorted(packages - set(FLOORS))}"


def test_the_check_catches_planted_violations(tmp_path):
    """A planted upward import, function-body import and distributed import each fail, named by file,
    line and rule; a legal import passes."""
    pkg = tmp_path / "megatron_polar" / "data"
    pkg.mkdir(parents=True)
    bad = pkg / "planted.py"
    bad.write_text(
        "from megatron_polar.config.schema import PolarConfig\n"  # legal: downward
        "from megatron_polar.model.builder import build_model_chunks\n"  # upward
        "import torch.distributed as dist\n"  # outside parallel/
        "def f():\n"
        "    from megatron_polar.utils import logging\n"  # function body
    )
    tools = tmp_path / "data_tools"
    tools.mkdir()
    (tools / "planted.py").write_text(
        "from megatron_polar.training import trainer\n"
        "def f():\n"
        "    from megatron.core.datasets.indexed_dataset import IndexedDataset\n"  # even lazily
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = violations([bad, tools / "planted.py"])
    finally:
        ROOT = saved
    assert found == [
        f"megatron_polar/data/planted.py:2: imports megatron_polar.model.builder.build_model_chunks: {RULES['layer']}",
        f"megatron_polar/data/planted.py:3: imports torch.distributed: {RULES['distributed']}",
        f"megatron_polar/data/planted.py:5: imports megatron_polar.utils.logging: {RULES['top']}",
        f"data_tools/planted.py:1: imports megatron_polar.training.trainer: {RULES['data_tools']}",
        "data_tools/planted.py:3: imports megatron.core.datasets.indexed_dataset.IndexedDataset: "
        f"{RULES['data_tools_heavy']}",
    ]


if __name__ == "__main__":
    print("\n".join(violations()) or "import contract holds")
