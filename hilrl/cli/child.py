"""``python -m hilrl.cli.child PARENT MODULE ARGS...``: run ``python -m MODULE ARGS...`` as a
process that dies with PARENT.

``hilrl train-sim`` starts its steps (demos, classifier, learner, actor) through this: on
Linux the kernel then sends each one SIGTERM when train-sim dies, even by SIGKILL or the OOM
killer, which no handler sees; before, the learner and actor trained on as orphans. (A
``preexec_fn`` would do the same from the parent, but it makes ``subprocess`` fork a process
that JAX's threads live in.) Elsewhere it only runs the module.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, module, args = int(argv[0]), argv[1], argv[2:]
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the line above took effect
            sys.exit(128 + signal.SIGTERM)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
