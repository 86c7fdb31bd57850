"""``hilrl train-sim``: the whole human-in-the-loop loop on the simulated robot, one command.

It runs what a user runs by hand, as separate processes with the same CLIs: records demos
with the scripted human (``hilrl record-demos``), starts ``python -m learner`` and
``python -m actor`` (the scripted human steps in whenever the policy stalls), shows one
progress bar, stops once an evaluation round reaches the target success rate or the time
budget (``--minutes``, ``--max-updates``) is spent, evaluates the final checkpoint
(``python -m actor --eval``) and writes the report (``hilrl report``); RUN/train_sim.json is
written last. Exit code 0: target reached; 1: not reached; 2: the run failed::

    RUN/demos/  learner/  actors/actor0/  actors/eval/  report/learning_curve.png
    RUN/learner.out  RUN/actor.out        each process's own output

``--reward classifier`` makes the learned reward the only reward, as on a real robot, in
stages that each leave their artefact in RUN and are reused when it is already there:

1. demos (RUN/demos): the scripted person drives and ends each demo with its SUCCESS button
   (env.reward=none: no simulator success in them);
2. labels (RUN/labels, RUN/demo_labels): ``record-labels --source device``, the person holding
   SUCCESS while it sees the task done, plus the demos' last frames (``--from-demos``). A
   state task gets two 128x128 cameras for the classifier alone. The classifier sees the
   cameras as rendered: where the task resizes them for the policy (``env.cameras`` size,
   e.g. push: rendered at 128x128, 64x64 to the policy), the labels are recorded unresized
   and the demos, which hold the policy's view, are not harvested;
3. classifier (RUN/classifier.hilrl, RUN/classifier_report/): ``train-classifier`` with its
   held-out split; its validation precision, recall and threshold are printed;
4. RL with env.reward=classifier (the classifier's cameras are rendered for it, the policy
   sees env.policy_cameras); the simulator's success reaches only the actor's episode
   records (judged_success, false_success), never a transition, a reward or the learner.
   When the classifier ends an episode as a success, the scripted person looks (by the
   simulator's truth, as it drives) and rejects the false ones through its device, as a
   person at the robot would (actor.reward_review): the learner gets no success for them,
   and the classifier is retrained on the rejected frames in the background;
5. the final evaluation, judged by the simulator's success (env.reward=sim_success).

The result line and RUN/train_sim.json count the false successes: training episodes the
classifier ended as a success while the simulator says they failed; how many of those the
person rejected, and how many reached the learner as successes (rewarded).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hilrl.cli.child import stop_grace_s

TASKS = Path(__file__).resolve().parents[2] / "tasks"  # the repository's tasks/
STATE_TASK = TASKS / "sim_pick_cube.yaml"
PIXELS_TASK = TASKS / "sim_pick_cube_pixels.yaml"  # 128x128, encoder trained online: GPUs
PIXELS_CPU_TASK = TASKS / "sim_pick_cube_pixels_cpu.yaml"  # 64x64, a small online encoder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override task settings for learner and actor, e.g. "
                        "learner.batch_size=128")
    p.add_argument("--pixels", action="store_true",
                   help="learn from the two cameras (default: proprio state only)")
    p.add_argument("--task", metavar="FILE", help="task file (default: tasks/sim_pick_cube"
                   ".yaml; with --pixels sim_pick_cube_pixels.yaml on a GPU, "
                   "sim_pick_cube_pixels_cpu.yaml without one)")
    p.add_argument("--encoder", choices=("online", "pretrained"), default="online",
                   help="online: the task's image encoder, trained with the critic (default); "
                   "pretrained: pretrain a keypoint encoder on the demos (hilrl "
                   "pretrain-encoder) and train with it frozen")
    p.add_argument("--residual", action="store_true",
                   help="residual RL: train a BC policy on the demos (hilrl train-bc) and "
                   "learn a bounded correction to it (residual.base, residual.scale)")
    p.add_argument("--bc-steps", type=int, default=2000, metavar="N",
                   help="--residual: BC gradient steps (default 2000)")
    p.add_argument("--run-dir", metavar="DIR", help="default: runs/train-sim-<time>")
    p.add_argument("--target", type=float, default=0.8,
                   help="stop once an evaluation round succeeds this often (default 0.8)")
    p.add_argument("--minutes", type=float, default=15.0,
                   help="time budget of the training, after the demos and any encoder "
                   "pretraining (default 15); 0: none, with --max-updates as the budget")
    p.add_argument("--max-updates", type=int, default=None, metavar="N",
                   help="also stop once the learner has made N update calls (its step; each "
                   "call runs agent.utd critic updates): a budget in work, not in time, "
                   "that a loaded machine only makes slower")
    p.add_argument("--demos", type=int, default=10, help="scripted demos to record first")
    p.add_argument("--eval-every", type=int, default=10, metavar="K",
                   help="an evaluation round after every K training episodes (default 10)")
    p.add_argument("--eval-episodes", type=int, default=10, metavar="M",
                   help="episodes per evaluation round (default 10)")
    p.add_argument("--stop-rounds", type=int, default=3, metavar="K",
                   help="the target is reached when the last K evaluation rounds, pooled, "
                   "reach it (default 3; with 2, runs still rising stopped at 16/20 and "
                   "then evaluated 60-64%%)")
    p.add_argument("--final-eval", type=int, default=50, metavar="N",
                   help="episodes of the final evaluation (default 50)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--reward", choices=("sim", "classifier"), default="sim",
                   help="sim: the simulator's success is the reward (default); classifier: "
                   "record labels through the scripted person's SUCCESS button, train the "
                   "reward classifier and learn from it alone, judged by the simulator")
    p.add_argument("--label-episodes", type=int, default=20, metavar="N",
                   help="classifier: episodes labelled through the device path (default 20)")
    p.add_argument("--classifier-epochs", type=int, default=30, metavar="N",
                   help="classifier: maximum training epochs (default 30; early stopping)")
    p.add_argument("--target-precision", type=float, default=0.99, metavar="P",
                   help="classifier: the threshold is the lowest reaching this precision on "
                   "the held-out split (default 0.99)")


def free_port_pair() -> int:
    """A port P such that P and P + 1 are free on loopback now."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


