"""Training logs: JSON-lines files (the record `hilrl report` reads back) plus TensorBoard and,
optionally, Weights & Biases.

JSONL is the source of truth because it survives anything: a reader can open it while the
writer is appending (a half-written last line is skipped), and a writer killed mid-line leaves
a torn tail that the next writer cuts off before appending, so the file never holds a corrupt
line in the middle. Logging must never take training down, so :class:`MetricsWriter` turns
write failures (disk full) into a counted warning.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hilrl.storage.fsutil import write_all

log = logging.getLogger(__name__)

_TAIL_CHUNK = 4096


def _json_safe(value: Any) -> Any:
    """Plain Python values JSON can hold: numpy/jax scalars and arrays become numbers and lists,
    NaN and inf become None (JSON has no spelling for them that every reader accepts)."""
    if hasattr(value, "__array__") and not isinstance(value, str | bytes):
        import numpy as np

        value = np.asarray(value).tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _encode(record: Mapping[str, Any]) -> bytes:
    text = json.dumps(_json_safe(record), allow_nan=False, separators=(",", ":"))
    return text.encode() + b"\n"


def _drop_torn_tail(fd: int) -> None:
    """Cut a last line that has no newline: appending after it would glue the next record
    onto it and turn both into one corrupt line in the middle of the file."""
    size = end = os.fstat(fd).st_size
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        chunk = os.pread(fd, end - start, start)
        if end == size and chunk.endswith(b"\n"):
            return
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            return
        end = start
    if size:
        os.ftruncate(fd, 0)


def _open_append(path: Path) -> int:
    # read-write, not write-only: _drop_torn_tail has to read the tail
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _drop_torn_tail(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _append(fd: int, data: bytes) -> None:
    """Append one whole line or nothing: a short write (disk full) is rolled back so the file
    stays a sequence of complete records."""
    size = os.fstat(fd).st_size
    try:
        write_all(fd, [data])
    except OSError:
        try:
            os.ftruncate(fd, size)
        except OSError:
            pass
        raise


def append_jsonl(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append ``record`` to ``path`` as one JSON line, written straight to the OS (unbuffered,
    so a reader or a crash sees it at once). Creates the file and its directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_append(path)
    try:
        _append(fd, _encode(record))
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record in a JSON-lines file. A broken last line without a newline is a write in
    progress (or a writer killed mid-line) and is skipped; a broken line anywhere else is a
    ValueError naming the file and the line."""
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        except ValueError as e:
            if number == len(lines):  # no newline after it: torn
                break
            raise ValueError(f"{path}: line {number} is not valid JSON ({e})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records


class MetricsWriter:
    """Scalars to ``directory/metrics.jsonl``, TensorBoard event files under ``directory/tb/``
    and optionally Weights & Biases (``wandb`` = keyword arguments for ``wandb.init``).

    Write failures never raise out of :meth:`scalars`: the first is logged as a warning, all
    are counted in ``errors``, and the next call tries again (the disk may have freed up).
    """

    def __init__(self, directory: str | os.PathLike[str], *, tensorboard: bool = True,
                 wandb: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "metrics.jsonl"
        self.errors = 0
        self._fd: int | None = None
        self._closed = False
        self._tb = None
        self._wandb = None
        self.directory.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=str(self.directory / "tb"))
        if wandb is not None:
            try:
                import wandb as wandb_module
            except ImportError:
                raise ImportError("logging to Weights & Biases needs the wandb package: "
                                  "pip install 'hilrl[wandb]'") from None
            self._wandb = wandb_module.init(**wandb)

    def scalars(self, step: int, values: Mapping[str, float | None], **fields: Any) -> None:
        """Log ``values`` (tag -> number or None) at update ``step``. ``fields`` (e.g.
        ``env_steps``) go into the JSONL record only, not into the scalar plots."""
        if self._closed:
            raise RuntimeError("MetricsWriter is closed")
        step = int(step)
        record = {"time": time.time(), "step": step, **fields, **values}
        try:
            if self._fd is None:
                self._fd = _open_append(self.path)
            _append(self._fd, _encode(record))
        except OSError as e:
            self._close_file()  # reopen next time, which also cuts any torn tail
            self._failed(e)
        finite = {}
        for tag, value in values.items():
            value = _json_safe(value)
            if isinstance(value, int | float) and math.isfinite(value):
                finite[tag] = float(value)
        try:
            if self._tb is not None:
                for tag, value in finite.items():
                    self._tb.add_scalar(tag, value, step)
            if self._wandb is not None and finite:
                self._wandb.log(finite, step=step)
        except OSError as e:
            self._failed(e)

    def flush(self) -> None:
        # the JSONL file is written unbuffered; only the other sinks buffer
        try:
            if self._tb is not None:
                self._tb.flush()
        except OSError as e:
            self._failed(e)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_file()
        try:
            if self._tb is not None:
                self._tb.close()
            if self._wandb is not None:
                self._wandb.finish()
        except OSError as e:
            self._failed(e)

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def _failed(self, error: OSError) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("could not write training metrics to %s (%s); training continues, "
                        "later failures are only counted", self.directory, error)
