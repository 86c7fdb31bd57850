"""Training logs: the JSON-lines files and MetricsWriter's TensorBoard and failure handling."""

from __future__ import annotations

import logging
import math
import struct
from pathlib import Path

import numpy as np
import pytest

import hilrl.reporting.metrics
from hilrl.reporting.metrics import MetricsWriter, append_jsonl, read_jsonl


def test_jsonl_round_trip_with_numpy_and_nan(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "log.jsonl"
    append_jsonl(path, {"a": np.float32(1.5), "b": np.int64(7), "ok": np.bool_(True),
                        "nan": float("nan"), "inf": np.float64(np.inf), "arr": np.arange(3),
                        "nested": {"x": [np.float32(-np.inf), 2]}})
    append_jsonl(path, {"a": 2})
    assert read_jsonl(path) == [
        {"a": 1.5, "b": 7, "ok": True, "nan": None, "inf": None, "arr": [0, 1, 2],
         "nested": {"x": [None, 2]}},
        {"a": 2},
    ]
    assert path.read_text().count("\n") == 2


def test_torn_last_line_is_skipped_and_cut_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"i": 0})
    with path.open("ab") as f:
        f.write(b'{"i": 1, "tor')  # a writer killed mid-line
    assert read_jsonl(path) == [{"i": 0}]
    append_jsonl(path, {"i": 2})
    assert read_jsonl(path) == [{"i": 0}, {"i": 2}]


def test_corrupt_middle_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"i": 0}\n\n{"i": \n{"i": 2}\n')
    with pytest.raises(ValueError, match=r"log\.jsonl: line 3"):
        read_jsonl(path)
    path.write_text('{"i": 0}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        read_jsonl(path)


def _tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Parse TFRecord framing (length, crc, data, crc) and the Event protos inside."""
    from tensorboardX.proto.event_pb2 import Event

    files = list(directory.glob("events.out.tfevents.*"))
    assert files and all(f.stat().st_size > 0 for f in files)
    scalars: dict[str, list[tuple[int, float]]] = {}
    for file in files:
        data = file.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_writer_logs_jsonl_and_tensorboard(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path) as writer:
        writer.scalars(10, {"loss/critic": np.float32(0.5), "q/mean": None,
                            "temperature": float("nan")}, env_steps=100)
        writer.scalars(20, {"loss/critic": 0.25, "q/mean": 3.0}, env_steps=200)
        writer.flush()
    writer.close()  # idempotent
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["env_steps"], r["loss/critic"]) for r in records] == [
        (10, 100, 0.5), (20, 200, 0.25)]
    assert records[0]["q/mean"] is None and records[0]["temperature"] is None
    assert all(isinstance(r["time"], float) for r in records)
    assert writer.errors == 0
    scalars = _tensorboard_scalars(tmp_path / "tb")
    assert scalars["loss/critic"] == [(10, 0.5), (20, 0.25)]
    assert scalars["q/mean"] == [(20, 3.0)]
    assert "temperature" not in scalars  # neither None nor NaN reaches TensorBoard


def test_write_failure_is_counted_not_raised(tmp_path: Path, caplog) -> None:
    (tmp_path / "metrics.jsonl").mkdir()  # opening it for writing fails, even as root
    writer = MetricsWriter(tmp_path, tensorboard=False)
    with caplog.at_level(logging.WARNING, logger="hilrl.reporting.metrics"):
        writer.scalars(1, {"loss/actor": 1.0})
        writer.scalars(2, {"loss/actor": 2.0})
    assert writer.errors == 2
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    (tmp_path / "metrics.jsonl").rmdir()  # the problem goes away: logging resumes
    writer.scalars(3, {"loss/actor": 3.0})
    writer.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [3]


def test_short_write_is_rolled_back(tmp_path: Path, monkeypatch) -> None:
    real_write_all = hilrl.reporting.metrics.write_all

    def disk_full(fd, buffers):
        real_write_all(fd, [bytes(buffers[0])[:5]])
        raise OSError(28, "No space left on device")

    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.scalars(1, {"x": 1.0})
    monkeypatch.setattr(hilrl.reporting.metrics, "write_all", disk_full)
    writer.scalars(2, {"x": 2.0})
    monkeypatch.undo()
    writer.scalars(3, {"x": math.pi})
    writer.close()
    assert writer.errors == 1
    assert [r["x"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1.0, math.pi]