class _Tail:
    """New lines of a JSONL file that another process appends to."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tail_text(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def _module_cmd(module: str, *args: str) -> list[str]:
    """``python -m module args``, as a process that dies with train-sim (hilrl.cli.child)."""
    return [sys.executable, "-m", "hilrl.cli.child", str(os.getpid()), module, *args]


class _Terminated(BaseException):
    """SIGTERM reached train-sim: unwind as Ctrl-C does, stopping every process it started."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


def run_train_sim(args: argparse.Namespace) -> int:
    """Exit code 0: the final evaluation reached ``--target``; 1: it did not; 2: the run did
    not complete (a step failed): no RUN/train_sim.json was written by it; 143: SIGTERM
    stopped it (the learner checkpointed first when it was running)."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        return _run(args)
    except subprocess.CalledProcessError as e:
        print(f"train-sim: failed: {' '.join(map(str, e.cmd[4:6]))} exited with code "
              f"{e.returncode}", file=sys.stderr)
        return 2
    except _Terminated:
        print("train-sim: terminated (SIGTERM); the processes it started were stopped",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.minutes < 0 or (args.minutes == 0 and args.max_updates is None):
        raise SystemExit("train-sim: --minutes must be > 0, or 0 (no time budget) with "
                         "--max-updates N as the budget")

    if args.max_updates is not None and args.max_updates < 1:
        print("train-sim: --max-updates must be at least 1", file=sys.stderr)
        return 2
    if args.stop_rounds < 1:
        print("train-sim: --stop-rounds must be at least 1", file=sys.stderr)
        return 2
    t_start, started = time.monotonic(), time.time()
    task, pretrained = _choose_task(args)
    run = Path(args.run_dir or f"runs/train-sim-{time.strftime('%Y%m%d-%H%M%S')}")
    if (run / "learner").exists() or (run / "train_sim.json").exists():
        print(f"train-sim: failed: {run} holds an earlier run; give a new --run-dir (its demos "
              "and encoder are reused from a directory without learner/)", file=sys.stderr)
        return 2
    classifier = args.reward == "classifier"
    if classifier and args.demos < 1 and not (run / "demos" / "meta.json").exists():
        print("train-sim: --reward classifier needs demos (--demos N): their last frames are "
              "labels", file=sys.stderr)
        return 2
    if args.residual and args.demos < 1 and not (run / "demos" / "meta.json").exists():
        print("train-sim: --residual needs demos (--demos N) to clone", file=sys.stderr)
        return 2
    run.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("MUJOCO_GL", "egl")
    print(f"train-sim: task {task}, run directory {run}, reward "
          f"{'the learned classifier (judged by the simulator)' if classifier else 'sim'}",
          flush=True)
    stage = _Stages(["demos", *(["encoder"] if pretrained else []),
                     *(["base policy"] if args.residual else []),
                     *(["labels", "classifier"] if classifier else []), "training",
                     "final evaluation"])
    clf_metrics: dict[str, Any] = {}
    if classifier:
        args.overrides = [*_classifier_defaults(task, args.overrides), *args.overrides]

    demos = run / "demos"
    if not (demos / "meta.json").exists() and args.demos > 0:
        # With the learned reward no simulator success may mark the demos: the person's
        # SUCCESS button ends each one, as on a real robot.
        reward = ["env.reward=none"] if classifier else []
        stage("demos", f"recording {args.demos} demos with the scripted human"
              + (" (each ended by its SUCCESS button)" if classifier else ""))
        subprocess.run(_module_cmd("hilrl.cli", "record-demos", "--task", str(task),
                                   "--episodes", str(args.demos), "--out", str(demos),
                                   *args.overrides, *reward,
                                   *_demo_person(task, args.overrides)),
                       env=env, check=True)
    else:
        stage("demos", f"reusing {demos}" if args.demos > 0 else "none (--demos 0)")
    if pretrained:
        encoder = run / "encoder.hilrl"
        if not encoder.exists():
            stage("encoder", "pretraining the image encoder on the demos")
            subprocess.run(_module_cmd("hilrl.cli", "pretrain-encoder", "--task", str(task),
                                       "--demos", str(demos), "--out", str(encoder),
                                       *(["--quiet"] if args.no_progress else []),
                                       *args.overrides), env=env, check=True)
        else:
            stage("encoder", f"reusing {encoder}")
        args.overrides = [*args.overrides, f"env.frozen_encoder={encoder}"]
    if args.residual:
        base = run / "bc.hilrl"
        if not base.exists():
            stage("base policy", f"behaviour cloning on the demos ({args.bc_steps} steps)")
            subprocess.run(_module_cmd("hilrl.cli", "train-bc", "--task", str(task),
                                       "--demos", str(demos), "--out", str(base),
                                       "--steps", str(args.bc_steps), "--quiet",
                                       *args.overrides), env=env, check=True)
        else:
            stage("base policy", f"reusing {base}")
        args.overrides = [*args.overrides, f"residual.base={base}"]
    if classifier:
        clf_metrics = _learned_reward(run, task, args, env, stage)
        args.overrides = [*args.overrides, "env.reward=classifier",
                          f"env.classifier.path={run / 'classifier.hilrl'}"]
    stage("training", "learner and actor"
          + (", the classifier the only reward" if classifier else ""))
    procs: dict[str, subprocess.Popen] = {}
    outs = {name: open(run / f"{name}.out", "ab") for name in ("learner", "actor")}  # noqa: SIM115
    outcome = "time budget spent"
    try:
        # A free port can be taken by another process before the learner binds it; the
        # learner then exits at once, and a new pair is tried.
        for _ in range(PORT_ATTEMPTS):
            port = free_port_pair()
            endpoints = [f"learner.bind=tcp://127.0.0.1:{port}",
                         f"learner.weights_bind=tcp://127.0.0.1:{port + 1}"]
            learner_cmd = _module_cmd("learner", "--task", str(task), "--run-dir", str(run),
                                      *(["--demos", str(demos)] if args.demos > 0 else []),
                                      *args.overrides, *endpoints)
            actor_cmd = _module_cmd("actor", "--task", str(task), "--run-dir", str(run),
                                    "--learner", f"tcp://127.0.0.1:{port}",
                                    "--eval-every", str(args.eval_every),
                                    "--eval-episodes", str(args.eval_episodes), *args.overrides)
            learner_out = (run / "learner.out").stat().st_size
            procs["learner"] = subprocess.Popen(learner_cmd, env=env, stdout=outs["learner"],
                                                stderr=subprocess.STDOUT)
            procs["actor"] = subprocess.Popen(actor_cmd, env=env, stdout=outs["actor"],
                                              stderr=subprocess.STDOUT)
            outcome = _watch(run, procs, args, time.monotonic(), tqdm)
            if not (outcome.startswith("failed: the learner")
                    and _port_taken(run / "learner.out", learner_out)):
                break
            _stop(procs)
            print(f"train-sim: port {port} or {port + 1} was taken before the learner bound "
                  "it; trying another pair", flush=True)
    except KeyboardInterrupt:
        outcome = "interrupted"
    finally:
        _stop(procs)
        for f in outs.values():
            f.close()
    if outcome.startswith("failed"):
        print(f"train-sim: {outcome}", file=sys.stderr)
        return 2
    return _finish(run, task, args, env, outcome, (time.monotonic() - t_start) / 60, started,
                   clf_metrics, stage)


PORT_ATTEMPTS = 3


def _port_taken(output: Path, offset: int) -> bool:
    """Whether the learner's output since ``offset`` says its port was in use."""
    with open(output, "rb") as f:
        f.seek(offset)
        return b"Address already in use" in f.read()


