"""Labelled frames for the reward classifier (actor.labels, ``hilrl record-labels``) and the
sim's colour/lighting jitter, on the real MuJoCo sim at 32x32. The one stand-in is a small
InputDevice that presses buttons on a schedule, in place of a person's hand."""

from __future__ import annotations

import numpy as np
import pytest

from actor.labels import harvest_demo_labels, record_labels
from actor.teleop import record_demos
from hilrl.cli import main
from hilrl.config import load_task
from hilrl.envs.wrappers import EmergencyStop
from hilrl.interfaces import Button, Command, InputDevice
from hilrl.storage.dataset import DatasetError, read_dataset, read_dataset_info
from robot_drivers.sim.tasks.pick_cube import CUBE_HALF_SIZE
from robot_drivers.sim.world import SimSettings, SimWorld

SMALL = "env.image_size=[32,32]"
EXPERT = "device.expert.takeover=always"


def _look(world: SimWorld) -> dict[str, np.ndarray]:
    m = world.model
    return {"rgba": m.geom_rgba.copy(), "diffuse": m.light_diffuse.copy(),
            "pos": m.light_pos.copy(), "dir": m.light_dir.copy(),
            "head": m.vis.headlight.ambient.copy()}


def test_jitter_off_keeps_the_default_look_and_on_varies_it():
    default = _look(SimWorld(image_size=(32, 32)))
    plain = SimWorld(image_size=(32, 32))
    jittered = SimWorld(SimSettings(jitter=True), image_size=(32, 32))
    cube = jittered.model.geom("cube").id
    looks = []
    for seed in range(2):
        plain.reset_scene(np.random.default_rng(seed))
        jittered.reset_scene(np.random.default_rng(seed))
        for key, value in _look(plain).items():
            np.testing.assert_array_equal(value, default[key], err_msg=key)
        # Jitter draws after the cube position: the same seeds give the same scenes.
        np.testing.assert_array_equal(plain.object_position(), jittered.object_position())
        looks.append(_look(jittered))
    for look in looks:
        assert not np.allclose(look["rgba"][cube], default["rgba"][cube])
        assert np.all(np.abs(look["rgba"][cube, :3] - default["rgba"][cube, :3]) <= 0.25 + 1e-6)
        assert not np.allclose(look["diffuse"], default["diffuse"])
    assert not np.allclose(looks[0]["rgba"][cube], looks[1]["rgba"][cube])
    assert not np.allclose(looks[0]["diffuse"], looks[1]["diffuse"])
    assert not np.allclose(looks[0]["head"], looks[1]["head"])
    first = jittered.render("front")
    jittered.reset_scene(np.random.default_rng(2))
    assert np.abs(first.astype(int) - jittered.render("front")).mean() > 1.0


def test_record_labels_sim_labels_the_lifted_cube(tmp_path):
    # object_pos in the base frame puts the cube height of every frame into the state.
    task = load_task(None, [SMALL, EXPERT, "env.sim.jitter=true", "env.relative_frame=false",
                            "env.state_keys=[tcp_pose,object_pos]"])
    counts = record_labels(task, tmp_path / "labels", 3, steps_after_success=5,
                           clumsy_fraction=0.0, progress=False)
    episodes = read_dataset(tmp_path / "labels")
    assert len(episodes) == counts["episodes"] == 3
    assert counts["success"] > 0 and counts["failure"] > 0
    assert counts["frames"] == counts["success"] + counts["failure"] == sum(
        ep.length for ep in episodes)
    info = read_dataset_info(tmp_path / "labels")
    assert info["kind"] == "labels" and info["source"] == "sim"
    assert info["task"]["env"]["reward"] == "none"
    cube = SimSettings(**task.env.section("sim")).task_settings("pick_cube")
    lifted_at = CUBE_HALF_SIZE + cube.lift_height
    for ep in episodes:
        label = ep.extras["success"]
        assert label.dtype == bool and label.shape == (ep.length,)
        for cam in ("front", "wrist"):
            assert ep.images[cam].shape == (ep.length + 1, 32, 32, 3)
        np.testing.assert_array_equal(label, ep.state[1:, 9] > lifted_at)
        assert label.any(), "the scripted expert lifts the cube in every episode"
        first = int(np.flatnonzero(label)[0])
        assert not label[:first].any()
        # Ran on past the first success, and stopped 5 steps after it.
        assert ep.length == first + 6 < task.env.max_episode_steps
        assert label[-5:].all()
        assert ep.truncated[-1] and not ep.terminated.any()


