import os
import tempfile

# Before anything imports mujoco or jax: headless rendering, and a persistent compilation
# cache so the many small jitted functions in the tests compile once per machine.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "hilrl-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
