import fnmatch
import os
import tempfile

import pytest

# Before anything imports mujoco or jax: headless rendering, and a persistent compilation
# cache so the many small jitted functions in the tests compile once per machine.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "hilrl-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# The test files that run MuJoCo (the simulated arm, its cameras, MuJoCo gymnasium envs). CI
# runs them a second time under MuJoCo 3.x (.ci/mujoco3, `pytest -m mujoco`), since hilrl
# supports 3.2 to 4.x. A new file that builds a MuJoCo model belongs here; a single test can
# instead carry @pytest.mark.mujoco itself.
MUJOCO_TEST_FILES = (
    "test_mujoco_compat.py",
    "test_env.py",
    "test_expert.py",
    "test_gym_adapter.py",
    "test_registry.py",
    "test_loop.py",
    "test_labels.py",
    "test_safety.py",
    "test_hardware_stack.py",
    "test_cli.py",
    "test_pretrain.py",
    "test_learner_parts.py",
    "test_classifier_reward.py",
    "test_example_env*.py",
    "test_pick_cube_equivalence.py",
    "test_peg_insert.py",
    "test_push.py",
    "test_viewer.py",
    "test_residual.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(fnmatch.fnmatch(item.path.name, pattern) for pattern in MUJOCO_TEST_FILES):
            item.add_marker(pytest.mark.mujoco)


@pytest.fixture
def build_stack():
    """``build_stack(task_file, *overrides, **make_env_kwargs)`` -> an EnvStack (task_file None:
    the defaults), closed after the test."""
    from actor.env_factory import make_env
    from hilrl.config import load_task

    stacks = []

    def _build(task_file, *overrides: str, **kwargs):
        stack = make_env(load_task(task_file, list(overrides)), **kwargs)
        stacks.append(stack)
        return stack

    yield _build
    for stack in stacks:
        stack.close()
