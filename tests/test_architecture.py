"""The package reads as its pipeline: static checks (``ast``) of its imports and sizes.

data → model → subspace/probes → decouple → erase → train → evaluate → analysis →
report → experiment → cli: a module imports only from its own stage or earlier ones,
no import circle exists, no module reaches into another's ``_private`` names, and no
module grows past 400 lines (docs/architecture.md).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

import vardecouple

PACKAGE = Path(vardecouple.__file__).parent
#: the pipeline, earliest stage first (io and progress are utilities every stage may use)
STAGES = (
    "io",
    "progress",
    "data",
    "model",
    "subspace",
    "probes",
    "decouple",
    "erase",
    "train",
    "evaluate",
    "analysis",
    "report",
    "experiment",
    "cli",
    "__main__",
)
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = ("vardecouple", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (annotations only: no import at run time)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside |= {id(n) for n in ast.walk(node)}
    return inside


def _imports(name: str) -> list[tuple[str, list[str], ast.stmt]]:
    """``(target module, imported names, node)`` of every import of the package in ``name``
    that runs (module level or inside a function; not under ``TYPE_CHECKING``)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, [], node) for a in node.names if a.name.startswith("vardecouple")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if not module.startswith("vardecouple"):
                continue
            names = [a.name for a in node.names]
            submodules = [n for n in names if f"{module}.{n}" in MODULES]
            found += [(f"{module}.{n}", [], node) for n in submodules]
            found.append((module, [n for n in names if n not in submodules], node))
    return found


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_belongs_to_a_stage() -> None:
    strays = sorted(m for m in MODULES if m != "vardecouple" and _stage(m) not in STAGES)
    assert not strays, f"modules outside the pipeline's stages {STAGES}: {strays}"


def test_imports_point_down_the_pipeline_only() -> None:
    """A module imports its own stage or an earlier one (``train`` never ``experiment``);
    the package root (``__version__``) is the one exception."""
    rank = {stage: i for i, stage in enumerate(STAGES)}
    upward = []
    for name in MODULES:
        if name == "vardecouple":
            continue
        for target, _, node in _imports(name):
            if target == "vardecouple":
                continue
            if rank[_stage(target)] > rank[_stage(name)]:
                upward.append(f"{name}:{node.lineno} imports {target}")
    assert not upward, "imports up the pipeline:\n" + "\n".join(upward)


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Cycles met by a depth-first walk of ``graph`` (each as a closed path)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_circle() -> None:
    """Every import that runs (function-level ones too) counts; a cycle fails the test."""
    graph = {m: sorted({t for t, _, _ in _imports(m) if t in MODULES and t != m}) for m in MODULES}
    cycles = _cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_the_circle_check_finds_a_planted_circle() -> None:
    """The checker itself: the two circles of the issue's old layout are found."""
    old = {
        "subspace": ["estimators"],
        "estimators": ["subspace"],
        "model": ["states"],
        "states": ["model"],
        "train": ["subspace"],
    }
    assert sorted(map(tuple, _cycles(old))) == [
        ("model", "states", "model"),
        ("subspace", "estimators", "subspace"),
    ]
    assert _cycles({"a": ["b"], "b": []}) == []


def test_subspace_is_a_leaf() -> None:
    assert _imports("vardecouple.subspace") == []


def test_no_module_imports_another_modules_private_names() -> None:
    leaks = [
        f"{name}:{node.lineno} imports {target}.{n}"
        for name in MODULES
        for target, names, node in _imports(name)
        for n in names
        if n.startswith("_") and n != "__version__"
    ]
    assert not leaks, "\n".join(leaks)


def test_imports_inside_functions_say_why() -> None:
    """Outside ``cli`` (whose commands import the library lazily, so that ``--help`` stays
    fast: its docstring says so), an import inside a function carries a comment on its
    line or the line above (an optional extra, kept lazy)."""
    silent = []
    for name, path in MODULES.items():
        if _stage(name) == "cli":
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and node.col_offset > 0:
                if id(node) in skip:
                    continue
                here, above = lines[node.lineno - 1], lines[node.lineno - 2]
                if "#" not in here and not above.strip().startswith("#"):
                    silent.append(f"{name}:{node.lineno}: {here.strip()}")
    assert not silent, "imports inside functions without a reason:\n" + "\n".join(silent)


def test_no_module_is_over_400_lines() -> None:
    sizes = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in MODULES.items()}
    big = {n: s for n, s in sizes.items() if s > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_the_method_reads_in_one_short_file() -> None:
    lines = (PACKAGE / "decouple.py").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 210, len(lines)  # "under ~200 lines": math, config, schedule


def test_help_loads_neither_torch_nor_transformers() -> None:
    """What keeps ``vardecouple --help`` fast: the command line imports no heavy library
    until a command runs."""
    code = (
        "import sys\nfrom vardecouple.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'accelerate', 'peft', 'matplotlib',"
        " 'sacrebleu', 'pydantic') if m in sys.modules]\nprint('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


def test_public_api_names_resolve() -> None:
    for name in vardecouple.__all__:
        assert getattr(vardecouple, name) is not None, name
    with pytest.raises(AttributeError):
        vardecouple.no_such_name  # noqa: B018


def test_every_estimator_class_is_registered_under_its_name() -> None:
    """The estimator names are declared once, by the classes (``register``)."""
    from vardecouple.probes import ESTIMATORS
    from vardecouple.probes.base import StatisticsEstimator, SubspaceEstimator

    def subclasses(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *subclasses(s))]

    named = {c.name for c in subclasses(SubspaceEstimator) if c is not StatisticsEstimator}
    assert set(ESTIMATORS) == named and len(ESTIMATORS) == len(named), (ESTIMATORS, named)


def test_every_arm_kind_has_its_function() -> None:
    from vardecouple.experiment.evaluation import ARM_KINDS
    from vardecouple.experiment.sections import ArmKind

    assert set(ARM_KINDS) == set(get_args(ArmKind))
