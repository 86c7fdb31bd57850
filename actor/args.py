"""Command-line arguments of the actor node (light: ``hilrl --help`` imports it)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", metavar="FILE", help="task YAML file (default: the sim task)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override task settings, e.g. actor.id=arm1 env.hz=20")
    p.add_argument("--learner", metavar="tcp://HOST:PORT",
                   help="the learner's transitions endpoint (default: actor.learner); the "
                        "weights endpoint defaults to the next port")
    p.add_argument("--run-dir", default=None, metavar="DIR",
                   help="where episode logs and the outbox spill go (default: runs/<task "
                        "name>); the actor uses DIR/actors/<actor id>/")
    p.add_argument("--resume", action="store_true",
                   help="continue this actor's run in --run-dir: its episode numbering, and "
                        "the transitions it had not delivered are sent first")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N env steps")
    p.add_argument("--eval", type=int, default=None, metavar="N",
                   help="run N evaluation episodes (deterministic policy, no interventions, "
                        "no learning) and print the success rate")
    p.add_argument("--eval-every", type=int, default=0, metavar="K",
                   help="while training, evaluate after every K training episodes")
    p.add_argument("--eval-episodes", type=int, default=10, metavar="M",
                   help="episodes per evaluation round while training (default 10)")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="with --eval: load the policy from a learner checkpoint directory "
                        "instead of a running learner")
    p.add_argument("--video", metavar="DIR", help="with --eval: save an mp4 per camera "
                                                  "and episode")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stdout")
