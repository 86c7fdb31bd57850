"""Threaded cameras: OpenCV on a generated video file, the LatestFrameCamera contract, and
RealSense against a stand-in pyrealsense2 module (no hardware anywhere)."""

from __future__ import annotations

import sys
import threading
import time
import types

import cv2
import numpy as np
import pytest

from hilrl.interfaces import CameraError
from robot_drivers.cameras.latest import LatestFrameCamera
from robot_drivers.cameras.opencv import OpenCVCamera
from robot_drivers.cameras.realsense import RealSenseCamera

H, W, N_FRAMES, FILE_FPS = 48, 64, 20, 20.0
STEP = 12  # green level per frame index: survives JPEG with a wide margin


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    """Frame i is uniform BGR (0, STEP * i, 255): red at i = 0, index readable from green."""
    path = str(tmp_path_factory.mktemp("video") / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), FILE_FPS, (W, H))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG .avi"
    for i in range(N_FRAMES):
        writer.write(np.full((H, W, 3), (0, STEP * i, 255), np.uint8))
    writer.release()
    return path


def frame_index(frame: np.ndarray) -> int:
    return int(round(float(frame[..., 1].mean()) / STEP))


def read_until(camera, predicate, timeout: float):
    """Poll read() until predicate(frame) holds; returns that frame."""
    deadline = time.monotonic() + timeout
    while True:
        frame = camera.read()
        if predicate(frame):
            return frame
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.01)


def test_file_frames_are_rgb_of_the_file_size(video):
    with OpenCVCamera("front", video, size=(H, W), stale_after=0.5) as cam:
        frame = cam.read()
        assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
        assert frame_index(frame) <= 3  # paced: the file does not race to its end
        r, g, b = (float(frame[..., c].mean()) for c in range(3))
        assert r > 200 and b < 40, f"frame 0 is red in the file, read back as rgb={r, g, b}"


def test_file_plays_at_its_rate_then_goes_stale(video):
    stale_after = 0.3
    with OpenCVCamera("front", video, size=(H, W), stale_after=stale_after) as cam:
        seen = []
        start = time.monotonic()
        last_new = start
        while True:
            try:
                frame = cam.read()
            except CameraError as e:
                assert "stale" in str(e) and "front" in str(e)
                break
            now = time.monotonic()
            if not seen or frame_index(frame) != seen[-1]:
                seen.append(frame_index(frame))
                last_new = now
            assert now - start < N_FRAMES / FILE_FPS + 2.0, "never went stale"
            time.sleep(1.0 / (2 * FILE_FPS))
        elapsed = time.monotonic() - start
        assert seen == sorted(seen) and seen[-1] == N_FRAMES - 1
        assert len(seen) >= N_FRAMES // 2  # successive reads show successive frames
        assert elapsed >= 0.7 * N_FRAMES / FILE_FPS  # played at the file's rate, not at once
        assert time.monotonic() - last_new < stale_after + 0.5


def test_wrong_size_says_how_to_fix(video):
    with OpenCVCamera("wrist", video, size=(32, 32)) as cam:
        with pytest.raises(CameraError) as err:
            cam.read()
    msg = str(err.value)
    assert "64x48" in msg and "env.image_size" in msg and "[48, 64]" in msg
    assert "crop" in msg


@pytest.mark.parametrize("source", ["/nonexistent/clip.avi", "/dev/video_hilrl_missing", None])
def test_unopenable_source(source):
    with pytest.raises(CameraError, match="front") as err:
        OpenCVCamera("front", source, size=(H, W))
    assert str(source) in str(err.value) and "source" in str(err.value)


def test_close_stops_thread_and_is_idempotent(video):
    cam = OpenCVCamera("front", video, size=(H, W))
    cam.read()
    thread = cam._thread
    assert thread is not None and thread.is_alive()
    cam.close()
    assert not thread.is_alive()
    cam.close()
    with pytest.raises(CameraError, match="closed"):
        cam.read()


class _Scripted(LatestFrameCamera):
    def __init__(self, grab, **kw) -> None:
        super().__init__("fake", "script", size=(4, 4), **kw)
        self._script = grab
        self.released = threading.Event()
        self._start()

    def _grab(self):
        return self._script()

    def _release(self) -> None:
        self.released.set()


