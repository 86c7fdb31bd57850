"""Command-line arguments of the learner node (light: ``hilrl --help`` imports it)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", metavar="FILE", help="task YAML file (default: the sim task)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override task settings, e.g. learner.batch_size=128")
    p.add_argument("--run-dir", default=None, metavar="DIR",
                   help="where checkpoints, logs and the transport log go (default: "
                        "runs/<task name>); the learner uses DIR/learner/")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its latest checkpoint")
    p.add_argument("--demos", action="append", metavar="DIR", default=None,
                   help="a demo dataset (repeatable; default: learner.demos of the task)")
    p.add_argument("--insecure", action="store_true",
                   help="allow binding beyond loopback without CURVE keys (trusted networks "
                        "only; same as learner.insecure=true)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stdout")
