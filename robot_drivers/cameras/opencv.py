"""OpenCVCamera: USB/V4L2 cameras, video files and network streams through cv2.VideoCapture.

A video file stands in for a live camera (replaying a recorded session, tests): the grab
thread paces its frames at the file's frame rate, and after the last frame no new frames
come, so read() goes stale and raises exactly as it would for an unplugged camera.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass

import cv2
import numpy as np

from hilrl.config import CameraConfig, TaskConfig
from hilrl.interfaces import CameraError
from robot_drivers.cameras.latest import FrameSettings, LatestFrameCamera

log = logging.getLogger(__name__)

_DEFAULT_FILE_FPS = 30.0  # when a video file does not say its rate
# V4L2_EXPOSURE_MANUAL: OpenCV's V4L2 backend passes CAP_PROP_AUTO_EXPOSURE through raw.
# Other backends (DirectShow, MSMF) use the 0.25 = manual convention.
_V4L2_MANUAL_EXPOSURE = 1.0
_OTHER_MANUAL_EXPOSURE = 0.25


@dataclass(frozen=True)
class OpenCVSettings(FrameSettings):
    """A camera entry with ``driver: opencv``."""

    # A device index (0), a device path (/dev/video0), a video file or a stream URL.
    source: int | str | None = None


def make_camera(task: TaskConfig, settings: OpenCVSettings, *,
                camera: CameraConfig) -> OpenCVCamera:
    s = settings
    return OpenCVCamera(camera.name, s.source, size=task.env.image_size, fps=s.fps,
                        exposure=s.exposure, stale_after=s.stale_after)


class OpenCVCamera(LatestFrameCamera):
    """``source``: a device index (0 or "0"), a device path ("/dev/video0"), a video file or
    a stream URL ("rtsp://..."). ``size`` is (height, width); ``exposure`` is in the backend's
    units (V4L2: exposure_time_absolute, in 100 µs steps), None leaves auto exposure on."""

    def __init__(self, name: str, source: int | str, *, size: tuple[int, int],
                 fps: float | None = None, exposure: float | None = None,
                 stale_after: float = 0.5) -> None:
        super().__init__(name, source, size=size, fps=fps, exposure=exposure,
                         stale_after=stale_after)
        target, self._kind = _classify(name, source)
        if self._kind == "device" and sys.platform.startswith("linux"):
            self._cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
        else:
            self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            self._cap.release()
            raise CameraError(self._open_error())
        try:
            self._configure()
        except BaseException:
            self._cap.release()
            raise
        self._period = 0.0
        if self._kind == "file":
            file_fps = self._cap.get(cv2.CAP_PROP_FPS)
            rate = fps or (file_fps if np.isfinite(file_fps) and file_fps > 0
                           else _DEFAULT_FILE_FPS)
            self._period = 1.0 / rate
        self._next_due = time.monotonic()
        self._start()

    def _configure(self) -> None:
        if self._kind == "file":
            return  # a file has its own size and rate; read() checks the size
        cap = self._cap
        # A one-frame driver queue: otherwise a slow consumer gets frames seconds old.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self._kind != "device":
            return  # streams: resolution and rate are the sender's
        h, w = self.size
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, w)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, h)
        if self.fps is not None:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        if self.exposure is not None:
            manual = (_V4L2_MANUAL_EXPOSURE if cap.getBackendName() == "V4L2"
                      else _OTHER_MANUAL_EXPOSURE)
            ok = cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, manual)
            ok = cap.set(cv2.CAP_PROP_EXPOSURE, float(self.exposure)) and ok
            if not ok:
                # Many webcams lack manual exposure; the images are still usable, so go on.
                log.warning("camera %r (%s): the camera refused manual exposure %s; it stays "
                            "on auto exposure (list its controls: v4l2-ctl -d %s -l)",
                            self.name, self.source, self.exposure, self.source)

    def _grab(self) -> np.ndarray | None:
        if self._kind == "file":
            # Hold each frame back until its time so the file plays like a live camera.
            delay = self._next_due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return None
            # After a hiccup go on from now rather than bursting to catch up.
            self._next_due = max(self._next_due, time.monotonic()) + self._period
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None  # end of file or a dropped frame: read() notices when it goes stale
        if bgr.ndim == 2:
            return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _release(self) -> None:
        self._cap.release()

    def _hint(self) -> str:
        if self._kind == "file":
            return "the video file has ended or cannot be decoded (a file plays once)"
        if self._kind == "stream":
            return "check the network and that the stream's sender is running"
        return (f"check the cable, the USB bandwidth (several cameras on one controller: lower "
                f"the resolution or fps) and that no other process holds the device "
                f"(fuser {_device_path(self.source)}); a frame size other than asked means "
                f"the camera lacks that mode (v4l2-ctl -d {_device_path(self.source)} "
                f"--list-formats-ext)")

    def _open_error(self) -> str:
        if self._kind == "device":
            dev = _device_path(self.source)
            return (f"camera {self.name!r}: cannot open video device {self.source!r}; check "
                    f"that it exists (v4l2-ctl --list-devices), that your user is in the "
                    f"'video' group (sudo usermod -aG video $USER, then log in again) and that "
                    f"no other process holds it (fuser {dev})")
        if self._kind == "stream":
            return (f"camera {self.name!r}: cannot open stream {self.source!r}; check the URL, "
                    f"the network and that the sender is running")
        return (f"camera {self.name!r}: cannot decode video file {self.source!r}; check that "
                f"it is a video OpenCV's FFmpeg can read (try: ffprobe {self.source})")


def _classify(name: str, source: int | str) -> tuple[int | str, str]:
    """(what to hand VideoCapture, kind) with kind one of device / file / stream."""
    if isinstance(source, bool) or not isinstance(source, (int, str)):
        raise CameraError(f"camera {name!r}: source {source!r} is not usable: set "
                          f"cameras[].source to a device index, a /dev/video path, a video "
                          f"file or a stream URL")
    if isinstance(source, int) or source.strip().isdigit():
        return int(source), "device"
    if "://" in source:
        return source, "stream"
    if source.startswith("/dev/"):
        if not os.path.exists(source):
            raise CameraError(f"camera {name!r}: no device {source!r}; list the cameras with "
                              f"v4l2-ctl --list-devices and set cameras[].source")
        return source, "device"
    if not os.path.isfile(source):
        raise CameraError(f"camera {name!r}: source {source!r} is neither a device index, a "
                          f"/dev/video path, a stream URL nor an existing video file; check "
                          f"the path (relative paths start at {os.getcwd()})")
    return source, "file"


def _device_path(source: int | str) -> str:
    if isinstance(source, int) or str(source).strip().isdigit():
        return f"/dev/video{int(source)}"
    return str(source)