def _stop(procs: dict[str, subprocess.Popen]) -> None:
    for name in ("actor", "learner"):  # the learner checkpoints on SIGTERM
        p = procs.get(name)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=stop_grace_s())
            except subprocess.TimeoutExpired:
                p.kill()


class _Stages:
    """Prints ``train-sim: [k/n] stage: what it does``: where a long command is."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __call__(self, name: str, text: str) -> None:
        print(f"train-sim: [{self.names.index(name) + 1}/{len(self.names)}] {name}: {text}",
              flush=True)


# The learned reward's cameras when the task has none (a state task): the classifier sees
# them, the policy does not (env.policy_cameras), so the policy still learns from state.
# 128x128: at 64x64 a lifted cube is a few pixels, the classifier cannot tell 3 cm from 7,
# and a policy learns to stop where it guesses wrong (pick-cube: 60% of the training
# episodes ended as false successes at 64x64, none of 18 probed at 128x128).
CLASSIFIER_CAMERAS = ["env.cameras=[{name: front}, {name: wrist}]", "env.image_size=[128,128]",
                      "env.policy_cameras=[]"]


def _classifier_defaults(task: Path, overrides: list[str]) -> list[str]:
    """Settings the learned-reward pipeline adds before the user's overrides (which win)."""
    from hilrl.config import load_task

    # Two positive frames in a row: one frame over the threshold is a noisy verdict.
    defaults = ["env.classifier.consecutive=2"]
    if not load_task(task, overrides).env.cameras:
        defaults += CLASSIFIER_CAMERAS
    return defaults


