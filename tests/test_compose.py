"""docker-compose.yml runs the same CLIs as by hand: every hilrl command in it must parse,
and its task files must load (no Docker daemon is needed to check that much)."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from hilrl.cli import build_parser
from hilrl.config import load_task

ROOT = Path(__file__).resolve().parent.parent


def _hilrl_commands() -> list[list[str]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    commands = []
    for service in compose["services"].values():
        command = service["command"]
        if command[:2] == ["sh", "-c"]:  # "test -f X || hilrl ..."
            command = shlex.split(command[2].split("||", 1)[1])
        assert command[0] == "hilrl", command
        commands.append(command[1:])
    return commands


def test_compose_services_run_hilrl_commands_that_parse():
    commands = _hilrl_commands()
    assert {c[0] for c in commands} == {"keys", "record-demos", "learner", "actor"}
    for argv in commands:
        args = build_parser().parse_args(argv)
        if getattr(args, "task", None):
            task = load_task(ROOT / args.task, args.overrides)
            if argv[0] == "learner":
                assert task.learner.keys == "/keys"  # beyond loopback only with CURVE keys
                assert task.learner.bind.startswith("tcp://0.0.0.0:")
            if argv[0] == "actor":
                assert args.learner == "tcp://learner:5555" and task.actor.keys


def test_every_task_file_loads():
    for path in sorted((ROOT / "tasks").glob("*.yaml")):
        load_task(path)
