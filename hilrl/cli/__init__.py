"""The ``hilrl`` command. Each subcommand imports its node lazily, so ``hilrl --help`` is fast
and the learner's commands never pull in a robot driver."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hilrl.errors import run_guarded


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", metavar="FILE",
                   help="task YAML file (default: the built-in simulated pick-cube task)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override task settings, e.g. env.hz=20 device.kind=keyboard")


def _load(args: argparse.Namespace):
    from hilrl.config import load_task

    return load_task(args.task, args.overrides)


def cmd_teleop(args: argparse.Namespace) -> int:
    from actor.teleop import teleop

    teleop(_load(args), episodes=args.episodes)
    return 0


def cmd_record_demos(args: argparse.Namespace) -> int:
    from actor.teleop import RecordingError, record_demos

    task = _load(args)
    try:
        attempts = record_demos(task, args.out, args.episodes, images=not args.no_images,
                                overwrite=args.overwrite)
    except RecordingError as e:
        print(f"hilrl: error: {e}", file=sys.stderr)
        return 1
    print(f"result: recorded {args.episodes} successful demos in {attempts} attempts "
          f"({args.episodes / attempts:.0%} success) -> {args.out}")
    return 0


def cmd_record_labels(args: argparse.Namespace) -> int:
    from actor.labels import harvest_demo_labels, record_labels

    if args.from_demos:
        if args.task or args.overrides:
            print("hilrl: error: --from-demos takes its task from the demos; drop --task and "
                  "KEY=VALUE", file=sys.stderr)
            return 2
        counts = harvest_demo_labels(args.from_demos, args.out, last=args.last,
                                     overwrite=args.overwrite)
        more = "record more with: hilrl record-demos, then --from-demos again"
    else:
        if args.episodes is None:
            print("hilrl: error: record-labels needs --episodes N (or --from-demos DIR)",
                  file=sys.stderr)
            return 2
        counts = record_labels(_load(args), args.out, args.episodes, source=args.source,
                               steps_after_success=args.steps_after_success,
                               clumsy_fraction=args.clumsy_fraction,
                               boundary_fraction=args.boundary_fraction,
                               overwrite=args.overwrite, progress=not args.quiet)
        more = (f"record more with: hilrl record-labels --source {args.source} --out "
                f"{args.out} --episodes N")
    print(f"result: {counts['episodes']} episodes, {counts['success']} success frames, "
          f"{counts['failure']} failure frames -> {args.out}")
    for name in ("success", "failure"):
        if counts[name] == 0:
            print(f"warning: no {name} frames; the classifier needs both classes; {more}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from hilrl.storage.dataset import iter_dataset, read_dataset_info

    info = read_dataset_info(args.path)
    print(json.dumps({k: v for k, v in info.items() if k != "task"}, indent=2))
    total = 0
    for i, ep in enumerate(iter_dataset(args.path)):
        total += ep.length
        cams = ", ".join(f"{k} {v.shape[1]}x{v.shape[2]}" for k, v in ep.images.items())
        print(f"episode {i}: {ep.length} steps, return {ep.reward.sum():g}, "
              f"{int(ep.intervened.sum())} intervened, cameras [{cams}]")
    print(f"{i + 1 if total else 0} episodes, {total} steps")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from hilrl.transport.security import ACTORS_DIR, KeyFileError, generate_keys

    names = args.actor or [f"actor{i}" for i in range(args.actors)]
    try:
        made = generate_keys(args.out, names, force=args.force)
    except KeyFileError as e:
        print(f"hilrl: error: {e}", file=sys.stderr)
        return 2
    out = made.out
    print(f"wrote CURVE keys for the learner and {len(names)} actor(s) to {out}")
    print(f"learner machine: {out}/learner.key_secret, learner.key and authorized/ (keep this "
          "layout; the learner loads its keys from the directory holding them)")
    for name, directory in made.actor_dirs.items():
        print(f"robot PC of {name}: the directory {directory}/ ({name}.key_secret, {name}.key, "
              "learner.key); the actor loads its keys from it")
    for path in made.kept_authorized:
        print(f"note: {path} is from before and still authorised; delete it to revoke it")
    print("*.key_secret files are private (mode 0600): copy each only to the machine it is for, "
          f"then delete {out}/{ACTORS_DIR}/ wherever no actor runs. To add an actor later, put "
          f"its .key into authorized/ and restart the learner.")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from hilrl.reporting.report import make_report

    try:
        paths = make_report(args.run_dir, args.out)
    except ValueError as e:  # missing or corrupt logs
        print(f"hilrl: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    summary = json.loads(paths[-1].read_text())
    for key, value in summary.items():
        print(f"{key}: {f'{value:.3g}' if isinstance(value, float) else value}")
    return 0


def cmd_learner(args: argparse.Namespace) -> int:
    from learner.node import run_learner

    return run_learner(args)


def cmd_actor(args: argparse.Namespace) -> int:
    from actor.node import run_actor

    return run_actor(args)


def cmd_train_sim(args: argparse.Namespace) -> int:
    from hilrl.cli.train_sim import run_train_sim

    return run_train_sim(args)


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from hilrl.learning.classifier import (
        ClassifierConfig,
        ClassifierError,
        retrain_recipe,
        train_classifier,
    )

    try:
        config = ClassifierConfig(encoder=args.encoder, freeze_backbone=args.freeze_backbone,
                                  pooling=args.pooling)
        recipe = {"paths": args.data or [], "cameras": args.cameras, "labels": args.labels,
                  "config": config, "target_precision": args.target_precision}
        if args.like:
            recipe = retrain_recipe(args.like, args.data or [])
        elif not args.data:
            print("hilrl: error: pass --data DIR (or --like FILE)", file=sys.stderr)
            return 2
        result = train_classifier(
            recipe.pop("paths"), args.out, **recipe, val_fraction=args.val_fraction,
            batch_size=args.batch_size, max_epochs=args.epochs, minutes=args.minutes,
            seed=args.seed, resnet_weights=args.resnet_weights, progress=not args.quiet)
    except ClassifierError as e:
        print(f"hilrl: error: {e}", file=sys.stderr)
        return 2
    m = result.metrics
    met = "" if m["target_precision_met"] else " (target precision NOT met)"
    print(f"held-out: accuracy {m['accuracy']:.3f}, precision {m['precision']:.3f}, "
          f"recall {m['recall']:.3f}, ROC-AUC {m['roc_auc']:.3f}")
    print(f"threshold {m['threshold']:.4f} for target precision {m['target_precision']}{met}")
    print(f"train: {m['n_train_frames']} frames / {m['n_train_episodes']} episodes "
          f"({m['positives_train']} positive); validation: {m['n_val_frames']} frames / "
          f"{m['n_val_episodes']} episodes ({m['positives_val']} positive)")
    print(f"wrote {args.out}")
    for path in result.report_paths:
        print(path)
    return 0


def cmd_pretrain_encoder(args: argparse.Namespace) -> int:
    import dataclasses

    from hilrl.learning.pretrain import EncoderFileError, pretrain_from_demos

    task = _load(args)
    cfg = dataclasses.replace(task.pretrain, **({"steps": args.steps} if args.steps else {}),
                              **({"seed": args.seed} if args.seed is not None else {}))
    try:
        m = pretrain_from_demos(task, args.demos, args.out, cfg, progress=not args.quiet,
                                heldout=args.heldout or ())
    except EncoderFileError as e:
        print(f"hilrl: error: {e}", file=sys.stderr)
        return 2
    print(f"result: encoder pretrained on {m['frames']:.0f} frames of {m['episodes']:.0f} demos "
          f"in {m['seconds']:.0f} s (BC MSE {m['bc_mse']:.4f}"
          + (f", read-out {m['readout']} fit {100 * m['object_rmse_m']:.1f} cm"
             if m["readout"] != "none" else ", no read-out")
          + (f", held-out success ROC-AUC {m['heldout_success_auc']:.3f} on "
             f"{m['heldout_frames']:.0f} frames" if "heldout_success_auc" in m else "")
          + f") -> {args.out}; train with env.frozen_encoder={args.out}")
    return 0


def cmd_train_bc(args: argparse.Namespace) -> int:
    from hilrl.learning.base_policy import BasePolicyError
    from learner.train_bc import train_bc_policy

    task = _load(args)

    def progress(step: int, mse: float) -> None:
        if not args.quiet:
            print(f"  step {step}/{args.steps}: BC MSE {mse:.4f}", flush=True)

    try:
        m = train_bc_policy(task, args.demos, args.out, args.steps, args.batch_size,
                            seed=task.seed if args.seed is None else args.seed,
                            progress=progress)
    except BasePolicyError as e:
        print(f"hilrl: error: {e}", file=sys.stderr)
        return 2
    print(f"result: BC policy trained on {m['transitions']} steps of {m['episodes']} demos in "
          f"{m['seconds']:.0f} s (MSE {m['mse']:.4f}) -> {args.out}; refine it with RL: "
          f"residual.base={args.out}")
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hilrl", description="Human-in-the-loop RL for robot arms.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("teleop", help="drive the robot with the configured input device")
    _task_args(p)
    p.add_argument("--episodes", type=int, default=None, help="stop after N (default: never)")
    p.set_defaults(func=cmd_teleop)

    p = sub.add_parser("record-demos", help="record N successful teleoperated episodes")
    _task_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory")
    p.add_argument("--episodes", type=_positive_int, default=20)
    p.add_argument("--no-images", action="store_true", help="record proprio state only")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the episodes already in DIR (default: append)")
    p.set_defaults(func=cmd_record_demos)

    p = sub.add_parser("record-labels", help="record camera frames labelled success/failure "
                       "for the reward classifier")
    _task_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory")
    p.add_argument("--episodes", type=_positive_int, default=None, metavar="N")
    p.add_argument("--source", choices=("sim", "device"), default="sim",
                   help="sim: the sim's success (cube lifted) labels the frames the "
                   "configured device produces; device: frames are success while the "
                   "device's SUCCESS button is held (default: sim)")
    p.add_argument("--steps-after-success", type=int, default=20, metavar="N",
                   help="keep recording N steps past the first success (sim), or until "
                   "SUCCESS was held N more frames (device) (default: 20)")
    p.add_argument("--clumsy-fraction", type=float, default=None, metavar="F",
                   help="this fraction of the episodes is a random walk closing the gripper on "
                   "nothing, labelled like the rest (default: 0.3 with --source sim, 0 with "
                   "device)")
    p.add_argument("--boundary-fraction", type=float, default=0.0, metavar="F",
                   help="with --source device: this fraction of the person's episodes are "
                   "boundary episodes: it rests now and then on the way, and each time it "
                   "sees the task done it backs off a few motions and does it again, so near "
                   "misses are in the labels (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--from-demos", nargs="+", metavar="DIR",
                   help="label record-demos datasets instead of recording: the last --last "
                   "frames of each successful demo are success")
    p.add_argument("--last", type=_positive_int, default=5, metavar="N",
                   help="with --from-demos: success frames per demo (default: 5)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the episodes already in DIR (default: append)")
    p.set_defaults(func=cmd_record_labels)

    p = sub.add_parser("pretrain-encoder", help="pretrain an image encoder on demos, to "
                       "freeze it for online RL (env.frozen_encoder)")
    _task_args(p)
    p.add_argument("--demos", nargs="+", required=True, metavar="DIR",
                   help="record-demos datasets of the task (with images)")
    p.add_argument("--out", required=True, metavar="FILE", help="encoder file to write")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="gradient steps (default: the task's pretrain.steps)")
    p.add_argument("--heldout", nargs="+", default=None, metavar="DIR",
                   help="labels (record-labels) or demos of other scenes: report how well the "
                   "features predict success there (ROC-AUC)")
    p.add_argument("--seed", type=int, default=None, help="default: the task's pretrain.seed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain_encoder)

    p = sub.add_parser("train-bc", help="behaviour cloning on demos: a base policy for "
                       "residual RL (residual.base)")
    _task_args(p)
    p.add_argument("--demos", nargs="+", required=True, metavar="DIR",
                   help="record-demos datasets of the task")
    p.add_argument("--out", required=True, metavar="FILE", help="policy file to write")
    p.add_argument("--steps", type=_positive_int, default=2000, help="gradient steps")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--seed", type=int, default=None, help="default: the task's seed")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_train_bc)

    p = sub.add_parser("inspect", help="summarise a recorded dataset")
    p.add_argument("path", metavar="DIR")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("keys", help="generate CURVE key pairs for the learner and its actors")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the keys to")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--actors", type=_positive_int, default=1, metavar="N",
                     help="make keys for actors actor0 .. actorN-1 (default: 1)")
    who.add_argument("--actor", action="append", metavar="NAME",
                     help="make keys for an actor with this name (repeatable)")
    p.add_argument("--force", action="store_true", help="replace keys already in DIR")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("report", help="plot learning curves and summarise a training run")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (holds learner/ and "
                   "actors/)")
    p.add_argument("--out", metavar="DIR", help="where to write the report (default: "
                   "RUN_DIR/report)")
    p.set_defaults(func=cmd_report)

    from actor.args import add_arguments as actor_arguments
    from learner.args import add_arguments as learner_arguments

    p = sub.add_parser("learner", help="run the learner node (trains, publishes weights)")
    learner_arguments(p)
    p.set_defaults(func=cmd_learner)

    p = sub.add_parser("actor", help="run the actor node (drives the robot with the policy)")
    actor_arguments(p)
    p.set_defaults(func=cmd_actor)

    from hilrl.cli.train_sim import add_arguments as train_sim_arguments

    p = sub.add_parser("train-sim", help="train on the simulated robot: learner, actor and "
                       "scripted human in one command")
    train_sim_arguments(p)
    p.set_defaults(func=cmd_train_sim)

    p = sub.add_parser("train-classifier", help="train the binary reward classifier on "
                       "labelled episodes")
    p.add_argument("--data", action="append", metavar="DIR",
                   help="episode dataset directory (repeatable)")
    p.add_argument("--like", metavar="FILE",
                   help="retrain the classifier in FILE: its data (plus any --data), labels, "
                   "cameras and their views, network and target precision")
    p.add_argument("--out", required=True, metavar="FILE", help="classifier file to write; "
                   "the report goes to <FILE stem>_report/ next to it")
    p.add_argument("--cameras", nargs="+", metavar="NAME",
                   help="cameras to use (default: all in the data)")
    p.add_argument("--labels", default="success", metavar="success|last:K",
                   help="'success': the per-step success labels; 'last:K': the last K frames "
                   "of successful episodes are positives (default: success)")
    p.add_argument("--encoder", choices=("conv", "resnet10"), default="conv")
    p.add_argument("--resnet-weights", metavar="FILE",
                   help="pretrained ResNet-10 weights (hilrl weights file)")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="keep the pretrained ResNet-10 fixed; train only pooling and head")
    p.add_argument("--pooling", default="auto",
                   choices=["auto", "spatial_embedding", "max_mean", "spatial_softmax"],
                   help="how the feature map becomes features: auto trains spatial_embedding "
                        "(where things are) and max_mean (whether they are in view) and keeps "
                        "the one with the lower held-out loss (default)")
    p.add_argument("--target-precision", type=_fraction, default=0.99,
                   help="pick the lowest threshold reaching this validation precision")
    p.add_argument("--val-fraction", type=_fraction, default=0.2,
                   help="fraction of episodes held out for validation")
    p.add_argument("--epochs", type=_positive_int, default=50, help="maximum epochs")
    p.add_argument("--minutes", type=_positive_float, default=None,
                   help="wall-clock budget (default: none; early stopping decides)")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(func=cmd_train_classifier)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(args.func, args)

