"""HilSerlHttpDriver against a fake HIL-SERL robot server on loopback."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hilserl_server import HOME_POSE, FakeHilSerlServer

from hilrl.config import EnvConfig
from hilrl.envs.manipulator import ManipulatorEnv
from hilrl.interfaces import Clock, RobotError
from robot_drivers.hilserl_http import HilSerlHttpDriver

TIMEOUT = 0.2
DOWN = [1.0, 0.0, 0.0, 0.0]  # quat xyzw: tool pointing down


def wait_for(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def raises_robot_error(driver: HilSerlHttpDriver) -> RobotError | None:
    try:
        driver.state()
    except RobotError as e:
        return e
    return None


@pytest.fixture
def server() -> Iterator[FakeHilSerlServer]:
    with FakeHilSerlServer() as s:
        yield s


@pytest.fixture
def driver(server: FakeHilSerlServer) -> Iterator[HilSerlHttpDriver]:
    d = HilSerlHttpDriver(server.url, timeout=TIMEOUT)
    d.connect()
    yield d
    d.close()


def test_connect_reads_state(server: FakeHilSerlServer, driver: HilSerlHttpDriver) -> None:
    s = driver.state()
    np.testing.assert_allclose(s.tcp_pose, HOME_POSE)
    assert s.tcp_vel.shape == (6,) and s.wrench.shape == (6,)
    assert s.joint_positions.shape == (7,)
    np.testing.assert_allclose(s.wrench, [0, 0, -1, 0, 0, 0])
    assert s.gripper_width == pytest.approx(0.08)  # gripper_pos 1.0 (open) * 0.08 m
    assert all(a.dtype == np.float64 for a in (s.tcp_pose, s.tcp_vel, s.wrench))


def test_tracks_a_sequence_of_targets(server: FakeHilSerlServer,
                                      driver: HilSerlHttpDriver) -> None:
    for xyz in [(0.55, 0.0, 0.2), (0.55, 0.05, 0.2), (0.5, 0.05, 0.15)]:
        target = np.array([*xyz, *DOWN])
        driver.move_to(target)
        wait_for(lambda t=target: np.allclose(server.current_pose(), t, atol=1e-6))
        wait_for(lambda t=target: np.allclose(driver.state().tcp_pose, t, atol=1e-6))


def test_superseded_targets_are_dropped(server: FakeHilSerlServer,
                                        driver: HilSerlHttpDriver) -> None:
    targets = [np.array([0.5 + 0.001 * i, 0.0, 0.2, *DOWN]) for i in range(200)]
    for t in targets:
        driver.move_to(t)
    wait_for(lambda: np.allclose(server.current_pose(), targets[-1], atol=1e-6))
    sent = server.bodies("/pose")
    assert len(sent) < len(targets)
    np.testing.assert_allclose(sent[-1]["arr"], targets[-1])


def test_gripper_close_and_open(server: FakeHilSerlServer, driver: HilSerlHttpDriver) -> None:
    for _ in range(5):
        driver.gripper(1.0)
    wait_for(lambda: driver.state().gripper_width < 1e-6)
    assert server.routes().count("/close_gripper") == 1  # sent only when the command changes
    driver.gripper(0.0)
    wait_for(lambda: driver.state().gripper_width > 0.08 - 1e-6)
    assert server.routes().count("/open_gripper") == 1


def test_home_runs_joint_reset(server: FakeHilSerlServer, driver: HilSerlHttpDriver) -> None:
    away = np.array([0.6, 0.1, 0.25, *DOWN])
    driver.move_to(away)
    wait_for(lambda: np.allclose(server.current_pose(), away, atol=1e-6))
    driver.home()
    np.testing.assert_allclose(driver.state().tcp_pose, HOME_POSE)
    time.sleep(0.1)  # no stale target may pull the arm away from home afterwards
    np.testing.assert_allclose(server.current_pose(), HOME_POSE)
    assert "/jointreset" in server.routes()


def test_params_posted_at_connect(server: FakeHilSerlServer) -> None:
    params = {"translational_stiffness": 2000, "rotational_damping": 7}
    d = HilSerlHttpDriver(server.url, timeout=TIMEOUT, params=params)
    try:
        d.connect()
        assert server.bodies("/update_param") == [params]
    finally:
        d.close()


def test_http_error_faults_and_the_arm_holds(server: FakeHilSerlServer,
                                             driver: HilSerlHttpDriver) -> None:
    held = np.array([0.55, 0.0, 0.2, *DOWN])
    driver.move_to(held)
    wait_for(lambda: np.allclose(server.current_pose(), held, atol=1e-6))
    server.fail("/pose", 500)
    driver.move_to(np.array([0.65, 0.0, 0.2, *DOWN]))
    wait_for(lambda: raises_robot_error(driver) is not None)
    message = str(raises_robot_error(driver))
    assert "/pose" in message and "500" in message
    assert server.url in message and "recover()" in message
    with pytest.raises(RobotError, match="/pose"):
        driver.move_to(held)
    with pytest.raises(RobotError, match="/pose"):
        driver.gripper(1.0)
    time.sleep(0.1)
    np.testing.assert_allclose(server.current_pose(), held)


def test_slow_server_faults_without_blocking_the_loop(server: FakeHilSerlServer,
                                                      driver: HilSerlHttpDriver) -> None:
    server.delay("/getstate", 2.5 * TIMEOUT)
    server.delay("/pose", 2.5 * TIMEOUT)
    worst = 0.0
    for i in range(10):
        start = time.perf_counter()
        driver.move_to(np.array([0.5, 0.001 * i, 0.2, *DOWN]))
        worst = max(worst, time.perf_counter() - start)
        time.sleep(0.01)
    assert worst < 0.01
    wait_for(lambda: raises_robot_error(driver) is not None)
    assert "timeout" in str(raises_robot_error(driver))

    server.clear_faults()
    driver.recover()
    assert "/clearerr" in server.routes()
    target = np.array([0.45, -0.05, 0.2, *DOWN])
    driver.move_to(target)
    wait_for(lambda: np.allclose(driver.state().tcp_pose, target, atol=1e-6))


def test_unreachable_server_fails_at_connect() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    d = HilSerlHttpDriver(url, timeout=TIMEOUT)
    with pytest.raises(RobotError, match="franka_server.py is running") as info:
        d.connect()
    assert url in str(info.value) and "refused" in str(info.value)
    d.close()


def _state_reply(**changes: object) -> bytes:
    reply = {"pose": list(HOME_POSE), "vel": [0.0] * 6, "force": [0.0] * 3,
             "torque": [0.0] * 3, "q": [0.0] * 7, "dq": [0.0] * 7, "gripper_pos": 1.0}
    reply.update(changes)
    return json.dumps(reply).encode()


@pytest.mark.parametrize("body, expected", [
    (b'{"pose": [0.5, 0.0', "not valid JSON"),
    (_state_reply(pose=[0.5, 0.0, 0.2]), r"'pose' has shape \(3,\)"),
    (_state_reply(vel=[float("nan")] * 6), "'vel' is not finite"),
    (_state_reply(gripper_pos="open"), "gripper_pos"),
    (b"[1, 2]", "not an object"),
])
def test_malformed_state_is_a_clear_error(server: FakeHilSerlServer, body: bytes,
                                          expected: str) -> None:
    server.malformed("/getstate", body)
    d = HilSerlHttpDriver(server.url, timeout=TIMEOUT)
    with pytest.raises(RobotError, match=expected):
        d.connect()
    d.close()


def test_malformed_state_while_running_faults(server: FakeHilSerlServer,
                                              driver: HilSerlHttpDriver) -> None:
    server.malformed("/getstate", _state_reply(q=[0.0] * 6))
    wait_for(lambda: raises_robot_error(driver) is not None)
    assert "'q' has shape (6,)" in str(raises_robot_error(driver))


class SleepClock(Clock):
    def __init__(self, hz: float) -> None:
        self.period = 1.0 / hz
        self._next = time.monotonic()

    def reset(self) -> None:
        self._next = time.monotonic()

    def tick(self) -> None:
        self._next += self.period
        time.sleep(max(0.0, self._next - time.monotonic()))


def test_env_clips_targets_to_the_workspace() -> None:
    config = EnvConfig(robot="hilserl_http", cameras=[], hz=20.0, max_translation=0.1,
                       state_keys=["tcp_pose", "tcp_vel", "gripper_width"])
    with FakeHilSerlServer(max_speed=2.0) as server:
        env = ManipulatorEnv(HilSerlHttpDriver(server.url, timeout=TIMEOUT), [],
                             SleepClock(config.hz), config)
        try:
            obs, _ = env.reset(seed=0)
            assert obs["state"].shape == (14,)
            for _ in range(8):
                obs, *_ = env.step(np.array([1.0, 1.0, 1.0, 1.0], dtype=np.float32))
        finally:
            env.close()
    low, high = np.array(config.workspace.low), np.array(config.workspace.high)
    sent = np.array([body["arr"] for body in server.bodies("/pose")])
    assert np.all(sent[:, :3] >= low - 1e-9) and np.all(sent[:, :3] <= high + 1e-9)
    np.testing.assert_allclose(sent[-1][:3], high)  # the box clipped the action on every axis
    np.testing.assert_allclose(obs["state"][:3], high, atol=1e-5)
    assert "/jointreset" in server.routes() and "/close_gripper" in server.routes()
