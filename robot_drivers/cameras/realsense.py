"""RealSenseCamera: the colour stream of an Intel RealSense (D400 series and alike).

pyrealsense2 is an optional dependency (``pip install 'hilrl[realsense]'``); it is imported
when a RealSense camera is created, so machines without it can use every other camera.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hilrl.config import CameraConfig, TaskConfig
from hilrl.interfaces import CameraError
from robot_drivers.cameras.latest import FrameSettings, LatestFrameCamera

INSTALL_HINT = "RealSense cameras need `pip install 'hilrl[realsense]'` (pyrealsense2)"
_DEFAULT_FPS = 30
# How long one wait for frames may block: short, so close() stops the thread promptly.
_WAIT_MS = 200


def _import_rs() -> Any:
    try:
        import pyrealsense2 as rs
    except ImportError as e:
        raise CameraError(f"{INSTALL_HINT}; importing it failed: {e}") from None
    return rs


@dataclass(frozen=True)
class RealSenseSettings(FrameSettings):
    """A camera entry with ``driver: realsense``."""

    source: str | int | None = None  # the serial number (None: the only one connected)


def make_camera(task: TaskConfig, settings: RealSenseSettings, *,
                camera: CameraConfig) -> RealSenseCamera:
    s = settings
    return RealSenseCamera(camera.name, s.source, size=task.env.image_size, fps=s.fps,
                           exposure=s.exposure, stale_after=s.stale_after)


class RealSenseCamera(LatestFrameCamera):
    """``source``: the camera's serial number, or None for the only one connected.
    ``size`` is (height, width) of the rgb8 colour stream; ``fps`` defaults to 30;
    ``exposure`` is the colour sensor's manual exposure (µs), None leaves auto exposure on."""

    def __init__(self, name: str, source: str | int | None = None, *, size: tuple[int, int],
                 fps: float | None = None, exposure: float | None = None,
                 stale_after: float = 0.5) -> None:
        # A serial written without quotes in YAML arrives as an int.
        serial = None if source is None else str(source)
        super().__init__(name, serial, size=size, fps=fps, exposure=exposure,
                         stale_after=stale_after)
        rs = _import_rs()
        self._rs = rs
        serial = self._pick_device(serial)
        self.source = serial
        rate = int(round(fps)) if fps is not None else _DEFAULT_FPS
        h, w = self.size
        config = rs.config()
        config.enable_device(serial)
        config.enable_stream(rs.stream.color, w, h, rs.format.rgb8, rate)
        self._pipeline = rs.pipeline()
        try:
            profile = self._pipeline.start(config)
        except RuntimeError as e:
            raise CameraError(
                f"camera {name!r}: RealSense {serial} cannot stream {w}x{h} rgb8 at {rate} fps: "
                f"{e}; pick a mode the camera lists (rs-enumerate-devices -s), use a USB 3 "
                f"port, and check no other process (realsense-viewer, a ROS node) holds it"
            ) from None
        try:
            self._set_exposure(profile.get_device().first_color_sensor())
        except CameraError:
            self._pipeline.stop()
            raise
        except RuntimeError as e:
            self._pipeline.stop()
            raise CameraError(
                f"camera {name!r}: RealSense {serial} refused the exposure setting "
                f"{exposure}: {e}; set cameras[].exposure to null for auto exposure") from None
        self._start()

    def _pick_device(self, serial: str | None) -> str:
        rs = self._rs
        found = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
        if not found:
            raise CameraError(
                f"camera {self.name!r}: no RealSense camera is connected (wanted "
                f"{serial or 'any'}); check the USB 3 cable and port, and that "
                f"rs-enumerate-devices lists it (udev rules installed)")
        if serial is None:
            if len(found) > 1:
                raise CameraError(
                    f"camera {self.name!r}: {len(found)} RealSense cameras are connected "
                    f"({', '.join(found)}); set cameras[].source to the serial number of the "
                    f"one this camera is")
            return found[0]
        if serial not in found:
            raise CameraError(
                f"camera {self.name!r}: no RealSense camera with serial {serial}; connected: "
                f"{', '.join(found)}; set cameras[].source to one of them")
        return serial

    def _set_exposure(self, sensor: Any) -> None:
        rs = self._rs
        if not sensor.supports(rs.option.enable_auto_exposure):
            return
        if self.exposure is None:
            # Options outlive the process on the device: undo a manual exposure of a last run.
            sensor.set_option(rs.option.enable_auto_exposure, 1)
            return
        sensor.set_option(rs.option.enable_auto_exposure, 0)
        limits = sensor.get_option_range(rs.option.exposure)
        if not limits.min <= self.exposure <= limits.max:
            raise CameraError(
                f"camera {self.name!r}: exposure {self.exposure} is outside the RealSense "
                f"colour sensor's range [{limits.min}, {limits.max}]; set cameras[].exposure "
                f"inside it, or to null for auto exposure")
        sensor.set_option(rs.option.exposure, float(self.exposure))

    def _grab(self) -> np.ndarray | None:
        ok, frames = self._pipeline.try_wait_for_frames(_WAIT_MS)
        if not ok:
            return None
        color = frames.get_color_frame()
        if not color:
            return None
        # get_data() points into the SDK's frame pool, which reuses the memory: copy it out.
        return np.asanyarray(color.get_data()).copy()

    def _release(self) -> None:
        self._pipeline.stop()

    def _hint(self) -> str:
        return (f"check the USB 3 cable and port (rs-enumerate-devices shows the link speed), "
                f"the USB bandwidth shared with other cameras, and that no other process "
                f"(realsense-viewer, a ROS node) holds RealSense {self.source}")