def _classifier_view(task: Path, overrides: list[str]) -> list[str]:
    """Overrides that record labels as the classifier sees the cameras: as rendered (and
    cropped), without the policy's resize. Empty when the two views are the same."""
    from hilrl.config import load_task

    cameras = load_task(task, overrides).env.cameras
    if all(c.size is None for c in cameras):
        return []
    whole = ", ".join(f"{{name: {c.name}" + (f", crop: {list(c.crop)}" if c.crop else "") + "}"
                      for c in cameras)
    return [f"env.cameras=[{whole}]"]


def _learned_reward(run: Path, task: Path, args: argparse.Namespace, env: dict[str, str],
                    stage: _Stages) -> dict[str, Any]:
    """Labels through the device path, then the classifier; returns its validation metrics.
    Each artefact is reused when already in ``run``."""
    quiet = ["--quiet"] if args.no_progress else []
    labels, demo_labels = run / "labels", run / "demo_labels"
    view = _classifier_view(task, args.overrides)
    if not (labels / "meta.json").exists():
        stage("labels", f"recording {args.label_episodes} episodes through the device path "
              "(record-labels --source device): the scripted person holds SUCCESS while it "
              "sees the task done; 30% are a random walk it only watches, and in half the "
              "others it rests now and then on the way, and backs off each time it sees "
              "success and does it again")
        subprocess.run(_module_cmd("hilrl.cli", "record-labels", "--task", str(task),
                                   "--source", "device", "--episodes", str(args.label_episodes),
                                   "--clumsy-fraction", "0.3", "--boundary-fraction", "0.5",
                                   "--out", str(labels), *quiet,
                                   *args.overrides, *_demo_person(task, args.overrides),
                                   *view),
                       env=env, check=True)
    else:
        stage("labels", f"reusing {labels}")
    data = ["--data", str(labels)]
    if view:
        stage("labels", "not harvesting the demos' last frames: the demos hold the policy's "
              "resized view, the classifier sees the cameras as rendered")
    elif not (demo_labels / "meta.json").exists():
        # A demo ends on the step the person pressed SUCCESS: its last two frames are the
        # ones it saw done (the frame it pressed on and the one after).
        stage("labels", "harvesting the demos' last 2 frames as success (record-labels "
              "--from-demos)")
        subprocess.run(_module_cmd("hilrl.cli", "record-labels", "--from-demos",
                                   str(run / "demos"), "--last", "2", "--out", str(demo_labels)),
                       env=env, check=True)
    if not view:
        data += ["--data", str(demo_labels)]
    clf = run / "classifier.hilrl"
    if not clf.exists():
        stage("classifier", f"training on {', '.join(data[1::2])} with a held-out split (at "
              f"most {args.classifier_epochs} epochs)")
        subprocess.run(_module_cmd("hilrl.cli", "train-classifier", *data, "--out", str(clf),
                                   "--epochs", str(args.classifier_epochs),
                                   "--target-precision", str(args.target_precision), *quiet),
                       env=env, check=True, stdout=subprocess.DEVNULL if quiet else None)
    else:
        stage("classifier", f"reusing {clf}")
    m = _read_json(run / "classifier_report" / "metrics.json")
    if m:
        print(f"train-sim: classifier validation precision {m['precision']:.3f}, recall "
              f"{m['recall']:.3f} at threshold {m['threshold']:.3f} ({m['n_val_frames']} "
              f"held-out frames of {m['n_val_episodes']} episodes"
              f"{'' if m['target_precision_met'] else '; target precision NOT met'})",
              flush=True)
    keep = ("precision", "recall", "threshold", "accuracy", "roc_auc", "target_precision",
            "target_precision_met", "n_train_frames", "n_val_frames", "n_val_episodes")
    return {k: m.get(k) for k in keep}


