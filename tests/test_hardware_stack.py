"""One wrapper stack over every arm: the simulated one, a Franka through franky on franky-sim,
and a HIL-SERL robot server over HTTP. make_env builds each from a task file; the safety box,
relative frame, intervention and success button must behave the same on all three."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import numpy as np
import pytest

from actor.env_factory import make_env
from hilrl.config import load_task
from hilrl.interfaces import Button, Command, InputDevice

STEPS = 14


class Hand(InputDevice):
    """A person's hand as the env sees it: pushes +x with intervene for steps 2-4 and presses
    success on step 8; otherwise hands off."""

    def __init__(self) -> None:
        self.step = 0

    def read(self) -> Command:
        self.step += 1
        if 2 <= self.step <= 4:
            return Command(np.array([1.0, 0, 0, 0, 0, 0]), frozenset({Button.INTERVENE}))
        if self.step == 8:
            return Command(buttons=frozenset({Button.SUCCESS}))
        return Command()


@pytest.fixture(params=["sim", "franka", "hilserl_http"])
def robot(request) -> Iterator[list[str]]:
    """Task overrides that put one kind of arm under the stack."""
    common = ["env.reward=none", "env.hz=10", f"env.max_episode_steps={STEPS}",
              "env.reset_noise=0.0"]
    if request.param == "sim":
        yield ["env.robot=sim", *common]
    elif request.param == "franka":
        if not (importlib.util.find_spec("franky") and importlib.util.find_spec("franky_sim")):
            pytest.skip("needs franky-control and franky-sim (the dev extra)")
        from robot_drivers.franky_sim_server import start_server

        host, proc = start_server()
        try:
            yield ["env.robot=franka", f"env.franka.host={host}", "env.franka.realtime=false",
                   "env.franka.dynamics_factor=0.5", *common]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    else:
        from hilserl_server import FakeHilSerlServer

        with FakeHilSerlServer() as server:
            yield ["env.robot=hilserl_http", f"env.hilserl_http.url={server.url}", *common]


def test_same_stack_on_every_arm(robot):
    task = load_task(None, robot)
    hand = Hand()
    stack = make_env(task, hand, images=False)
    box_low, box_high = (np.array(v) for v in (task.env.workspace.low, task.env.workspace.high))
    try:
        obs, _ = stack.env.reset(seed=0)
        # Relative frame: the reset pose is the origin of the observed pose.
        assert np.linalg.norm(obs["state"][:3]) < 0.01
        intervened, success_pressed = [], []
        truncated = False
        for _ in range(STEPS):
            # The policy pushes at full speed along tool +y and -z: with the tool pointing down
            # that is base -y and up, towards the box's wall and ceiling.
            obs, reward, terminated, truncated, info = stack.env.step(
                np.array([0.0, 1.0, -1.0, 0.0], np.float32))
            intervened.append(info["intervened"])
            success_pressed.append(info["success_button"])
            if info["intervened"]:  # the hand's base-frame +x, in the policy's (tool) frame
                np.testing.assert_allclose(info["action"], [1.0, 0.0, 0.0, 0.0], atol=0.02)
            pos = stack.env.unwrapped.driver.state().tcp_pose[:3]
            assert np.all(pos >= box_low - 0.005) and np.all(pos <= box_high + 0.005), pos
            assert not terminated
        assert intervened == [i in (1, 2, 3) for i in range(STEPS)]
        assert success_pressed == [i == 7 for i in range(STEPS)]
        assert truncated  # the time limit truncates
        # The policy's own steps moved the arm that way, inside the box all along.
        pos = stack.env.unwrapped.driver.state().tcp_pose[:3]
        assert pos[2] > task.env.reset_pose[2] + 0.08 and pos[1] < -0.08, pos
    finally:
        stack.close()