class ScheduleDevice(InputDevice):
    """A hand that presses SUCCESS on the reads listed in ``success`` and ESTOP at read
    ``estop_at``; it never steers."""

    def __init__(self, success: set[int], estop_at: int | None = None) -> None:
        self.success, self.estop_at = success, estop_at
        self.reads = 0
        self.pressed: list[bool] = []

    def read(self) -> Command:
        n = self.reads
        self.reads += 1
        if n == self.estop_at:
            return Command(buttons=frozenset({Button.ESTOP}))
        self.pressed.append(n in self.success)
        return Command(buttons=frozenset({Button.SUCCESS}) if n in self.success else frozenset())


def test_record_labels_device_follows_the_success_button(tmp_path):
    task = load_task(None, [SMALL, "device.kind=none", "env.max_episode_steps=8"])
    device = ScheduleDevice({2, 3, 4, 12, 13})
    counts = record_labels(task, tmp_path / "labels", 2, source="device", progress=False,
                           device=device)
    episodes = read_dataset(tmp_path / "labels")
    assert [ep.length for ep in episodes] == [8, 8]
    # Frame t (seen after step t) gets the read of step t + 1, the one made seeing it; the
    # last frame, with no read after it, its own step's.
    for ep, pressed in zip(episodes, np.reshape(device.pressed, (2, 8)), strict=True):
        np.testing.assert_array_equal(ep.extras["success"], [*pressed[1:], pressed[-1]])
    assert counts == {"episodes": 2, "frames": 16, "success": 5, "failure": 11}


def test_record_labels_device_ends_once_success_was_held_long_enough(tmp_path):
    """A person holding SUCCESS to the time limit would add copies of one done scene: the
    episode ends once the button was held ``steps_after_success`` reads past the first,
    counted over tries (the press on read 5 follows a release)."""
    task = load_task(None, [SMALL, "device.kind=none", "env.max_episode_steps=12"])
    device = ScheduleDevice({2, 3, 5, 6, 7, 8})
    record_labels(task, tmp_path / "labels", 1, source="device", steps_after_success=3,
                  progress=False, device=device)
    (episode,) = read_dataset(tmp_path / "labels")
    assert episode.length == 7  # steps 0..6: the 4th press, on step 6's read, ended it
    assert episode.extras["success"].tolist() == [False, True, True, False, True, True, True]


class Steady(InputDevice):
    """Pushes +x at full speed every read; SUCCESS from read ``done_at`` on."""

    def __init__(self, done_at: int) -> None:
        self.done_at, self.reads = done_at, 0

    def read(self) -> Command:
        self.reads += 1
        done = self.reads > self.done_at
        return Command(np.array([1.0, 0, 0, 0, 0, 0]),
                       frozenset({Button.SUCCESS}) if done else frozenset())


def test_backoff_rests_on_the_way_and_backs_off_once_done():
    """Before success the person now and then rests (zero twist for ``rest`` reads), so
    the labels hold a still hand beside an unfinished task; once done it backs off its last
    motions in reverse instead."""
    from actor.labels import BackOff

    device = BackOff(Steady(done_at=300), np.random.default_rng(0), rest_chance=0.05,
                     rest=(5, 8), pause=(2, 2))
    moving = np.array([device.read().twist[0] for _ in range(320)])
    before, after = moving[:300], moving[300:]
    still = np.flatnonzero(before == 0.0)
    runs = np.split(still, np.flatnonzero(np.diff(still) > 1) + 1)
    assert 5 <= len(runs) <= 30  # ~15 expected at 5% a read
    # A rest lasts 5-8 reads (two drawn back to back run together).
    lengths = [len(r) for r in runs]
    assert 5 <= min(lengths) <= 8
    assert set(np.unique(before)) == {0.0, 1.0}
    assert after[0] == -1.0  # done: backs off the way it came