def test_grab_error_reaches_read():
    def boom():
        raise OSError("sensor on fire")

    cam = _Scripted(boom)
    with pytest.raises(CameraError, match="sensor on fire"):
        cam.read()
    assert cam.released.wait(1.0)  # the thread released the device on its way out
    cam.close()


def test_no_first_frame_raises_after_stale_after():
    def nothing():
        time.sleep(0.01)

    cam = _Scripted(nothing, stale_after=0.2)
    start = time.monotonic()
    with pytest.raises(CameraError, match="no frame within"):
        cam.read()
    assert time.monotonic() - start < 1.0
    cam.close()


def test_read_returns_a_copy():
    cam = _Scripted(lambda: (time.sleep(0.01), np.zeros((4, 4, 3), np.uint8))[1])
    a = cam.read()
    a[:] = 255
    assert cam.read().max() == 0
    cam.close()


# --- RealSense ------------------------------------------------------------------------------

def test_realsense_without_pyrealsense2(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrealsense2", None)  # makes the import fail
    with pytest.raises(CameraError, match=r"pip install 'hilrl\[realsense\]'"):
        RealSenseCamera("front", None, size=(H, W))


def fake_rs(serials: list[str]) -> types.ModuleType:
    """The slice of pyrealsense2's API the driver uses, shaped like the real bindings."""
    rs = types.ModuleType("pyrealsense2")
    rs.stream = types.SimpleNamespace(color="color")
    rs.format = types.SimpleNamespace(rgb8="rgb8")
    rs.option = types.SimpleNamespace(enable_auto_exposure="ae", exposure="exposure")
    rs.camera_info = types.SimpleNamespace(serial_number="serial_number")
    rs.options_set = {}
    rs.stopped = threading.Event()

    class Device:
        def __init__(self, serial):
            self.serial = serial

        def get_info(self, key):
            assert key == "serial_number"
            return self.serial

        def first_color_sensor(self):
            return Sensor()

    class Sensor:
        def supports(self, option):
            return True

        def set_option(self, option, value):
            rs.options_set[option] = value

        def get_option_range(self, option):
            return types.SimpleNamespace(min=1.0, max=10000.0)

    class Config:
        def enable_device(self, serial):
            self.serial = serial

        def enable_stream(self, stream, width, height, fmt, fps):
            assert (stream, fmt) == ("color", "rgb8")
            self.shape = (height, width)

    class Pipeline:
        def start(self, config):
            self.config = config
            return types.SimpleNamespace(get_device=lambda: Device(config.serial))

        def try_wait_for_frames(self, timeout_ms):
            time.sleep(0.01)
            data = np.full((*self.config.shape, 3), 7, np.uint8)
            color = types.SimpleNamespace(get_data=lambda: data)
            return True, types.SimpleNamespace(get_color_frame=lambda: color)

        def stop(self):
            rs.stopped.set()

    rs.context = lambda: types.SimpleNamespace(
        query_devices=lambda: [Device(s) for s in serials])
    rs.config, rs.pipeline = Config, Pipeline
    return rs


def test_realsense_picks_device_by_serial(monkeypatch):
    rs = fake_rs(["111", "222"])
    monkeypatch.setitem(sys.modules, "pyrealsense2", rs)
    with pytest.raises(CameraError, match="111, 222"):
        RealSenseCamera("front", None, size=(H, W))
    with pytest.raises(CameraError, match="no RealSense camera with serial 333.*111, 222"):
        RealSenseCamera("front", "333", size=(H, W))
    cam = RealSenseCamera("front", 222, size=(H, W), exposure=150.0)  # YAML gives an int
    frame = cam.read()
    assert frame.shape == (H, W, 3) and frame.dtype == np.uint8 and frame.max() == 7
    assert rs.options_set == {"ae": 0, "exposure": 150.0}
    cam.close()
    assert rs.stopped.is_set()


def test_realsense_none_connected(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrealsense2", fake_rs([]))
    with pytest.raises(CameraError, match="no RealSense camera is connected"):
        RealSenseCamera("front", None, size=(H, W))
