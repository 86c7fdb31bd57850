"""Transport speed on loopback (hilrl.transport: ActorClient -> LearnerServer and back).

* transitions_per_s, transport_mb_per_s: one actor process pushes the steps of one endless
  episode (two 128x128x3 uint8 cameras + a 10-float state per observation, ~98 KB) as fast
  as send_transition accepts them to a learner process; timed from the first send to the
  ack of the last, i.e. including the learner's durable log (fsynced) and acks. A batch of N
  steps carries N + 1 observations (wire protocol 2: next_obs is the next row), so the wire
  and the disk take ~98 KB x (N + 1) / N per transition; on a slow disk that, not the
  transport, is the limit. transport_mb_per_s counts those bytes.
  transitions_per_s.log_tmpfs is the same with the log on /dev/shm.
* transitions_per_s.png / .jpeg90: the same (log on disk) with both cameras compressed by
  the actor (ActorClient(compress=...): PNG level 1, lossless; JPEG quality 90) and
  decoded by the learner. Random images do not compress (PNG makes them slightly bigger),
  so these runs use a smooth synthetic source instead: colour gradients plus a moving
  square, distinct per step (a real camera lies between the two). bytes_per_transition.raw
  / .png / .jpeg90: wire bytes per transition of that source in full batches of N = 32.
* weights_latency_ms.5mb / .50mb: publish_weights in the learner -> the actor's
  latest_weights() returns that version (server and client in one process, same clock).
* actor_send_p99_ms: time inside send_transition (image transitions, 50 calls/s) while the
  actor's network is busy: its own images go out (~10 MB/s) and the learner publishes
  5 MB of weights every 0.2 s to it (25 MB/s in, decoded by the client's thread).
  actor_send_p99_ms.with_flood: the same while a second actor process floods the learner
  with images (on a 2-core machine, three busy processes then share the cores).
  actor_send_p99_ms.durable: the first, with the actor durable (``actor.durable``): every
  transition written to the spill directory and fsynced inside send_transition.

Each figure is the median of several runs.

    python bench/transport_speed.py [--quick] [--log-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import figure, median_of, print_machine  # noqa: E402

from hilrl.transport.actor_client import ActorClient  # noqa: E402
from hilrl.transport.learner_server import LearnerServer  # noqa: E402
from hilrl.transport.outbox import OutboxFull  # noqa: E402
from hilrl.transport.wire import Schema, encode  # noqa: E402

CAMERAS = ("front", "wrist")
STATE = 10
SCHEMA = Schema({"state": ("float32", (STATE,)),
                 **{f"images/{c}": ("uint8", (128, 128, 3)) for c in CAMERAS}},
                ("float32", (7,)), max_batch=64)
BATCH = 32


def make_transitions(k: int, seed: int = 0) -> list[dict]:
    """k distinct image transitions forming a cycle (transition j's next_obs is transition
    j + 1's obs, the last one's is the first one's), so sent round-robin they are the steps
    of one endless episode and fill whole batches; distinct, so nothing is cached by
    accident."""
    rng = np.random.default_rng(seed)

    def obs() -> dict:
        return {"state": rng.standard_normal(STATE).astype(np.float32),
                "images": {c: rng.integers(0, 256, (128, 128, 3), np.uint8) for c in CAMERAS}}

    frames = [obs() for _ in range(k)]
    return cycle(frames)


def make_smooth_transitions(k: int) -> list[dict]:
    """Like make_transitions, with compressible images: gradients + a moving square."""
    y, x = np.mgrid[:128, :128]

    def image(j: int, cam: int) -> np.ndarray:
        img = np.stack([x * 2, y * 2, (x + y + 16 * j + 64 * cam) % 256], -1).astype(np.uint8)
        top, left = 20 + 5 * j % 80, 10 + (7 * j + 40 * cam) % 90
        img[top:top + 24, left:left + 24] = (230, 40, 30)
        return img

    rng = np.random.default_rng(0)
    frames = [{"state": rng.standard_normal(STATE).astype(np.float32),
               "images": {c: image(j, i) for i, c in enumerate(CAMERAS)}} for j in range(k)]
    return cycle(frames)


def cycle(frames: list[dict]) -> list[dict]:
    k = len(frames)
    return [{"obs": frames[j], "next_obs": frames[(j + 1) % k],
             "action": np.zeros(7, np.float32), "reward": 0.0, "terminated": False,
             "truncated": False, "intervened": False}
            for j in range(k)]


OBS_BYTES = sum(a.nbytes for a in (
    np.zeros(STATE, np.float32), *(np.zeros((128, 128, 3), np.uint8) for _ in CAMERAS)))
# On the wire per transition in full batches: (BATCH + 1) / BATCH observations + the rest.
TRANSITION_BYTES = OBS_BYTES * (BATCH + 1) / BATCH + 7 * 4 + 4 + 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- child roles


def learner_role(log_dir: str, port: int, wport: int, publish_mb: float) -> None:
    server = LearnerServer(f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{wport}",
                           log_dir=log_dir, schema=SCHEMA).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    params = {"w": np.ones(int(publish_mb * (1 << 20)) // 4, np.float32)}
    print("ready", flush=True)
    version, next_publish = 0, time.monotonic()
    deadline = time.monotonic() + 600
    while not stop.is_set() and time.monotonic() < deadline:
        server.drain()
        if publish_mb and time.monotonic() >= next_publish:
            server.publish_weights(params, version, full=True)
            version += 1
            next_publish = time.monotonic() + 0.2
        time.sleep(0.005)
    server.close()


def flood_role(port: int, wport: int, spill: str, seconds: float) -> None:
    client = ActorClient("flood", f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{wport}",
                         SCHEMA, spill, batch_size=BATCH)
    items = make_transitions(16, seed=1)
    print("ready", flush=True)
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        client.send_transition(items[i % len(items)])
        i += 1
        if client.outbox.stats()["pending_messages"] > 64:
            time.sleep(0.01)  # keep the outbox from spilling: this is load, not a test
    client.close(timeout=2)


class Child:
    def __init__(self, *args: object) -> None:
        self.p = subprocess.Popen([sys.executable, __file__, *map(str, args)],
                                  stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if select.select([self.p.stdout], [], [], 0.1)[0]:
                if self.p.stdout.readline().strip() == "ready":
                    return
        self.close()
        raise RuntimeError(f"child {args} did not start")

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.p.stdout.close()


# ---------------------------------------------------------------------------- measurements


def throughput(tmp: Path, n: int, items: list[dict], log_root: Path | None = None,
               compress: Any = None) -> float:
    port, wport = free_port(), free_port()
    log_dir = (log_root or tmp) / f"hilrl-bench-log-{os.getpid()}-{time.monotonic_ns()}"
    learner = Child("learner", log_dir, port, wport, 0)
    client = ActorClient("bench", f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{wport}",
                         SCHEMA, str(tmp / f"spill-{time.monotonic_ns()}"), batch_size=BATCH,
                         max_bytes_in_memory=1 << 30, compress=compress)
    try:
        deadline = time.monotonic() + 10
        while not client.learner_alive and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.perf_counter()
        for i in range(n):
            while True:
                try:
                    client.send_transition(items[i % len(items)])
                    break
                except OutboxFull:  # compressing: the encoder thread is behind; wait
                    time.sleep(0.001)
        if not client.wait_delivered(120):
            raise RuntimeError("not everything was acked within 120 s")
        return n / (time.perf_counter() - t0)
    finally:
        client.close()
        learner.close()
        shutil.rmtree(log_dir, ignore_errors=True)


def bytes_per_transition(items: list[dict], compress: Any) -> float:
    """Wire bytes per transition of a full batch of N = BATCH steps of ``items``."""
    k = len(items)
    obs = [items[j % k]["obs"] for j in range(BATCH + 1)]
    batch = {"obs": {"state": np.stack([o["state"] for o in obs]),
                     "images": {c: np.stack([o["images"][c] for o in obs]) for c in CAMERAS}},
             "action": np.zeros((BATCH, 7), np.float32), "reward": np.zeros(BATCH, np.float32),
             **{f: np.zeros(BATCH, bool) for f in ("terminated", "truncated", "intervened")}}
    how = {f"obs/images/{c}": compress for c in CAMERAS}
    frames = encode("transitions", actor="a", session="s", arrays=batch, compress=how)
    return sum(memoryview(f).nbytes for f in frames) / BATCH


def weights_latency(tmp: Path, mbytes: float, repeats: int) -> list[float]:
    server = LearnerServer("tcp://127.0.0.1:0", "tcp://127.0.0.1:0",
                           log_dir=str(tmp / f"wlog-{time.monotonic_ns()}"),
                           schema=SCHEMA).start()
    client = ActorClient("w", server.endpoint, server.weights_endpoint, SCHEMA,
                         str(tmp / f"wspill-{time.monotonic_ns()}"))
    leaves = 20  # a network has many leaves; 20 equal ones add up to the size
    size = int(mbytes * 1e6) // 4 // leaves
    rng = np.random.default_rng(0)
    params = {f"layer{i}": {"kernel": rng.standard_normal(size).astype(np.float32)}
              for i in range(leaves)}
    out = []
    try:
        server.publish_weights(params, 0)
        deadline = time.monotonic() + 10  # the first set may need a request (slow joiner)
        while client.latest_weights() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        for version in range(1, repeats + 1):
            time.sleep(0.2)
            t0 = time.perf_counter()
            server.publish_weights(params, version)
            while (w := client.latest_weights()) is None or w[0] < version:
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError("weights did not arrive within 10 s")
                time.sleep(0.0002)
            out.append((time.perf_counter() - t0) * 1e3)
    finally:
        client.close()
        server.close()
    return out


def send_p99(tmp: Path, seconds: float, items: list[dict], with_flood: bool,
             durable: bool = False) -> float:
    port, wport = free_port(), free_port()
    log_dir = tmp / f"plog-{time.monotonic_ns()}"
    learner = Child("learner", log_dir, port, wport, 5)
    flood = (Child("flood", port, wport, tmp / f"fspill-{time.monotonic_ns()}", seconds + 3)
             if with_flood else None)
    client = ActorClient("ctl", f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{wport}", SCHEMA,
                         str(tmp / f"pspill-{time.monotonic_ns()}"), batch_size=BATCH,
                         durable=durable)
    times = []
    try:
        time.sleep(0.5)
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            t0 = time.perf_counter()
            client.send_transition(items[i % len(items)])
            times.append(time.perf_counter() - t0)
            i += 1
            time.sleep(0.02)
        if client.stats().get("weights_received", 0) == 0:
            print("  (warning: no weights arrived during the run)")
    finally:
        client.close()
        if flood is not None:
            flood.close()
        learner.close()
        shutil.rmtree(log_dir, ignore_errors=True)
    return float(np.percentile(np.array(times) * 1e3, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer transitions and repeats")
    parser.add_argument("--log-dir", default=None,
                        help="where the learner's durable log goes (default: a temp dir)")
    args = parser.parse_args()
    print_machine()
    repeats = 3 if args.quick else 5
    n = 3000 if args.quick else 10000
    tmp = Path(tempfile.mkdtemp(prefix="hilrl-bench-transport-", dir=args.log_dir))
    items = make_transitions(16)
    try:
        print(f"throughput: {n} transitions of {TRANSITION_BYTES / 1e3:.0f} kB on the wire "
              f"(one observation of 2x128x128x3 images + state, (N + 1) / N of them per "
              f"step), batches of N = {BATCH}; log in {tmp}")
        rate = median_of(repeats, lambda: throughput(tmp, n, items), "transitions/s", "1/s")
        shm = Path("/dev/shm")
        rate_shm = None
        if shm.is_dir() and os.access(shm, os.W_OK):
            print("the same with the learner's log on tmpfs (/dev/shm): the transport without "
                  "the disk")
            rate_shm = median_of(repeats, lambda: throughput(tmp, n, items, shm),
                                 "transitions/s (log on tmpfs)", "1/s")
        smooth = make_smooth_transitions(16)
        compressed, sizes = {}, {}
        for label, how in (("png", "png"), ("jpeg90", ("jpeg", 90))):
            sizes[label] = bytes_per_transition(smooth, how)
            print(f"throughput with {label} compression: smooth synthetic images (gradients + "
                  f"a moving square), {sizes[label] / 1e3:.1f} kB per transition on the wire")
            compressed[label] = median_of(
                repeats, lambda how=how: throughput(tmp, n, smooth, compress=how),
                f"transitions/s ({label})", "1/s")
        sizes["raw"] = bytes_per_transition(smooth, "raw")
        wl = {}
        for mb in (5, 50):
            print(f"weights latency, {mb} MB in 20 leaves (median of {repeats + 2} per run)")
            wl[mb] = median_of(repeats, lambda mb=mb: float(np.median(
                weights_latency(tmp, mb, repeats + 2))), f"weights {mb} MB", "ms")
        seconds = 4.0 if args.quick else 10.0
        print(f"send_transition p99 over {seconds:.0f} s at 50 calls/s of image transitions "
              "while receiving 5 MB weights every 0.2 s")
        p99 = median_of(repeats, lambda: send_p99(tmp, seconds, items, False), "send p99",
                        "ms")
        print("the same with a second actor process flooding the learner with images (three "
              "busy processes on this machine's cores)")
        p99f = median_of(repeats, lambda: send_p99(tmp, seconds, items, True),
                         "send p99 with flood", "ms")
        print("the same as the first, the actor durable (actor.durable: each transition "
              "written and fsynced inside send_transition)")
        p99d = median_of(repeats, lambda: send_p99(tmp, seconds, items, False, durable=True),
                         "send p99 durable", "ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("(each figure: median over the runs above)")
    figure("transitions_per_s", rate, "transitions/s")
    figure("transport_mb_per_s", rate * TRANSITION_BYTES / 1e6, "MB/s")
    if rate_shm is not None:
        figure("transitions_per_s.log_tmpfs", rate_shm, "transitions/s")
    for label, value in compressed.items():
        figure(f"transitions_per_s.{label}", value, "transitions/s")
    for label in ("raw", "png", "jpeg90"):
        figure(f"bytes_per_transition.{label}", sizes[label], "bytes")
    figure("weights_latency_ms.5mb", wl[5], "ms")
    figure("weights_latency_ms.50mb", wl[50], "ms")
    figure("actor_send_p99_ms", p99, "ms")
    figure("actor_send_p99_ms.with_flood", p99f, "ms")
    figure("actor_send_p99_ms.durable", p99d, "ms")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "learner":
        learner_role(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "flood":
        flood_role(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    else:
        main()