def _demo_person(task: Path, overrides: list[str]) -> list[str]:
    """Overrides that make the task's scripted person drive every demo step: the home
    expert's takeover, or a plug-in person's ``device.plugin.demo_kwargs``."""
    from hilrl.config import load_task

    device = load_task(task, overrides).device
    if device.kind == "plugin":
        demo_kwargs = device.section("plugin").get("demo_kwargs", {})
        return [f"device.plugin.kwargs.{key}={json.dumps(value)}"
                for key, value in demo_kwargs.items()]
    return ["device.expert.takeover=always"]


def _choose_task(args: argparse.Namespace) -> tuple[Path, bool]:
    """The task file and whether to pretrain a frozen encoder, said out loud: a CPU gets
    the configuration that learns there in minutes, a GPU the one that scales. Both train
    their encoder with the critic unless --encoder pretrained."""
    if not args.pixels:
        return Path(args.task or STATE_TASK), args.encoder == "pretrained"
    import jax

    backend = jax.default_backend()
    gpu = backend != "cpu"
    pretrained = args.encoder == "pretrained"
    task = Path(args.task) if args.task else (
        PIXELS_TASK if gpu and not pretrained else PIXELS_CPU_TASK)
    if args.task:
        why = "the task file given"
    elif pretrained:
        why = ("--encoder pretrained: 64x64 cameras, an encoder pretrained on the demos and "
               "frozen, its features computed once per frame by the actor")
    elif gpu:
        why = f"a {backend.upper()} was found: 128x128 cameras, ResNet-10 trained online"
    else:
        why = ("no GPU was found: 64x64 cameras, a small conv encoder trained online with "
               "the critic")
    print(f"train-sim: pixels on {backend}: {task.name} ({why})", flush=True)
    return task, pretrained


