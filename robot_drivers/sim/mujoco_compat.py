"""The MuJoCo calls whose form differs across the versions hilrl supports (3.2 to 4.x).

Everything in hilrl that would have to branch on the MuJoCo version goes through here, so the
rest of the simulator is written once against one interface. Each choice is made by probing
what the installed MuJoCo accepts, never by parsing its version string: the API moved in the
middle of the 3.x series, and a version number says nothing about a patched or dev build.
"""

from __future__ import annotations

import functools

import mujoco
import numpy as np

# The smallest model with a non-trivial inertia matrix, for probing call forms.
_PROBE_XML = """
<mujoco>
  <worldbody><body><joint type="hinge"/><geom size="0.1"/></body></worldbody>
</mujoco>
"""


@functools.cache
def _fullm_reads_data() -> bool:
    """True when ``mj_fullM(m, d, dst)`` is the form (newer 3.x and 4.x, where ``MjData.qM``
    is gone); False for ``mj_fullM(m, dst, M)`` with ``M = d.qM`` (3.2 to at least 3.8)."""
    model = mujoco.MjModel.from_xml_string(_PROBE_XML)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    try:
        mujoco.mj_fullM(model, data, np.zeros((model.nv, model.nv)))
    except TypeError:  # pybind11's "incompatible function arguments"
        return False
    return True


def full_inertia(model: mujoco.MjModel, data: mujoco.MjData, out: np.ndarray) -> np.ndarray:
    """The dense joint-space inertia matrix (nv x nv) of ``data``'s current configuration,
    written into ``out`` (float64, C-contiguous, nv x nv) and returned.

    ``data`` must have been through ``mj_forward`` or ``mj_step`` (which fill the sparse
    inertia this expands)."""
    if _fullm_reads_data():
        mujoco.mj_fullM(model, data, out)
    else:
        mujoco.mj_fullM(model, out, data.qM)
    return out
