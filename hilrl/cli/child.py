"""``python -m hilrl.cli.child PARENT MODULE ARGS...``: run ``python -m MODULE ARGS...`` as a
process that dies with PARENT.

``hilrl train-sim`` starts its steps (demos, classifier, learner, actor) through this: on
Linux the kernel then sends each one SIGTERM when train-sim dies, even by SIGKILL or the OOM
killer, which no handler sees; before, the learner and actor trained on as orphans. (A
``preexec_fn`` would do the same from the parent, but it makes ``subprocess`` fork a process
that JAX's threads live in.) Elsewhere it only runs the module.

SIGTERM asks for a clean stop (the learner checkpoints first). A process still running
``STOP_GRACE_S`` after its parent died prints every thread's stack and exits: an orphan that
does not stop would otherwise run (and hold the robot, a port, the run directory) forever.
``$HILRL_STOP_GRACE_S`` overrides the grace.
"""

from __future__ import annotations

import faulthandler
import os
import runpy
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
# How long a step has to stop after SIGTERM, here and in train-sim's own stop: the learner's
# final checkpoint must fit.
STOP_GRACE_S = 120.0


def stop_grace_s() -> float:
    return float(os.environ.get("HILRL_STOP_GRACE_S", STOP_GRACE_S))


def _end_when_orphaned(parent: int, module: str, grace: float) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    # faulthandler's timer is a C thread: it fires even when the interpreter hangs in its own
    # shutdown, where no Python thread runs any more.
    faulthandler.dump_traceback_later(grace, exit=True)
    print(f"{module}: parent process {parent} exited; stopping (the stacks of all threads "
          f"are printed and the process ends if it has not stopped in {grace:g} s)",
          file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
    parent, module, args = int(argv[0]), argv[1], argv[2:]
    sys.argv = [module, *args]
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the line above took effect
            sys.exit(128 + signal.SIGTERM)
        threading.Thread(target=_end_when_orphaned, args=(parent, module, stop_grace_s()),
                         name="orphan-watch", daemon=True).start()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