def _watch(run: Path, procs: dict[str, subprocess.Popen], args: argparse.Namespace,
           t_start: float, tqdm: Any) -> str:
    episodes = _Tail(run / "actors" / "actor0" / "episodes.jsonl")
    budget = args.minutes * 60 if args.minutes > 0 else math.inf
    train: list[dict[str, Any]] = []
    eval_round: list[bool] = []  # successes of the round in progress
    rounds: list[list[bool]] = []  # successes of each finished evaluation round
    last_eval: float | None = None
    timed = budget < math.inf
    bar = tqdm(total=int(budget) if timed else None, unit="s", desc="train-sim",
               disable=args.no_progress,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}"
               if timed else "{desc}: {n:.0f} s{postfix}")
    with bar:
        while True:
            time.sleep(0.5)
            elapsed = time.monotonic() - t_start
            bar.update(int(min(elapsed, budget)) - bar.n)
            for name, p in procs.items():
                if p.poll() is not None:
                    return (f"failed: the {name} exited with code {p.returncode}; its last "
                            f"output ({run / (name + '.out')}):\n"
                            + _tail_text(run / f"{name}.out"))
            for r in episodes.read():
                if r["kind"] == "eval":
                    # The scene's verdict where there is one: with the learned reward the
                    # stopping rule is judged, like the final evaluation, by the simulator.
                    eval_round.append(bool(r.get("judged_success", r["success"])))
                    if len(eval_round) < args.eval_episodes:
                        continue
                elif not eval_round:
                    train.append(r)
                    continue
                else:  # a training episode after a cut-short round closes it
                    train.append(r)
                rounds.append(eval_round)
                eval_round = []
                last_eval = sum(rounds[-1]) / len(rounds[-1])
                # Rounds pooled: one round of 10 episodes is too noisy to stop on.
                k = args.stop_rounds
                window = [s for done in rounds[-k:] for s in done]
                if len(rounds) >= k and sum(window) / len(window) >= args.target:
                    bar.set_postfix_str(_postfix(train, last_eval, run))
                    return (f"target reached ({sum(window)}/{len(window)} successes in the "
                            f"last {k} evaluation rounds)")
            bar.set_postfix_str(_postfix(train, last_eval, run))
            status = _read_json(run / "learner" / "status.json")
            if (args.max_updates is not None and status.get("pid") == procs["learner"].pid
                    and status.get("step", 0) >= args.max_updates):
                return f"update budget spent ({args.max_updates} update calls)"
            if elapsed >= budget:
                return "time budget spent"


def _postfix(train: list[dict[str, Any]], last_eval: float | None, run: Path) -> str:
    recent = train[-20:]
    steps = train[-1]["env_steps"] if train else 0
    success = sum(r["success"] for r in recent) / len(recent) if recent else 0.0
    human = sum(r["interventions"] for r in recent) / max(sum(r["steps"] for r in recent), 1)
    status = _read_json(run / "learner" / "status.json")
    ev = "-" if last_eval is None else f"{last_eval:.0%}"
    false = sum(bool(r.get("false_success")) for r in train)
    rejected = sum(bool(r.get("rejected")) for r in train)
    return (f"steps {steps} | success {success:.0%} | eval {ev} | human {human:.0%} | "
            + (f"false succ {false} | " if false else "")
            + (f"rejected {rejected} | " if rejected else "")
            + f"{status.get('critic_updates_per_s', 0):.0f} critic upd/s")


