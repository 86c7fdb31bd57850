"""A fake HIL-SERL robot server (franka_server.py's HTTP routes) for the driver tests.

The arm is kinematic: its position moves toward the last accepted /pose target at a bounded
speed integrated from the wall clock, its orientation snaps to the target's, and the gripper
(normalised, 1 = open, as the real server reports it) moves toward open or closed. Every
request is recorded; fault knobs make a route fail, stall or answer garbage.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

HOME_POSE = (0.5, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0)  # xyz + quat xyzw: tool pointing down
HOME_Q = (0.0, 0.0, 0.0, -1.9, 0.0, 2.0, 0.0)  # the real server's default joint-reset target
GRIPPER_SPEED = 4.0  # normalised width per second
ROUTES = frozenset({"/pose", "/getstate", "/clearerr", "/jointreset", "/open_gripper",
                    "/close_gripper", "/move_gripper", "/update_param", "/activate_gripper",
                    "/reset_gripper", "/startimp", "/stopimp"})


class FakeHilSerlServer:
    def __init__(self, start_pose: Any = HOME_POSE, max_speed: float = 0.5) -> None:
        self.max_speed = max_speed
        self.home_pose = np.array(HOME_POSE, dtype=np.float64)
        self.pose = np.array(start_pose, dtype=np.float64)
        self.target = self.pose.copy()
        self.vel = np.zeros(6)
        self.gripper_pos = 1.0
        self.gripper_goal = 1.0
        self.errored = False  # a Franka reflex: the arm ignores targets until /clearerr
        self.params: dict[str, Any] = {}
        self.requests: list[tuple[str, Any]] = []
        self._failures: dict[str, int] = {}
        self._delays: dict[str, float] = {}
        self._malformed: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}/"

    # --- fault knobs ------------------------------------------------------------------------

    def fail(self, route: str, status: int = 500) -> None:
        with self._lock:
            self._failures[route] = status

    def delay(self, route: str, seconds: float) -> None:
        with self._lock:
            self._delays[route] = seconds

    def malformed(self, route: str, body: bytes = b'{"pose": [0.5, 0.0') -> None:
        """Answer ``route`` with ``body`` (default: truncated JSON) instead of the real reply."""
        with self._lock:
            self._malformed[route] = body

    def clear_faults(self) -> None:
        with self._lock:
            self._failures.clear()
            self._delays.clear()
            self._malformed.clear()

    def trip(self) -> None:
        """Simulate a reflex: the arm stops following targets until /clearerr."""
        with self._lock:
            self.errored = True

    # --- inspection --------------------------------------------------------------------------

    def bodies(self, route: str) -> list[Any]:
        with self._lock:
            return [body for r, body in self.requests if r == route]

    def routes(self) -> list[str]:
        with self._lock:
            return [r for r, _ in self.requests]

    def current_pose(self) -> np.ndarray:
        with self._lock:
            self._advance()
            return self.pose.copy()

    def current_gripper(self) -> float:
        with self._lock:
            self._advance()
            return self.gripper_pos

    # --- simulation ---------------------------------------------------------------------------

    def _advance(self) -> None:
        """Integrate the arm and gripper up to now; call with _lock held."""
        now = time.monotonic()
        dt, self._last = now - self._last, now
        if dt <= 0:
            return
        error = self.target[:3] - self.pose[:3]
        distance = float(np.linalg.norm(error))
        step = min(distance, self.max_speed * dt)
        move = error / distance * step if distance > 0 else np.zeros(3)
        self.pose[:3] += move
        self.pose[3:] = self.target[3:]
        self.vel = np.concatenate([move / dt, np.zeros(3)])
        g = self.gripper_goal - self.gripper_pos
        self.gripper_pos += float(np.clip(g, -GRIPPER_SPEED * dt, GRIPPER_SPEED * dt))

    def handle(self, route: str, body: Any) -> tuple[int, bytes]:
        """The reply (status, body) to one request, with the fault knobs applied."""
        with self._lock:
            self.requests.append((route, body))
            delay = self._delays.get(route, 0.0)
        if delay:
            time.sleep(delay)
        with self._lock:
            if route not in ROUTES:
                return 404, b"Not Found"
            if route in self._failures:
                return self._failures[route], b"Internal Server Error"
            if route in self._malformed:
                return 200, self._malformed[route]
            self._advance()
            return 200, self._apply(route, body)

    def _apply(self, route: str, body: Any) -> bytes:
        if route == "/getstate":
            return json.dumps({
                "pose": self.pose.tolist(), "vel": self.vel.tolist(),
                "force": [0.0, 0.0, -1.0], "torque": [0.0, 0.0, 0.0],
                "q": list(HOME_Q), "dq": [0.0] * 7, "jacobian": np.zeros((6, 7)).tolist(),
                "gripper_pos": self.gripper_pos,
            }).encode()
        if route == "/pose":
            if not self.errored:
                self.target = np.array(body["arr"], dtype=np.float64)
            return b"Moved"
        if route == "/jointreset":
            self.errored = False
            self.pose = self.home_pose.copy()
            self.target = self.home_pose.copy()
            return b"Reset Joint"
        if route == "/clearerr":
            self.errored = False
            return b"Clear"
        if route == "/open_gripper":
            self.gripper_goal = 1.0
        elif route == "/close_gripper":
            self.gripper_goal = 0.0
        elif route == "/move_gripper":
            # 0..255 as on the Robotiq, where 255 is closed
            self.gripper_goal = 1.0 - float(np.clip(int(body["gripper_pos"]), 0, 255)) / 255
        elif route == "/update_param":
            self.params.update(body)
        return b"OK"

    # --- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> FakeHilSerlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handler(server: FakeHilSerlServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the driver's client expects to reuse

        def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, reply = server.handle(self.path, body)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except OSError:
                pass  # the client gave up (timeout) and closed the socket

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler
