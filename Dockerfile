# hilrl with headless MuJoCo rendering; the learner needs none of the GL libraries, but one
# image for both services keeps docker-compose.yml simple.
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libegl1 libgl1-mesa-dri libosmesa6 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /hilrl
COPY pyproject.toml README.md ./
COPY hilrl hilrl
COPY actor actor
COPY learner learner
COPY robot_drivers robot_drivers
COPY tasks tasks
# Editable, so `hilrl train-sim` finds the task files in /hilrl/tasks beside the package.
RUN pip install --no-cache-dir -e .
ENV MUJOCO_GL=egl \
    JAX_COMPILATION_CACHE_DIR=/runs/.jax-cache \
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
    PYTHONUNBUFFERED=1
