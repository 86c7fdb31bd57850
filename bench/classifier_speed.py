"""The reward classifier: batch-1 latency on the actor's hot path, and how well it separates
success from failure on simulated episodes it never saw.

- ``classifier_latency_ms``: median latency of one ``RewardClassifier.probability()`` call
  (two 128x128 cameras, default conv config), each run the median of many calls.
- ``classifier_accuracy`` / ``classifier_precision``: train on episodes recorded by
  ``actor.labels.record_labels`` (scripted expert, sim success labels, colour/lighting
  jitter), then score *separate* test episodes recorded with another seed, at the threshold
  chosen on the validation split. Median over 3 training seeds.

    python bench/classifier_speed.py [--quick]

Full: 40 training + 10 test episodes at 128x128. --quick: 12 + 6 episodes at 64x64.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import figure, median_of, print_machine  # noqa: E402

from hilrl.learning.classifier import (  # noqa: E402
    ClassifierConfig,
    RewardClassifier,
    binary_metrics,
    load_labelled_frames,
    train_classifier,
)

CAMERAS = ("front", "wrist")


def latency_ms(calls: int) -> float:
    """Median wall time of one probability() call, two 128x128 cameras, after warm-up."""
    shapes = {cam: (128, 128, 3) for cam in CAMERAS}
    config = ClassifierConfig()
    params = RewardClassifier.init_params(config, shapes, jax.random.key(0))
    clf = RewardClassifier(config, shapes, params)
    rng = np.random.default_rng(0)
    frames = [{cam: rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for cam in CAMERAS}
              for _ in range(8)]
    for f in frames:
        clf.probability(f)  # compile
    times = []
    for i in range(calls):
        start = time.perf_counter()
        clf.probability(frames[i % len(frames)])
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def record(size: int, episodes: int, out: Path, seed: int) -> dict:
    from actor.labels import record_labels
    from hilrl.config import load_task

    task = load_task(None, [f"env.image_size=[{size},{size}]", "env.sim.jitter=true",
                            "device.expert.takeover=always", f"seed={seed}"])
    return record_labels(task, out, episodes, progress=False)


def accuracy_runs(size: int, train_eps: int, test_eps: int, minutes: float, repeats: int,
                  workdir: Path) -> tuple[float, float]:
    start = time.perf_counter()
    counts = record(size, train_eps, workdir / "train", seed=0)
    test_counts = record(size, test_eps, workdir / "test", seed=1)
    print(f"recorded {counts} for training, {test_counts} for test at {size}x{size} in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    test = load_labelled_frames(workdir / "test")
    accuracies, precisions = [], []
    for seed in range(repeats):
        result = train_classifier(workdir / "train", workdir / f"seed{seed}.classifier",
                                  seed=seed, minutes=minutes, progress=False)
        clf = result.classifier
        m = binary_metrics(clf.probabilities(test.images), test.labels, clf.threshold)
        v = result.metrics
        print(f"  seed {seed}: validation acc {v['accuracy']:.3f} prec {v['precision']:.3f} "
              f"(threshold {clf.threshold:.3f}, {v['epochs']} epochs, "
              f"{v['train_seconds']:.0f} s, {v['stop_reason']}); test acc "
              f"{m['accuracy']:.3f} prec {m['precision']:.3f} recall {m['recall']:.3f} "
              f"ROC-AUC {m['roc_auc']:.3f}", flush=True)
        accuracies.append(m["accuracy"])
        precisions.append(m["precision"])
    return statistics.median(accuracies), statistics.median(precisions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller episodes")
    args = parser.parse_args()
    print_machine()
    repeats, calls = (3, 200) if args.quick else (5, 1000)
    print(f"probability() batch 1, two 128x128 cameras, default conv config: median of "
          f"{calls} calls per run, median of {repeats} runs")
    latency = median_of(repeats, lambda: latency_ms(calls), "latency", "ms")

    try:
        import actor.labels  # noqa: F401
    except ImportError as e:
        print(f"classifier_accuracy/precision not measured: actor.labels is unavailable ({e})")
        figure("classifier_latency_ms", latency, "ms")
        return 1
    size, train_eps, test_eps, minutes = (64, 12, 6, 0.5) if args.quick else (128, 40, 10, 5.0)
    print(f"accuracy/precision on held-out sim episodes: {train_eps} training episodes, "
          f"{test_eps} test episodes, median of 3 training seeds")
    with tempfile.TemporaryDirectory(prefix="hilrl-classifier-bench-") as tmp:
        accuracy, precision = accuracy_runs(size, train_eps, test_eps, minutes, 3, Path(tmp))
    figure("classifier_latency_ms", latency, "ms")
    figure("classifier_accuracy", accuracy, "fraction")
    figure("classifier_precision", precision, "fraction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
