"""Coverage-guided fuzzing of the wire decoder and schema validator (hilrl/transport/wire.py).

Every input is one message: a container of frames (below) that the harness splits and hands
to ``decode``. A finding is any exception other than WireError, a WireError with a code the
module docstring does not list, an accepted message that breaks a documented rule or does
not survive an ``encode`` round trip, an input slower than libFuzzer's -timeout (a hang) or
a process growing past -rss_limit_mb. Findings are written to --findings and make the script
exit 1 (figures are printed first).

    python bench/fuzz_wire.py [--quick] [--inputs N] [--engine auto|atheris|hypothesis]

Engines: atheris (libFuzzer, coverage-guided over the instrumented wire module; seeded with
valid messages from ``encode`` and a dictionary of header tokens); without atheris, a
hypothesis-driven random mutation loop over the same harness and seeds (the script says
which engine ran). Full: 1M inputs (~3-6 min on 2 cores); --quick: 100k. The inputs are
split into 3 segments run one after the other in fresh child processes (different seeds,
one shared corpus, so coverage keeps growing); a child is needed anyway because
atheris.Fuzz() never returns.

Figures: ``wire_fuzz_inputs`` (total inputs run), ``wire_fuzz_crashes`` (findings),
``wire_fuzz_max_input_ms`` (median over the 3 segments of each one's slowest input: decode
plus the accept-path checks; the overall maximum is printed above it) and
``wire_fuzz_rss_growth_mb`` (median over segments of RSS at the end minus RSS after the
segment's first 10% of inputs, from /proc/self/statm).

Container: byte 0 holds options (bit 0: decode with the schema; bit 1: max_bytes 64 KiB
instead of the default; bit 2: frames as bytearray), then frames as [u16 little-endian
length][bytes], a short last frame taking what is left.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import figure, print_machine  # noqa: E402

FULL_INPUTS = 1_000_000
QUICK_INPUTS = 100_000
SEGMENTS = 3
MAX_LEN = 4096  # bytes per input: the seeds are ~0.3-1.5 kB
TIMEOUT_S = 10  # libFuzzer's per-input limit: beyond it the input is a hang (a finding)
RSS_LIMIT_MB = 2048
SMALL_MAX_BYTES = 64 << 10
MAX_SAVED = 50  # crash files kept per segment; the count goes on
CODES = frozenset(("frames", "header", "version", "type", "arrays", "size", "batch", "schema",
                   "meta", "value"))

# The transitions schema the seeds follow: state + two small uint8 cameras (tests use the same).
STATE, ACTION, HW = 5, 3, (6, 8, 3)
CAMS = ("front", "wrist")

# Set by _load() in the child: the (possibly instrumented) wire module and what uses it.
wire: Any = None
SCHEMA: Any = None


# ---------------------------------------------------------------------------- container


def join_frames(options: int, frames: list[bytes]) -> bytes:
    return bytes([options]) + b"".join(struct.pack("<H", len(f)) + bytes(f) for f in frames)


def split_frames(data: bytes) -> tuple[int, list[bytes]]:
    """Inverse of join_frames for any byte string (a fuzzer's input need not be well formed)."""
    if not data:
        return 0, []
    frames, i = [], 1
    while i < len(data):
        if i + 2 > len(data):
            frames.append(data[i:])
            break
        (length,) = struct.unpack_from("<H", data, i)
        frames.append(data[i + 2:i + 2 + length])
        i += 2 + length
    return data[0], frames


# ---------------------------------------------------------------------------- harness


def _load(instrument: bool) -> None:
    global wire, SCHEMA
    import msgpack  # noqa: F401 - imported first so only hilrl's own code is instrumented
    import numpy  # noqa: F401

    if instrument:
        import atheris

        with atheris.instrument_imports(include=["hilrl"]):
            import hilrl.transport.wire as module
    else:
        import hilrl.transport.wire as module
    wire = module
    SCHEMA = wire.Schema(
        obs={"state": ("float32", (STATE,)), "images": {c: ("uint8", HW) for c in CAMS}},
        action=("float32", (ACTION,)), extras={"grasp_penalty": ("float32", ())}, max_batch=8)


def seeds() -> list[bytes]:
    """Valid messages of every type, made by the project's encoder, as containers."""
    import numpy as np

    out = []
    for n, seed, how in [(1, 0, None), (2, 1, None), (3, 2, None), (2, 3, "png"),
                         (2, 4, "jpeg"), (1, 5, ("png", 0))]:
        rng = np.random.default_rng(seed)
        ends = np.zeros(n, bool)
        ends[-1] = seed % 2 == 1
        batch = {
            "obs": {"state": rng.standard_normal((n + 1, STATE)).astype(np.float32),
                    "images": {c: rng.integers(0, 256, (n + 1, *HW), dtype=np.uint8)
                               for c in CAMS}},
            "action": rng.uniform(-1, 1, (n, ACTION)).astype(np.float32),
            "reward": rng.standard_normal(n).astype(np.float32),
            "terminated": ends, "truncated": np.zeros(n, bool),
            "intervened": rng.random(n) < 0.5,
            "extras": {"grasp_penalty": rng.standard_normal(n).astype(np.float32)},
        }
        compress = {f"obs/images/{c}": how for c in CAMS} if how else None
        frames = wire.encode("transitions", actor="actor-0", session="s1", seq=10 * seed,
                             policy_version=seed, arrays=batch, compress=compress)
        out.append(join_frames(1 if seed % 3 else 3, frames))
    params = {"pi/w": np.ones((3, 2), np.float16), "pi/b": np.zeros(2, np.float64),
              "q/n": np.arange(4, dtype=np.int64), "q/m": np.array(7, np.int32)}
    others = [
        wire.encode("hello", actor="actor-0", session="s1", seq=5,
                    meta={"schema": SCHEMA.to_meta()}),
        wire.encode("hello_ok", actor="actor-0", session="s1", seq=7),
        wire.encode("ack", actor="actor-0", session="s1", seq=9),
        wire.encode("weights", policy_version=3, arrays=params, meta={"full": True}),
        wire.encode("weights_request", actor="a", session="s", policy_version=2),
        wire.encode("heartbeat", policy_version=-1, meta={"note": [1, 2.5, None, True]}),
        wire.encode("stats", actor="a", session="s", meta={"stats": {"return": 1.5, "n": 3}}),
        wire.encode("error", meta={"reason": "bad", "ref_seq": 4}),
    ]
    out += [join_frames(0, frames) for frames in others]
    return out


def dictionary() -> list[bytes]:
    """Tokens for libFuzzer's dictionary: msgpack strings of the header vocabulary, the int
    edges, and the image signatures the PNG/JPEG header parsers look for."""
    import msgpack

    words = ["type", "v", "actor", "session", "seq", "policy_version", "arrays", "meta",
             "name", "dtype", "shape", "encoding", "lengths", "schema", "obs", "action",
             "extras", "max_batch", "full", "stats", "reason", "raw", "png", "jpeg",
             "obs/state", "obs/images/front", "next_obs/state", "reward", "terminated",
             "truncated", "intervened", "extras/grasp_penalty", *wire.MESSAGE_TYPES,
             *wire.DTYPES]
    tokens = [msgpack.packb(w) for w in words]
    tokens += [msgpack.packb(i) for i in (-1, 2, (1 << 31), (1 << 62), (1 << 63) - 1,
                                          (1 << 64) - 1, -(1 << 63))]
    tokens += [msgpack.packb(math.nan), b"\x00\x00\xc0\x7f", b"\x89PNG\r\n\x1a\n", b"IHDR",
               b"\xff\xd8", b"\xff\xc0", b"\xff\xc2", b"\xff\xda", b"\xff\xd9"]
    return tokens


def _check_accepted(msg: Any, schema: Any, max_bytes: int) -> None:
    """What decode promises about a message it accepts, then the encode round trip."""
    import numpy as np

    assert msg.type in wire.MESSAGE_TYPES, msg.type
    assert msg.nbytes <= max_bytes, (msg.nbytes, max_bytes)
    for name, arr in msg.arrays.items():
        assert not arr.flags.writeable and arr.dtype.name in wire.DTYPES, name
        if arr.dtype.kind == "f":
            assert np.isfinite(arr).all(), f"non-finite value accepted in {name!r}"
        elif arr.dtype.kind == "b":
            assert (arr.view(np.uint8) <= 1).all(), f"bool byte > 1 accepted in {name!r}"
    if msg.type == "transitions":
        n = msg.batch_size
        assert n >= 1
        if schema is not None:
            assert schema.check(msg.arrays) == n <= schema.max_batch
    again = wire.encode(msg.type, actor=msg.actor, session=msg.session, seq=msg.seq,
                        policy_version=msg.policy_version, arrays=msg.arrays, meta=msg.meta)
    back = wire.decode(again, schema=schema)
    assert (back.type, back.actor, back.session, back.seq, back.policy_version, back.meta) == (
        msg.type, msg.actor, msg.session, msg.seq, msg.policy_version, msg.meta)
    assert list(back.arrays) == list(msg.arrays)
    for name, arr in msg.arrays.items():
        other = back.arrays[name]
        assert (other.dtype, other.shape) == (arr.dtype, arr.shape), name
        assert other.tobytes() == arr.tobytes(), f"{name!r} changed in the round trip"


def one_input(data: bytes) -> str:
    """Run one input; returns "accepted" or the WireError code; raises on a finding."""
    options, frames = split_frames(data)
    schema = SCHEMA if options & 1 else None
    max_bytes = SMALL_MAX_BYTES if options & 2 else wire.DEFAULT_MAX_BYTES
    given: list[Any] = [bytearray(f) for f in frames] if options & 4 else frames
    try:
        msg = wire.decode(given, max_bytes=max_bytes, schema=schema)
    except wire.WireError as e:
        if e.code not in CODES or not str(e):
            raise AssertionError(f"WireError with undocumented code {e.code!r}: {e}") from e
        return e.code
    _check_accepted(msg, schema, max_bytes)
    return "accepted"


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


class Run:
    """Counts, timing and memory of one child's inputs; writes them to a JSON report."""

    def __init__(self, target: int, report: Path, findings: Path) -> None:
        self.target, self.report, self.findings = target, report, findings
        self.inputs = self.crashes = 0
        self.max_ms, self.slowest = 0.0, b""
        self.rss_start: float | None = None
        self.outcomes: dict[str, int] = {}
        self.t0 = time.perf_counter()
        self.every = max(1, target // 10)

    def __call__(self, data: bytes) -> None:
        start = time.perf_counter()
        try:
            outcome = one_input(data)
        except Exception as e:  # noqa: BLE001 - anything but a WireError is a finding
            outcome = "FINDING"
            self.crash(data, e)
        ms = 1000 * (time.perf_counter() - start)
        self.inputs += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if ms > self.max_ms:
            self.max_ms, self.slowest = ms, data
        if self.inputs == math.ceil(0.1 * self.target):
            self.rss_start = rss_mb()
        if self.inputs % self.every == 0 or self.inputs == self.target:
            rate = self.inputs / (time.perf_counter() - self.t0)
            print(f"  {self.inputs}/{self.target} inputs, {rate:.0f}/s, rss {rss_mb():.0f} MB, "
                  f"findings {self.crashes}", flush=True)
        # atheris.Fuzz() exits the process from C without running atexit handlers, so the
        # report is written as we go and once more at the last input.
        if self.inputs % 1000 == 0 or self.inputs >= self.target:
            self.write()

    def crash(self, data: bytes, error: BaseException) -> None:
        self.crashes += 1
        if self.crashes > MAX_SAVED:
            return
        self.findings.mkdir(parents=True, exist_ok=True)
        path = self.findings / f"finding-{hashlib.sha1(data).hexdigest()[:16]}"
        path.with_suffix(".bin").write_bytes(data)
        options, frames = split_frames(data)
        text = "".join(traceback.format_exception(error))
        path.with_suffix(".txt").write_text(
            f"options {options}, frames {[bytes(f) for f in frames]!r}\n\n{text}")
        print(f"FINDING {type(error).__name__}: {error} -> {path}.bin", flush=True)

    def write(self) -> None:
        end = rss_mb()
        growth = 0.0 if self.rss_start is None else end - self.rss_start
        state = {"inputs": self.inputs, "crashes": self.crashes, "max_ms": self.max_ms,
                 "slowest": self.slowest.hex(), "rss_start_mb": self.rss_start,
                 "rss_end_mb": end, "rss_growth_mb": growth, "outcomes": self.outcomes,
                 "seconds": time.perf_counter() - self.t0}
        tmp = self.report.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.report)


def _warm_up(corpus: list[bytes]) -> None:
    # The first compressed array imports OpenCV (~0.3 s): not an input's own cost.
    for data in corpus:
        one_input(data)


def child_atheris(args: argparse.Namespace) -> None:
    import atheris

    _load(instrument=True)
    corpus = seeds()
    _warm_up(corpus)
    corpus_dir = Path(args.workdir) / "corpus"
    if not corpus_dir.exists():  # later segments continue from what earlier ones found
        corpus_dir.mkdir(parents=True)
        for i, data in enumerate(corpus):
            (corpus_dir / f"seed-{i:02d}").write_bytes(data)
    dict_path = Path(args.workdir) / "wire.dict"
    dict_path.write_text("".join(
        '"' + "".join(f"\\x{b:02x}" for b in token) + '"\n' for token in dictionary()))
    args.findings.mkdir(parents=True, exist_ok=True)  # libFuzzer's artifact prefix
    run = Run(args.inputs, args.report, args.findings)
    atheris.Setup([sys.argv[0], f"-runs={args.inputs}", f"-seed={args.seed}",
                   f"-max_len={MAX_LEN}", f"-timeout={TIMEOUT_S}",
                   f"-rss_limit_mb={RSS_LIMIT_MB}", f"-artifact_prefix={args.findings}/",
                   f"-dict={dict_path}", "-print_final_stats=1", str(corpus_dir)], run)
    atheris.Fuzz()  # does not return: libFuzzer exits when -runs is reached


def child_hypothesis(args: argparse.Namespace) -> None:
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st

    _load(instrument=False)
    corpus = seeds()
    _warm_up(corpus)
    run = Run(args.inputs, args.report, args.findings)

    @seed(args.seed)
    @settings(max_examples=args.inputs, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        if data.draw(st.integers(0, 9)) == 0:
            run(data.draw(st.binary(max_size=512)))
            return
        blob = bytearray(data.draw(st.sampled_from(corpus)))
        for _ in range(data.draw(st.sampled_from([1, 1, 2, 3, 4, 6]))):
            pos = data.draw(st.integers(0, len(blob)))
            op = data.draw(st.sampled_from(["set", "insert", "delete", "splice", "int"]))
            if op == "set" and pos < len(blob):
                blob[pos] = data.draw(st.integers(0, 255))
            elif op == "insert":
                blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
            elif op == "delete":
                del blob[pos:pos + data.draw(st.integers(1, 32))]
            elif op == "splice":  # a piece of another valid message
                other = data.draw(st.sampled_from(corpus))
                start = data.draw(st.integers(0, len(other)))
                blob[pos:pos] = other[start:start + data.draw(st.integers(1, 64))]
            elif op == "int":  # an interesting msgpack value over whatever is there
                blob[pos:pos + 1] = data.draw(st.sampled_from(dictionary()))
        run(bytes(blob[:MAX_LEN]))

    fuzz()
    run.write()


# ---------------------------------------------------------------------------- parent


def atheris_status() -> tuple[bool, str]:
    try:
        import atheris  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any failure to load means: use the fallback
        return False, f"{type(e).__name__}: {e}"
    from importlib.metadata import version

    return True, version("atheris")


def run_segment(engine: str, inputs: int, seed: int, workdir: Path, findings: Path
                ) -> tuple[dict[str, Any], int, str]:
    report = workdir / f"report-{seed}.json"
    log = workdir / f"engine-{seed}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", engine,
           "--inputs", str(inputs), "--seed", str(seed), "--workdir", str(workdir),
           "--report", str(report), "--findings", str(findings)]
    limit = 600 + inputs * 0.05  # far beyond any sane rate: only a stuck child reaches it
    with open(log, "w", encoding="utf-8") as err:
        try:
            code = subprocess.run(cmd, stderr=err, timeout=limit, check=False).returncode
        except subprocess.TimeoutExpired:
            code = -1
    text = log.read_text(encoding="utf-8", errors="replace")
    state = json.loads(report.read_text()) if report.exists() else {
        "inputs": 0, "crashes": 0, "max_ms": 0.0, "rss_growth_mb": 0.0, "outcomes": {}}
    return state, code, text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_INPUTS} inputs")
    parser.add_argument("--inputs", type=int, help=f"default {FULL_INPUTS} ({QUICK_INPUTS} "
                        "with --quick)")
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--seed", type=int, default=1, help="first segment's seed")
    parser.add_argument("--findings", type=Path,
                        default=Path(tempfile.gettempdir()) / "hilrl-fuzz-wire-findings")
    # Internal: the parent starts itself again as the fuzzing child.
    parser.add_argument("--child", choices=("atheris", "hypothesis"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--replay", type=Path, help="run one saved input (a finding's .bin) "
                        "through the harness, uninstrumented, and show what it raises")
    args = parser.parse_args()
    if args.replay:
        _load(instrument=False)
        print(one_input(args.replay.read_bytes()))  # a finding raises here, with traceback
        return 0
    if args.child:
        (child_atheris if args.child == "atheris" else child_hypothesis)(args)
        return 0

    print_machine()
    total = args.inputs or (QUICK_INPUTS if args.quick else FULL_INPUTS)
    have, status = atheris_status()
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if have else "hypothesis"
    if engine == "atheris" and not have:
        print(f"atheris cannot be imported ({status}); install it with "
              "pip install 'atheris>=3.0' or run with --engine hypothesis", flush=True)
        return 2
    if engine == "atheris":
        print(f"engine: atheris {status} (libFuzzer, coverage-guided, instrumented "
              "hilrl.transport.wire)", flush=True)
    else:
        from importlib.metadata import version

        why = "requested" if args.engine == "hypothesis" else f"atheris unavailable: {status}"
        print(f"engine: hypothesis {version('hypothesis')} random mutation loop, NOT "
              f"coverage-guided ({why})", flush=True)
    findings = args.findings / time.strftime("%Y%m%d-%H%M%S")
    per = [total // SEGMENTS + (i < total % SEGMENTS) for i in range(SEGMENTS)]
    results = []
    with tempfile.TemporaryDirectory(prefix="hilrl-fuzz-wire-") as tmp:
        for i, inputs in enumerate(per):
            seed = args.seed + i
            print(f"segment {i + 1}/{SEGMENTS}: {inputs} inputs, seed {seed}", flush=True)
            state, code, log = run_segment(engine, inputs, seed, Path(tmp), findings)
            if code != 0:  # libFuzzer stopped: a hang, out-of-memory or a native crash
                tail = "\n".join(log.strip().splitlines()[-25:])
                print(f"FINDING: the fuzzing child exited with code {code} after "
                      f"{state['inputs']} inputs; engine log tail:\n{tail}", flush=True)
                state["crashes"] += 1
                if "timeout" in log.lower() or code == -1:
                    state["max_ms"] = max(state["max_ms"], 1000.0 * TIMEOUT_S)
            for line in log.splitlines():
                if line.startswith(("Done ", "stat::number_of_executed_units",
                                    "stat::peak_rss_mb", "stat::new_units_added")):
                    print(f"  {line}", flush=True)
            print(f"  inputs {state['inputs']}, outcomes {state['outcomes']}, slowest "
                  f"{state['max_ms']:.2f} ms, rss growth {state['rss_growth_mb']:.1f} MB "
                  f"({state.get('rss_start_mb') or 0:.0f} -> "
                  f"{state.get('rss_end_mb') or 0:.0f} MB)", flush=True)
            results.append(state)

    if findings.is_dir() and not any(findings.iterdir()):
        findings.rmdir()  # libFuzzer needed it as artifact prefix; nothing was found
    inputs = sum(r["inputs"] for r in results)
    crashes = sum(r["crashes"] for r in results)
    slowest = max(results, key=lambda r: r["max_ms"])
    print(f"slowest single input overall: {slowest['max_ms']:.2f} ms "
          f"(container hex {slowest.get('slowest', '')[:160]}...)", flush=True)
    if crashes:
        print(f"{crashes} finding(s); inputs and tracebacks in {findings}", flush=True)
    print(f"figures: inputs and crashes summed over {SEGMENTS} segments; max_input_ms and "
          "rss_growth_mb are the median over segments", flush=True)
    figure("wire_fuzz_inputs", inputs, "count")
    figure("wire_fuzz_crashes", crashes, "count")
    figure("wire_fuzz_max_input_ms", statistics.median(r["max_ms"] for r in results), "ms")
    figure("wire_fuzz_rss_growth_mb", statistics.median(r["rss_growth_mb"] for r in results),
           "MB")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
