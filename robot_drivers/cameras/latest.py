"""LatestFrameCamera: a background thread keeps only the newest frame, so read() never blocks.

The actor loop runs at a fixed rate and must see what the camera sees *now*. Reading a device
directly from the loop would return whatever sat oldest in the driver's queue and would stall
the loop for up to a frame period. Instead a daemon thread grabs frames as fast as the device
delivers them and keeps the newest one with its arrival time; ``read()`` hands that frame out
at once, and raises when it is too old (unplugged cable, saturated USB bus, a device another
process took) or when the thread died, instead of letting the policy act on a frozen image.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from hilrl.interfaces import Camera, CameraError

log = logging.getLogger(__name__)

# When _grab has nothing new it returns None at once (end of a file, a dropped frame); this
# pause keeps the thread from spinning a core while it waits for the device to recover.
_IDLE_WAIT = 0.005
# close() waits this long for the thread; a driver stuck inside a blocking read is left to
# finish on its own (it is a daemon and releases the device when the read returns).
_JOIN_TIMEOUT = 2.0


@dataclass(frozen=True)
class FrameSettings:
    """What every threaded camera's entry in ``env.cameras`` may set beside name/crop/size."""

    fps: float | None = None  # ask the device for this rate (None: its default)
    exposure: float | None = None  # manual exposure in the driver's units (None: auto)
    stale_after: float = 0.5  # seconds without a new frame before read() raises CameraError

    def __post_init__(self) -> None:
        if self.stale_after <= 0:
            raise ValueError(f"stale_after must be > 0 seconds, got {self.stale_after}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0 or null, got {self.fps}")


class LatestFrameCamera(Camera):
    """Base for threaded cameras. Subclasses open the device in ``__init__``, then call
    ``self._start()``; they implement ``_grab`` and ``_release``.

    ``size`` is the (height, width) every frame must have; ``stale_after`` is how old, in
    seconds, the newest frame may be before ``read()`` raises CameraError.
    """

    def __init__(self, name: str, source: Any, *, size: tuple[int, int],
                 fps: float | None = None, exposure: float | None = None,
                 stale_after: float = 0.5) -> None:
        if stale_after <= 0:
            raise ValueError(f"camera {name!r}: stale_after must be > 0 seconds, "
                             f"got {stale_after}")
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"camera {name!r}: size must be (height, width) > 0, got {size}")
        if fps is not None and fps <= 0:
            raise ValueError(f"camera {name!r}: fps must be > 0 or None, got {fps}")
        self.name = name
        self.source = source
        self.size = (int(size[0]), int(size[1]))
        self.fps = fps
        self.exposure = exposure
        self.stale_after = float(stale_after)
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._frame_time = 0.0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._closed = False

    # --- for subclasses ---------------------------------------------------------------------

    @abc.abstractmethod
    def _grab(self) -> np.ndarray | None:
        """Block until the device has a frame (briefly: close() waits for it) and return it as
        RGB uint8 HxWx3, or None when there is nothing new. The array must not be reused:
        read() hands it out after this returns. Raising ends the thread; read() reports it."""

    def _release(self) -> None:  # noqa: B027 - drivers with nothing to release skip it
        """Free the device. Called once, from the grab thread, after its last ``_grab``."""

    def _hint(self) -> str:
        """What to check when frames stop coming; subclasses name their device's usual causes."""
        return ("check the cable, the USB bandwidth (several cameras on one controller: lower "
                "the resolution or fps) and that no other process holds the device")

    def _start(self) -> None:
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}",
                                        daemon=True)
        self._thread.start()

    # --- Camera -----------------------------------------------------------------------------

    def read(self) -> np.ndarray:
        """The newest frame (a copy), uint8 (height, width, 3) RGB. Waits at most until
        ``stale_after`` after start for the first frame; never waits for a later one."""
        with self._cond:
            if self._closed:
                raise CameraError(f"camera {self.name!r} ({self.source}) is closed; "
                                  f"create a new camera to read from it again")
            if self._frame is None and self._error is None:
                # Only the very first frame is worth a short wait: the device was just opened.
                deadline = self._started_at + self.stale_after
                while self._frame is None and self._error is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            frame, arrived, error = self._frame, self._frame_time, self._error
        if error is not None:
            raise CameraError(f"camera {self.name!r} ({self.source}) stopped: "
                              f"{type(error).__name__}: {error}; {self._hint()}") from error
        if frame is None:
            raise CameraError(
                f"camera {self.name!r} ({self.source}) delivered no frame within "
                f"stale_after={self.stale_after} s of opening; {self._hint()}")
        age = time.monotonic() - arrived
        if age > self.stale_after:
            raise CameraError(
                f"camera {self.name!r} ({self.source}) is stale: its newest frame is "
                f"{age:.2f} s old, the limit is stale_after={self.stale_after} s; "
                f"{self._hint()}")
        self._check(frame)
        return frame.copy()

    def close(self) -> None:
        """Stop the thread and release the device. Safe to call more than once."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is None:  # never started: nothing else will release the device
            self._release()
            return
        if thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("camera %r (%s): the grab thread did not stop within %.0f s; it "
                            "releases the device when the driver returns", self.name,
                            self.source, _JOIN_TIMEOUT)

    def __enter__(self) -> LatestFrameCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------

    def _check(self, frame: np.ndarray) -> None:
        h, w = self.size
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise CameraError(
                f"camera {self.name!r} ({self.source}) delivered a {frame.dtype} frame of shape "
                f"{frame.shape}, expected uint8 (height, width, 3) RGB: this is a driver bug, "
                f"please report it with the camera model")
        if frame.shape[:2] != (h, w):
            fh, fw = frame.shape[:2]
            raise CameraError(
                f"camera {self.name!r} ({self.source}) delivers {fw}x{fh} frames but "
                f"env.image_size is {h}x{w} (height x width = [{h}, {w}]): set env.image_size "
                f"to the camera's resolution, [{fh}, {fw}], and use cameras[].crop / "
                f"cameras[].size for what the policy sees")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self._grab()
                if frame is None:
                    self._stop.wait(_IDLE_WAIT)
                    continue
                with self._cond:
                    self._frame = frame
                    self._frame_time = time.monotonic()
                    self._cond.notify_all()
        except BaseException as e:  # any failure must reach read(), not vanish
            with self._cond:
                self._error = e
                self._cond.notify_all()
            if not self._stop.is_set():
                log.error("camera %r (%s) stopped: %r", self.name, self.source, e)
        finally:
            try:
                self._release()
            except Exception as e:  # releasing must not hide the real error
                log.warning("camera %r (%s): releasing the device failed: %r",
                            self.name, self.source, e)
