#!/usr/bin/env bash
# Sets hilrl up in ./.venv: system libraries for headless rendering (Debian/Ubuntu, when
# apt-get can be used), then the Python package. `./setup.sh dev` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")"

# Headless MuJoCo rendering needs EGL (or OSMesa). Install them when they are missing and
# we are allowed to; otherwise say what to install.
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1'; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
    if $SUDO true 2>/dev/null; then
      $SUDO apt-get update -qq && \
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
          libegl1 libgl1-mesa-dri libosmesa6 >/dev/null
    fi
  fi
  ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || echo "setup.sh: warning: no libEGL found;" \
    "camera rendering needs it (Debian/Ubuntu: apt-get install libegl1 libgl1-mesa-dri)" >&2
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "dev" ]; then
  .venv/bin/python -m pip install -q -e '.[dev]'
else
  .venv/bin/python -m pip install -q -e .
fi
