"""The import rules of DESIGN.md's layout, read from every module's source.

Dependencies point one way: face (hilrl.cli) -> nodes (actor, learner) -> core (hilrl);
actor -> robot_drivers -> the core's small types. Imports inside functions count too: a lazy
import still ties the modules together when that code runs.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hilrl", "actor", "learner", "robot_drivers")
FACE = "hilrl.cli"
# What a driver may use of the core: the interface types, the config types and loader, and
# the pose math. Anything bigger would make a driver depend on the learning stack.
DRIVER_ALLOWED = ("hilrl.interfaces", "hilrl.geometry", "hilrl.config")
PROCESS_MODULES = ("subprocess", "multiprocessing")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted (absolute)
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every module ``module``'s source imports, relative imports resolved. For ``from X
    import name`` both X and X.name are listed (name may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[:len(parent) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            found.append(Import(module, base, node.lineno))
            found += [Import(module, f"{base}.{alias.name}", node.lineno) for alias in node.names
                      if alias.name != "*"]
    return found


def project_imports() -> list[Import]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += imports_of(path.read_text(encoding="utf-8"), _module_name(path),
                                path.name == "__init__.py")
    return found


def _within(name: str, prefixes: str | tuple[str, ...]) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(imports: list[Import]) -> list[str]:
    """The imports that break a layering rule, each with the rule it breaks."""
    out = []
    for imp in imports:
        src, dst = imp.module, imp.target
        where = f"{src}:{imp.line} imports {dst}"
        core = _within(src, "hilrl") and not _within(src, FACE)
        if core and _within(dst, ("actor", "learner", "robot_drivers", "bench", "tests")):
            out.append(f"{where}: the core imports no node, driver or bench module")
        if core and _within(dst, FACE):
            out.append(f"{where}: the core does not import the command's face")
        if _within(src, "learner") and _within(dst, ("robot_drivers", "actor")):
            out.append(f"{where}: the learner imports no driver (nor the actor, which does)")
        if _within(src, ("actor", "learner")) and _within(dst, (FACE, "bench", "tests")):
            out.append(f"{where}: the nodes don't import the command's face")
        if _within(src, "robot_drivers") and _within(dst, ("actor", "learner", "bench", "tests")):
            out.append(f"{where}: drivers import only the core's small types")
        if (_within(src, "robot_drivers") and _within(dst, "hilrl") and dst != "hilrl"
                and not _within(dst, DRIVER_ALLOWED)):
            out.append(f"{where}: drivers import only the core's small types "
                       f"({', '.join(DRIVER_ALLOWED)})")
        if (core or _within(src, ("actor", "learner"))) and _within(dst, PROCESS_MODULES):
            out.append(f"{where}: starting processes (train-sim) is the face's job")
    return out


def closure(imports: list[Import], roots: list[str]) -> set[str]:
    """The project modules reachable from ``roots`` by imports (lazy ones included)."""
    edges: dict[str, set[str]] = {}
    for imp in imports:
        edges.setdefault(imp.module, set()).add(imp.target)
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [t for t in edges.get(name, ()) if _within(t, PACKAGES)]
    return seen


def test_every_module_follows_the_layering_rules() -> None:
    imports = project_imports()
    assert len({i.module for i in imports}) > 50  # the walk really found the project
    assert violations(imports) == []


def test_the_learner_reaches_no_driver_through_any_chain_of_imports() -> None:
    imports = project_imports()
    learner = sorted({i.module for i in imports if _within(i.module, "learner")})
    reached = closure(imports, learner)
    assert "hilrl.learning.sac" in reached  # the walk follows the learner into the core
    assert sorted(m for m in reached if _within(m, ("robot_drivers", "actor"))) == []


@pytest.mark.parametrize(("module", "source", "rule"), [
    ("hilrl.learning.replay", "from actor.env_factory import make_env", "the core imports no"),
    ("hilrl.envs.spec", "def f():\n    import robot_drivers.sim.world", "the core imports no"),
    ("hilrl.storage.dataset", "import bench.common", "the core imports no"),
    ("hilrl.reporting.report", "from hilrl.cli import main", "the core does not import"),
    ("learner.node", "from robot_drivers.franka import FrankaDriver", "the learner imports no"),
    ("learner.ingest", "from ..actor import env_factory", "the learner imports no"),
    ("actor.node", "from hilrl.cli import main", "the nodes don't import"),
    ("learner.node", "from hilrl import cli", "the nodes don't import"),
    ("robot_drivers.franka", "from hilrl.learning import sac", "drivers import only"),
    ("robot_drivers.sim.world", "from actor import env_factory", "drivers import only"),
    ("hilrl.envs.wrappers", "import subprocess", "starting processes"),
    ("actor.node", "from multiprocessing import Process", "starting processes"),
])
def test_each_rule_catches_its_violation(module: str, source: str, rule: str) -> None:
    found = violations(imports_of(source, module))
    assert found and all(rule in v for v in found), found


@pytest.mark.parametrize(("module", "source"), [
    ("hilrl.cli.train_sim", "import subprocess\nfrom actor.node import run_actor"),
    ("actor.env_factory", "from robot_drivers.registry import arms"),
    ("robot_drivers.franka", "from hilrl.interfaces import RobotDriver\nimport hilrl.config"),
    ("learner.node", "from hilrl.learning import sac\nfrom .ingest import Ingestor"),
])
def test_allowed_imports_pass(module: str, source: str) -> None:
    assert violations(imports_of(source, module)) == []


def test_relative_imports_resolve_against_the_package() -> None:
    assert {i.target for i in imports_of("from ..learning import sac", "hilrl.config.task")} \
        == {"hilrl.learning", "hilrl.learning.sac"}
    assert {i.target for i in imports_of("from .io import x", "hilrl.config", True)} \
        == {"hilrl.config.io", "hilrl.config.io.x"}
