"""docker-compose.yml runs the same CLIs as by hand, and its services agree with each other.

No Docker daemon is needed: each service's command is parsed by the real CLI parser, its
task file loaded, and the `keys` service's command really run (into a temporary directory
standing in for the `keys` volume), so the learner and the actor must load the keys it
makes from the paths the compose file gives them."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from hilrl.cli import build_parser, main
from hilrl.config import load_task

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _command(name: str) -> tuple[list[str], str | None]:
    """(the hilrl argv without "hilrl", the file whose existence skips it or None)."""
    command = SERVICES[name]["command"]
    guard = None
    if command[:2] == ["sh", "-c"]:  # "test -f X || hilrl ..."
        test, command = command[2].split("||", 1)
        assert shlex.split(test)[:2] == ["test", "-f"], test
        guard = shlex.split(test)[2]
        command = shlex.split(command)
    assert command[0] == "hilrl", command
    return command[1:], guard


def _parsed(name: str):
    argv, _ = _command(name)
    return build_parser().parse_args(argv)


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _mounts(name: str) -> dict[str, str]:
    """Container path -> volume name."""
    return {m.split(":")[1]: m.split(":")[0] for m in SERVICES[name]["volumes"]}


def _in_volume(name: str, path: str) -> str:
    mounts = _mounts(name)
    inside = [volume for where, volume in mounts.items() if path.startswith(where + "/")
              or path == where]
    assert inside, f"{name}: {path} is in none of its volumes {mounts}: it would not persist"
    return inside[0]


def test_services_run_hilrl_commands_that_parse_with_existing_task_files():
    assert set(SERVICES) == {"keys", "demos", "learner", "actor"}
    assert [_command(s)[0][0] for s in SERVICES] == ["keys", "record-demos", "learner", "actor"]
    for name in ("demos", "learner", "actor"):
        args = _parsed(name)
        # The image's WORKDIR holds a copy of tasks/ (Dockerfile): the file must be there.
        assert (ROOT / args.task).is_file(), args.task
        assert "COPY tasks tasks" in (ROOT / "Dockerfile").read_text()
        load_task(ROOT / args.task, args.overrides)
    assert len({_parsed(n).task for n in ("demos", "learner", "actor")}) == 1


def test_learner_and_actor_agree_on_endpoints_run_dir_and_demos():
    from actor.node import _with_endpoints

    learner, actor, demos = _parsed("learner"), _parsed("actor"), _parsed("demos")
    ltask = load_task(ROOT / learner.task, learner.overrides)
    atask = _with_endpoints(load_task(ROOT / actor.task, actor.overrides), actor.learner)
    # Both learner sockets listen beyond loopback (other containers, robot PCs) ...
    assert ltask.learner.bind.startswith("tcp://0.0.0.0:")
    assert ltask.learner.weights_bind.startswith("tcp://0.0.0.0:")
    # ... the actor reaches both at the learner service's name ...
    assert atask.actor.learner == f"tcp://learner:{_port(ltask.learner.bind)}"
    assert atask.actor.weights == f"tcp://learner:{_port(ltask.learner.weights_bind)}"
    # ... and both are published to the host for actors on robot PCs.
    published = {tuple(map(int, p.split(":"))) for p in SERVICES["learner"]["ports"]}
    assert published == {(_port(ltask.learner.bind),) * 2,
                         (_port(ltask.learner.weights_bind),) * 2}
    # One run: the same directory, resumed by both after `docker compose stop` / `up`.
    assert learner.run_dir == actor.run_dir and learner.resume and actor.resume
    _in_volume("learner", learner.run_dir)
    # The learner trains on the demos the demos service records, which it skips once there.
    _, guard = _command("demos")
    assert learner.demos == [demos.out] and guard == f"{demos.out}/meta.json"
    assert _in_volume("demos", demos.out) == _in_volume("learner", learner.demos[0])
    assert set(SERVICES["learner"]["depends_on"]) == {"keys", "demos"}
    assert set(SERVICES["actor"]["depends_on"]) == {"keys", "learner"}
    assert SERVICES["learner"]["depends_on"]["demos"]["condition"] == \
        "service_completed_successfully"


def test_the_keys_service_makes_the_keys_the_learner_and_actor_load(tmp_path, monkeypatch):
    pytest.importorskip("zmq.auth")
    from hilrl.transport.security import check_bind_address, load_client_keys, \
        load_server_keys  # noqa: I001

    argv, guard = _command("keys")
    volume = _mounts("keys")
    root = next(where for where, name in volume.items() if name == "keys")
    local = tmp_path / "keys-volume"

    def here(path: str) -> Path:  # a path in the keys volume -> the temporary directory
        assert path == root or path.startswith(root + "/"), path
        return local / path[len(root):].lstrip("/")

    args = build_parser().parse_args(argv)
    out = here(args.out)
    assert main([a if a != args.out else str(out) for a in argv]) == 0
    assert here(guard).is_file()  # what makes the service skip on the next `up`

    learner, actor = _parsed("learner"), _parsed("actor")
    ltask = load_task(ROOT / learner.task, learner.overrides)
    atask = load_task(ROOT / actor.task, actor.overrides)
    assert _mounts("learner")[root] == _mounts("actor")[root] == "keys"
    server = load_server_keys(here(ltask.learner.keys))
    client = load_client_keys(here(atask.actor.keys))
    assert client.server_public == server.public
    assert client.public in server.authorized_clients
    # The actor's id is the name the keys were made for.
    assert atask.actor.id in argv and here(atask.actor.keys).name == atask.actor.id
    check_bind_address(ltask.learner.bind, server, insecure=False)  # keys: allowed
    with pytest.raises(ValueError):
        check_bind_address(ltask.learner.bind, None, insecure=False)


def test_every_task_file_loads():
    paths = sorted((ROOT / "tasks").glob("*.yaml"))
    assert len(paths) >= 4
    for path in paths:
        assert load_task(path).name