def test_record_labels_device_keeps_the_episode_cut_by_the_estop(tmp_path):
    task = load_task(None, [SMALL, "device.kind=none", "env.max_episode_steps=8"])
    device = ScheduleDevice({1}, estop_at=11)
    with pytest.raises(EmergencyStop):
        record_labels(task, tmp_path / "labels", 5, source="device", progress=False,
                      device=device)
    episodes = read_dataset(tmp_path / "labels")
    assert [ep.length for ep in episodes] == [8, 3]
    assert episodes[1].meta["estop"] and episodes[1].truncated[-1]
    assert episodes[0].extras["success"].tolist() == [True] + [False] * 7


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos") / "demos"
    record_demos(load_task(None, [SMALL, EXPERT]), out, 2, progress=False)
    return out


def test_harvest_demo_labels_marks_the_last_frames(demos, tmp_path):
    counts = harvest_demo_labels([demos], tmp_path / "labels", last=5)
    source, labelled = read_dataset(demos), read_dataset(tmp_path / "labels")
    assert len(labelled) == counts["episodes"] == 2
    assert counts["success"] == 10
    assert counts["frames"] == sum(ep.length for ep in source)
    for demo, ep in zip(source, labelled, strict=True):
        assert ep.extras["success"].tolist() == [False] * (demo.length - 5) + [True] * 5
        np.testing.assert_array_equal(ep.images["front"], demo.images["front"])
    assert read_dataset_info(tmp_path / "labels")["kind"] == "labels"


def test_harvest_refuses_demos_without_cameras(tmp_path):
    record_demos(load_task(None, [EXPERT]), tmp_path / "demos", 1, images=False, progress=False)
    with pytest.raises(DatasetError, match="no camera frames"):
        harvest_demo_labels([tmp_path / "demos"], tmp_path / "labels")


def test_cli_record_labels(tmp_path, capsys, demos):
    out = tmp_path / "labels"
    assert main(["record-labels", "--out", str(out), "--episodes", "1",
                 "--steps-after-success", "2", SMALL, EXPERT]) == 0
    printed = capsys.readouterr().out
    n = len(read_dataset(out)[0].action)
    assert f"result: 1 episodes, 3 success frames, {n - 3} failure frames -> {out}" in printed
    assert "warning" not in printed
    # Other scenes than the demos of the same task (label episode i once replayed demo i's).
    assert read_dataset(out)[0].meta["seed"] not in {ep.meta["seed"] for ep in read_dataset(demos)}

    harvested = tmp_path / "harvested"
    assert main(["record-labels", "--from-demos", str(demos), "--last", "3",
                 "--out", str(harvested)]) == 0
    assert "result: 2 episodes, 6 success frames" in capsys.readouterr().out
    assert main(["record-labels", "--out", str(out)]) == 2
    assert "--episodes" in capsys.readouterr().err


def test_clumsy_episodes_close_the_gripper_on_nothing(tmp_path):
    """Negatives with a closed gripper, so the classifier cannot learn "closed = success"."""
    task = load_task(None, [SMALL, EXPERT, "env.relative_frame=false",
                            "env.state_keys=[tcp_pose,gripper_width,object_pos]"])
    record_labels(task, tmp_path / "labels", 2, steps_after_success=5, clumsy_fraction=0.5,
                  progress=False)
    expert, clumsy = read_dataset(tmp_path / "labels")
    assert not clumsy.intervened.any() and expert.intervened.any()
    assert clumsy.length == task.env.max_episode_steps  # no lift: it runs to the time limit
    closed_on_nothing = (clumsy.action[:, -1] > 0.5) & ~clumsy.extras["success"]
    assert closed_on_nothing.sum() > 5
