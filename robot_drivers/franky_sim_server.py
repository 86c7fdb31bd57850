"""franky-sim (a Franka simulator speaking libfranka's network protocol) plus a reflex switch.

    python -m robot_drivers.franky_sim_server [--hostname 127.0.0.1]

Point a task at it with ``env.robot: franka``, ``env.franka.host: <host>``,
``env.franka.realtime: false``. Tests and bench/franky_tracking.py start it with
:func:`start_server`.

Prints ``READY <host>`` once the robot and gripper servers are bound. ``SIGUSR1`` injects a
Cartesian reflex, as the real controller reports one: the running Move is answered with
``kReflexAborted``, the arm holds, and the state says ``Reflex`` with ``cartesian_reflex`` in
``last_motion_errors``, and new motions are refused, until the client sends automatic error
recovery. franky-sim does not
simulate errors itself, so this is the only way to exercise the real client's error path
against it.
"""

from __future__ import annotations

import argparse
import queue
import signal
import subprocess
import sys
import threading
import time

from franky_sim import FrankaRobotServer, SimulationServer, run_server
from franky_sim.franka_robot_protocol import (
    AutomaticErrorRecoveryCommand,
    BaseCommand,
    MoveCommand,
    MoveStatus,
    RobotCommand,
    RobotMode,
)

CARTESIAN_REFLEX = 7  # index in libfranka's Errors

_reflex = {"requested": False, "active": False}
_plain_state = FrankaRobotServer.robot_state.fget
_plain_recovery = AutomaticErrorRecoveryCommand.handle
_plain_move = MoveCommand.handle


def _state(server: FrankaRobotServer):
    state = _plain_state(server)
    if not _reflex["active"]:
        return state
    errors = [False] * len(state.reflex_reason)
    errors[CARTESIAN_REFLEX] = True
    # On the wire, errors become the client's current_errors (has_errors) and reflex_reason
    # its last_motion_errors.
    return state.replace(robot_mode=RobotMode.kReflex, errors=tuple(errors),
                         reflex_reason=tuple(errors))


def _recovery(command: AutomaticErrorRecoveryCommand, server: FrankaRobotServer) -> None:
    _reflex["active"] = False
    _plain_recovery(command, server)


def _move(command: MoveCommand, server: FrankaRobotServer) -> None:
    if _reflex["active"]:  # the real controller refuses motions until recovery
        command.reply(MoveStatus.kReflexAborted)
    else:
        _plain_move(command, server)


def _inject(servers: list[FrankaRobotServer]) -> None:
    _reflex["requested"] = False
    _reflex["active"] = True
    for server in servers:
        motion = server.current_motion_id
        server.stop_motion(send_preemption_signal=False)
        if motion:
            BaseCommand.send_response(server._tcp_socket, RobotCommand.kMove, motion,
                                      MoveStatus.kReflexAborted)
        server.reset_current_motion_id()


def start_server(timeout: float = 60.0) -> tuple[str, subprocess.Popen]:
    """Start the server in a child process; return (host to connect to, process). Stop it
    with ``process.terminate()``; ``process.send_signal(signal.SIGUSR1)`` injects a reflex."""
    proc = subprocess.Popen([sys.executable, "-m", "robot_drivers.franky_sim_server"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:  # keeps reading after READY so a chatty server never blocks on a pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    seen = []
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith("READY "):
            return line.split()[1], proc
    proc.kill()
    raise RuntimeError("franky-sim did not start (pip install franky-sim):\n" + "".join(seen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hostname", default=None)
    args = parser.parse_args()
    FrankaRobotServer.robot_state = property(_state)
    AutomaticErrorRecoveryCommand.handle = _recovery
    MoveCommand.handle = _move
    signal.signal(signal.SIGUSR1, lambda *_: _reflex.update(requested=True))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    simulator, _ = run_server.load_simulator("mujoco")
    kwargs = {"hostname_candidates": [args.hostname]} if args.hostname else {}
    with simulator(enable_visualization=False) as sim:
        robot = sim.add_robot()
        with SimulationServer(sim, **kwargs) as server:
            print(f"READY {robot.hostname}", flush=True)
            while True:
                if _reflex["requested"]:
                    _inject(server.robot_servers)
                server.run_once()


if __name__ == "__main__":
    main()