def false_successes(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The false-success counts of an actor's episode records (see
    ``hilrl.reporting.report.false_success_counts``) out of the training episodes the
    simulator judged (rate None when it judged none)."""
    from hilrl.reporting.report import false_success_counts

    train = [r for r in records if r.get("kind") == "train"]
    judged = [r for r in train if "false_success" in r]
    counts = false_success_counts(train)
    return {"train_episodes": len(train), "judged_train_episodes": len(judged),
            "false_success_episodes": counts.get("false_success_episodes", 0),
            "false_success_rate": counts.get("false_success_rate"),
            **{k: v for k, v in counts.items() if k.startswith(("rejected", "rewarded"))}}


def _finish(run: Path, task: Path, args: argparse.Namespace, env: dict[str, str], outcome: str,
            minutes: float, started: float, clf_metrics: dict[str, Any], stage: _Stages) -> int:
    """Evaluate the final checkpoint, write the report and RUN/train_sim.json."""
    from hilrl.reporting.metrics import read_jsonl
    from hilrl.reporting.report import make_report

    classifier = args.reward == "classifier"

    status = _read_json(run / "learner" / "status.json")
    actor = _read_json(run / "actors" / "actor0" / "status.json")
    print(f"train-sim: {outcome} after {minutes:.1f} min", flush=True)
    stage("final evaluation", f"the final checkpoint on {args.final_eval} episodes"
          + (", judged by the simulator's success (env.reward=sim_success)" if classifier
             else ""))
    result = None
    if args.final_eval > 0:
        # The learned reward trained the policy; the simulator's success judges it.
        judge = ["env.reward=sim_success"] if classifier else []
        subprocess.run(_module_cmd("actor", "--task", str(task), "--run-dir", str(run),
                                   "--eval", str(args.final_eval), "--checkpoint",
                                   str(run / "learner"), "--quiet", *args.overrides,
                                   "actor.id=eval", "actor.hz=0", *judge),
                       env=env, check=True, stdout=subprocess.DEVNULL)
        evals = _Tail(run / "actors" / "eval" / "eval.jsonl").read()
        result = evals[-1] if evals else None
    metrics = run / "learner" / "metrics.jsonl"
    rates = [r["rate/critic_updates_per_s"] for r in read_jsonl(metrics)
             if r.get("rate/critic_updates_per_s")] if metrics.exists() else []
    episodes = run / "actors" / "actor0" / "episodes.jsonl"
    false = false_successes(read_jsonl(episodes) if episodes.exists() else [])
    summary = {
        "outcome": outcome, "train_minutes": minutes, "started": started,
        "reward": args.reward, "judged_by": "the simulator's success",
        "success_rate": None if result is None else result["success_rate"],
        "eval_episodes": 0 if result is None else result["episodes"],
        "env_steps": status.get("env_steps", 0), "update_calls": status.get("step", 0),
        # Critic updates/s (update calls x utd), the median of the learner's metrics.
        "learner_updates_per_s": float(sorted(rates)[len(rates) // 2]) if rates else 0.0,
        "actor_overrun_p99_ms": actor.get("overrun_ms_p99", 0.0),
        "actor_overrun_rate": actor.get("overrun_rate", 0.0),
        **false,
        **({"classifier": clf_metrics} if classifier else {}),
    }
    paths = make_report(run)
    (run / "train_sim.json").write_text(json.dumps(summary, indent=1))  # last: run complete
    curve = next((p for p in paths if p.name == "learning_curve.png"), None)
    print(f"train-sim: report {curve or paths[0]}; checkpoint {run / 'learner' / 'checkpoints'}")
    fs = ""
    if classifier:
        rate = false["false_success_rate"]
        fs = (f"; false successes {false['false_success_episodes']}/"
              f"{false['judged_train_episodes']} training episodes "
              f"({'-' if rate is None else f'{rate:.1%}'}: the classifier said success, the "
              "simulator says failed)")
        if "rejected_episodes" in false:
            fs += (f", {false['rejected_episodes']} rejected by the person, "
                   f"{false['rewarded_false_success_episodes']} rewarded")
    if result is None:
        print(f"result: no final evaluation; {status.get('env_steps', 0)} env steps, "
              f"{status.get('step', 0)} update calls in {minutes:.1f} min{fs}")
        return 0
    reached = result["success_rate"] >= args.target
    judged = ", judged by the simulator's success" if classifier else ""
    print(f"result: {result['success_rate']:.0%} evaluated success ({result['successes']}/"
          f"{result['episodes']} episodes{judged}, deterministic policy, no human) after "
          f"{minutes:.1f} min, {status.get('env_steps', 0)} env steps, "
          f"{status.get('step', 0)} update calls -- target {args.target:.0%} "
          f"{'reached' if reached else 'NOT reached'}{fs}", flush=True)
    print(f"learner {summary['learner_updates_per_s']:.1f} critic updates/s (median) and "
          f"actor loop "
          f"overruns {summary['actor_overrun_rate']:.1%} (lateness p99 "
          f"{summary['actor_overrun_p99_ms']:.1f} ms), sharing this machine's cores", flush=True)
    return 0 if reached else 1
