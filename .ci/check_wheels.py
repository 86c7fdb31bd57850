"""Checks that every dependency of hilrl, with every extra, installs from wheels on each Python
version given (default: 3.12 and 3.13, which pyproject claims but this machine does not have).

Usage: python .ci/check_wheels.py [3.12 3.13 ...]. Needs PyPI. Exits non-zero if any version
fails, after printing what pip said about the requirement it could not satisfy.

``pip install --dry-run --python-version`` picks wheels and checks Requires-Python for the
target, but evaluates environment markers against the running interpreter (pypa/pip#13296):
on 3.11 it would skip a dependency declared ``; python_version >= "3.12"``. So the markers are
evaluated here, for the target: on hilrl's own requirements before pip sees them, then on the
resolved packages' requirements, and whatever pip left out is added and resolved again.
The platform is the running machine's (Linux), as CI's targets are; ``sys_platform`` markers
therefore come out as on the target.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
MAX_ROUNDS = 5


def project_requirements() -> tuple[str, list[Requirement]]:
    """hilrl's name and its requirements: the core ones and every extra's, without the extras
    that only name hilrl itself (``hilrl[franka,...]``, whose contents are listed anyway)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    name = canonicalize_name(project["name"])
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    reqs = [Requirement(line) for line in lines]
    return name, [r for r in reqs if canonicalize_name(r.name) != name]


def target_environment(python: str) -> dict[str, str]:
    env = default_environment()
    full = python if python.count(".") >= 2 else f"{python}.0"
    env.update(python_version=".".join(full.split(".")[:2]), python_full_version=full,
               implementation_version=full)
    return env


def applies(req: Requirement, env: dict[str, str], extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in extras | {""})


def unmarked(req: Requirement) -> str:
    """The requirement without its marker, which pip would evaluate for the wrong Python."""
    stripped = Requirement(str(req))
    stripped.marker = None
    return str(stripped)


def pip_resolve(python: str, reqs: list[str]) -> tuple[dict | None, str]:
    """pip's installation report for ``reqs`` on ``python``, or None and pip's error lines."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
           "--only-binary=:all:", "--python-version", python, "--disable-pip-version-check",
           "--report", "-", *reqs]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        return None, "\n".join(errors or done.stderr.strip().splitlines()[-10:])
    return json.loads(done.stdout), ""


def missed_requirements(report: dict, roots: list[Requirement],
                        env: dict[str, str]) -> list[str]:
    """Requirements that apply on the target but that the resolved set does not satisfy:
    those pip skipped because their marker is false on the running interpreter."""
    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]
                for item in report["install"]}
    extras: dict[str, set[str]] = defaultdict(set)
    for req in roots:
        extras[canonicalize_name(req.name)] |= req.extras
    missing: dict[str, str] = {}
    changed = True
    while changed:  # until the extras asked of each package stop growing
        changed = False
        for name, meta in resolved.items():
            for line in meta.get("requires_dist", []):
                req = Requirement(line)
                if not applies(req, env, extras[name]):
                    continue
                dep = canonicalize_name(req.name)
                if not req.extras <= extras[dep]:
                    extras[dep] |= req.extras
                    changed = True
                have = resolved.get(dep)
                if have is None or not req.specifier.contains(have["version"], prereleases=True):
                    missing[unmarked(req)] = f"{req} (from {meta['name']})"
    return sorted(missing)


def check(python: str) -> bool:
    env = target_environment(python)
    self_name, project_reqs = project_requirements()
    roots = [r for r in project_reqs if applies(r, env, set())]
    reqs = [unmarked(r) for r in roots]
    for _ in range(MAX_ROUNDS):
        report, error = pip_resolve(python, reqs)
        if report is None:
            print(f"Python {python}: FAILED to resolve from wheels\n{error}")
            return False
        missed = missed_requirements(report, roots, env)
        if not missed:
            break
        reqs += [r for r in missed if r not in reqs]
    else:
        print(f"Python {python}: FAILED: still missing after {MAX_ROUNDS} rounds: {missed}")
        return False
    pins = sorted(f"{item['metadata']['name']}=={item['metadata']['version']}"
                  for item in report["install"]
                  if canonicalize_name(item["metadata"]["name"]) != self_name)
    print(f"Python {python}: {len(pins)} packages resolve to wheels "
          f"({len(roots)} requirements of hilrl and all its extras)")
    print("  " + " ".join(pins))
    return True


def main(argv: list[str]) -> int:
    versions = argv or ["3.12", "3.13"]
    results = [check(v) for v in versions]  # every version, even after a failure
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
