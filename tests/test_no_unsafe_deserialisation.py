"""No code path may turn bytes from outside the process into Python objects by executing them:
no pickle (or its relatives), no ``np.load`` that allows pickles, no unsafe YAML, no
eval/exec, no pyzmq ``*_pyobj``, no multiprocessing queues (they pickle). The source is
parsed, so a comment or a string mentioning pickle is fine and a real use is found."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hilrl", "actor", "learner", "robot_drivers", "bench")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve",
                  "joblib", "multiprocessing"}
UNSAFE_CALLS = {"eval", "exec", "recv_pyobj", "send_pyobj", "unsafe_load", "full_load",
                "load_pickle", "torch.load"}


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def unsafe_uses(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in UNSAFE_MODULES:
                found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            last = name.rsplit(".", 1)[-1]
            keywords = {k.arg: k.value for k in node.keywords}
            if name in UNSAFE_CALLS or last in UNSAFE_CALLS:
                found.append((node.lineno, f"{name}()"))
            elif last == "load" and name.split(".")[0] in ("np", "numpy", "jnp"):
                flag = keywords.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    found.append((node.lineno, f"{name}() without allow_pickle=False"))
            elif name in ("yaml.load", "yaml.load_all"):
                found.append((node.lineno, f"{name}() (use yaml.safe_load)"))
    return found


def test_the_scanner_finds_what_it_looks_for():
    bad = ("import pickle\nfrom cloudpickle import dumps\nimport numpy as np\n"
           "np.load('x.npy')\nnp.load('x', allow_pickle=True)\n"
           "np.load('x', allow_pickle=False)\nyaml.load(s)\nsock.recv_pyobj()\neval('1')\n"
           "# pickle.loads(data) in a comment\ns = 'pickle'\n")
    assert [line for line, _ in unsafe_uses(ast.parse(bad))] == [1, 2, 4, 5, 7, 8, 9]


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_deserialisation(path: Path):
    uses = unsafe_uses(ast.parse(path.read_text(), filename=str(path)))
    assert not uses, f"{path.relative_to(ROOT)}: " + "; ".join(
        f"line {line}: {what}" for line, what in uses)
