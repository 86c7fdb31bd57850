"""A RobotDriver for the HIL-SERL robot server (serl_robot_infra/robot_servers/franka_server.py).

That Flask server runs on the robot PC next to a Cartesian impedance controller. Every route is
a POST: ``/pose`` {"arr": [x, y, z, qx, qy, qz, qw]} sets the controller's equilibrium pose,
``/getstate`` answers {"pose", "vel", "force", "torque", "q", "dq", "jacobian", "gripper_pos"},
``/open_gripper`` and ``/close_gripper`` drive the gripper, ``/clearerr`` clears Franka
reflexes, ``/jointreset`` drives the joints home and restarts the impedance controller (it
blocks for many seconds), ``/update_param`` sets impedance gains. The server reports no error
state: a failed request or a dead server is all the client ever sees.

The control loop must never wait on the network, so one background thread owns all traffic
during an episode: it sends the newest pose target (older ones are dropped), gripper changes,
and polls ``/getstate``. Any failure faults the driver: it stops sending targets, so the
impedance controller keeps holding the last accepted one, and every later call raises
RobotError until ``recover()``.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from hilrl.config import TaskConfig
from hilrl.geometry import canonical_quat
from hilrl.interfaces import RobotDriver, RobotError, RobotState
from robot_drivers.registry import Rig

log = logging.getLogger(__name__)

HOME_TIMEOUT = 90.0  # /jointreset waits up to 30 s for the joints plus controller restarts
# The server reports gripper_pos normalised to [0, 1] (1 = open); allow a little overshoot.
GRIPPER_POS_RANGE = (-0.1, 1.5)


class _RequestFailed(Exception):
    """One request failed; the message says which route and how."""


class _Client:
    """POSTs to the server on a new connection per request.

    Werkzeug (Flask's server) speaks keep-alive HTTP/1.1 but writes headers and body as two
    small segments with Nagle on, so on a reused connection every answer waits ~40 ms for a
    delayed ACK. A fresh connection (what the HIL-SERL env does through ``requests``) costs a
    handshake of well under a millisecond on a LAN and answers at once.
    """

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"robot server url {url!r} must look like http://HOST:PORT/")
        self.url = url
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")

    def post(self, route: str, body: Any = None, timeout: float | None = None) -> bytes:
        """POST (JSON body if given) and return the response body of a 2xx answer."""
        timeout = self.timeout if timeout is None else timeout
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request("POST", self._prefix + route, body=data, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except TimeoutError as e:
            raise _RequestFailed(f"{route}: no answer within the {timeout:g} s timeout") from e
        except ConnectionRefusedError as e:
            raise _RequestFailed(f"{route}: connection refused (is the server running?)") from e
        except (OSError, http.client.HTTPException) as e:
            raise _RequestFailed(f"{route}: request failed ({e!r})") from e
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            text = payload[:200].decode(errors="replace").strip()
            raise _RequestFailed(f"{route}: answered HTTP {response.status} {response.reason}"
                                 + (f" ({text})" if text else ""))
        return payload


def _vector(reply: Mapping[str, Any], key: str, size: int) -> np.ndarray:
    if key not in reply:
        raise _RequestFailed(f"/getstate: the reply has no {key!r}")
    try:
        value = np.asarray(reply[key], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise _RequestFailed(f"/getstate: {key!r} is not a list of numbers") from e
    if value.shape != (size,):
        raise _RequestFailed(f"/getstate: {key!r} has shape {value.shape}, expected ({size},)")
    if not np.all(np.isfinite(value)):
        raise _RequestFailed(f"/getstate: {key!r} is not finite: {value.tolist()}")
    return value


def parse_state(payload: bytes, gripper_max_width: float) -> RobotState:
    """A RobotState from a /getstate body, or _RequestFailed saying what is wrong with it."""
    try:
        reply = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        raise _RequestFailed(f"/getstate: the reply is not valid JSON ({e})") from e
    if not isinstance(reply, dict):
        raise _RequestFailed(f"/getstate: the reply is a {type(reply).__name__}, not an object")
    pose = _vector(reply, "pose", 7)
    norm = np.linalg.norm(pose[3:])
    if not abs(norm - 1.0) < 1e-2:
        raise _RequestFailed(f"/getstate: the pose quaternion has norm {norm:.4f}, not 1")
    pose[3:] = canonical_quat(pose[3:] / norm)
    wrench = np.concatenate([_vector(reply, "force", 3), _vector(reply, "torque", 3)])
    gripper = reply.get("gripper_pos")
    if isinstance(gripper, list) and len(gripper) == 1:
        gripper = gripper[0]
    if isinstance(gripper, bool) or not isinstance(gripper, int | float):
        raise _RequestFailed(f"/getstate: 'gripper_pos' is {gripper!r}, expected a number")
    low, high = GRIPPER_POS_RANGE
    if not (math.isfinite(gripper) and low <= gripper <= high):
        raise _RequestFailed(
            f"/getstate: 'gripper_pos' is {gripper!r}, expected 0..1 (1 = open); if your "
            "server reports metres, set gripper_max_width=1.0")
    return RobotState(
        tcp_pose=pose,
        tcp_vel=_vector(reply, "vel", 6),
        gripper_width=max(float(gripper), 0.0) * gripper_max_width,
        wrench=wrench,
        joint_positions=_vector(reply, "q", 7),
    )


@dataclass(frozen=True)
class HttpRobotSettings:
    """A HIL-SERL robot server (``env.robot: hilserl_http``, section ``env.hilserl_http``):
    the Flask server labs run on their robot PC (franka_server.py), spoken to over HTTP."""

    url: str = "http://127.0.0.1:5000/"
    timeout: float = 0.5  # seconds for one request before the robot counts as unreachable
    state_hz: float = 50.0  # how often the background thread polls /getstate
    # Posted once to /update_param at connect (impedance gains etc.); empty: leave as is.
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.state_hz <= 0:
            raise ValueError("timeout and state_hz must be > 0")


def make_rig(task: TaskConfig, settings: HttpRobotSettings, *, seed: int) -> Rig:
    """``env.robot: hilserl_http``: the driver alone (wall clock, cameras by their drivers)."""
    s = settings
    return Rig(HilSerlHttpDriver(s.url, timeout=s.timeout, state_hz=s.state_hz,
                                 params=s.params or None))


class HilSerlHttpDriver(RobotDriver):
    """Drives an arm through a HIL-SERL robot server at ``url`` (e.g. http://robot-pc:5000/).

    ``params`` are posted to /update_param at connect (impedance gains). The server's
    gripper_pos is normalised (1 = open) and scaled by ``gripper_max_width`` into metres.
    """

    def __init__(self, url: str, *, timeout: float = 0.5, state_hz: float = 50.0,
                 params: Mapping[str, Any] | None = None,
                 gripper_max_width: float = 0.08) -> None:
        if timeout <= 0 or state_hz <= 0 or gripper_max_width <= 0:
            raise ValueError("timeout, state_hz and gripper_max_width must be > 0")
        self.url = url
        self.timeout = timeout
        self.period = 1.0 / state_hz
        self.params = dict(params) if params else None
        self.gripper_max_width = gripper_max_width
        self.max_age = 3 * timeout + self.period
        _Client(url, timeout)  # fail on a malformed url here, not in the thread

        self._lock = threading.Lock()
        # Held by the thread around each round of requests, and by home() around /jointreset
        # so that no /pose races the reset into the impedance controller it restarts.
        self._io = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        # Everything below is shared with the thread and guarded by _lock.
        self._target: np.ndarray | None = None  # newest pose not yet sent
        self._want_closed: bool | None = None
        self._sent_closed: bool | None = None
        self._reading: RobotState | None = None
        self._reading_time = -math.inf  # monotonic time the request for _reading was sent
        self._fault: str | None = None

    # --- RobotDriver --------------------------------------------------------------------------

    def connect(self) -> None:
        if self._closed:
            raise RobotError("this HilSerlHttpDriver was closed; make a new one")
        if self._thread is not None:
            return
        client = _Client(self.url, self.timeout)
        try:
            sent = time.monotonic()
            state = parse_state(client.post("/getstate"), self.gripper_max_width)
            if self.params:
                client.post("/update_param", self.params)
        except _RequestFailed as e:
            raise RobotError(
                f"cannot use the HIL-SERL robot server at {self.url}: {e}. Check that "
                "franka_server.py is running on the robot PC, that the host and port are "
                "right (Flask's default is 5000) and that this machine can reach it "
                "(--flask_url 0.0.0.0 on the server, firewall)") from e
        with self._lock:
            self._reading, self._reading_time = state, sent
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hilserl-http", daemon=True)
        self._thread.start()

    def state(self) -> RobotState:
        with self._lock:
            self._check_usable()
            reading, age = self._reading, time.monotonic() - self._reading_time
        if reading is None or age > self.max_age:
            raise RobotError(
                f"no fresh state from the robot server at {self.url} for {age:.2f} s "
                f"(limit {self.max_age:.2f} s); check the robot server; recover() once fixed")
        return reading

    def move_to(self, pose: np.ndarray) -> None:
        pose = np.array(pose, dtype=np.float64)
        if pose.shape != (7,) or not np.all(np.isfinite(pose)):
            raise ValueError(f"move_to needs a finite (7,) pose [xyz, quat xyzw], got {pose!r}")
        if not abs(np.linalg.norm(pose[3:]) - 1.0) < 1e-3:
            raise ValueError(f"pose quaternion {pose[3:]} is not unit length")
        with self._lock:
            self._check_usable()
            self._target = pose
        self._wake.set()

    def gripper(self, command: float) -> None:
        if not math.isfinite(command):
            raise ValueError(f"gripper command must be finite, got {command}")
        with self._lock:
            self._check_usable()
            self._want_closed = command >= 0.5  # the server's gripper routes are binary
        self._wake.set()

    def home(self) -> None:
        """POST /jointreset (blocks for up to HOME_TIMEOUT s), then wait for a fresh state."""
        with self._lock:
            self._check_usable()
        with self._io:
            with self._lock:
                # A target queued before the reset must not reach the impedance controller the
                # reset restarts: the arm would leave home for it at once.
                self._target = None
            try:
                _Client(self.url, self.timeout).post("/jointreset", timeout=HOME_TIMEOUT)
            except _RequestFailed as e:
                self._set_fault(str(e))
                raise RobotError(self._fault_message(str(e))) from e
        self._await_fresh_state(time.monotonic())

    def recover(self) -> None:
        """POST /clearerr (clears Franka reflexes) and, once it answers, clear the fault."""
        if self._thread is None:
            raise RobotError("call connect() before recover()")
        try:
            _Client(self.url, self.timeout).post("/clearerr")
        except _RequestFailed as e:
            raise RobotError(
                f"recover() failed: {e}. Check the robot server at {self.url}, then call "
                "recover() again") from e
        with self._lock:
            if self._fault is not None:
                log.info("robot server at %s answers again; fault cleared", self.url)
            self._fault = None
            self._target = None  # the arm held where it was; start again from there
        self._await_fresh_state(time.monotonic())

    def close(self) -> None:
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            # Its longest wait is one request, unless home() holds the connection.
            self._thread.join(timeout=2 * self.timeout + 1.0)
        self._thread = None

    # --- internals ----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        """Raise if the driver cannot take commands; call with _lock held."""
        if self._closed:
            raise RobotError("this HilSerlHttpDriver was closed; make a new one")
        if self._thread is None:
            raise RobotError("call connect() before using the driver")
        if self._fault is not None:
            raise RobotError(self._fault)

    def _fault_message(self, what: str) -> str:
        return (f"HIL-SERL robot server {what}; no further targets are sent, so the arm holds "
                f"its last one. Check the robot server at {self.url}; recover() once fixed")

    def _set_fault(self, what: str) -> None:
        with self._lock:
            if self._fault is not None:
                return
            self._fault = self._fault_message(what)
            self._target = None
        log.error("%s", self._fault)

    def _await_fresh_state(self, since: float) -> None:
        deadline = since + self.max_age
        while time.monotonic() < deadline:
            with self._lock:
                self._check_usable()
                if self._reading_time >= since:
                    return
            self._wake.set()
            time.sleep(self.period / 4)
        raise RobotError(f"the robot server at {self.url} sent no state within "
                         f"{self.max_age:.2f} s; check it, then call recover()")

    def _run(self) -> None:
        client = _Client(self.url, self.timeout)
        next_poll = time.monotonic()
        while not self._stop.is_set():
            try:
                with self._io:
                    next_poll = self._cycle(client, next_poll)
            except _RequestFailed as e:
                self._set_fault(str(e))
            except Exception as e:  # never die silently: the loop would see stale states
                self._set_fault(f"client thread failed ({e!r})")
            self._wake.wait(max(0.0, next_poll - time.monotonic()))
            self._wake.clear()

    def _cycle(self, client: _Client, next_poll: float) -> float:
        """Send what is new and poll the state when due; return the next poll time."""
        with self._lock:
            if self._fault is not None:
                return time.monotonic() + self.period  # hold: send nothing until recover()
            target, self._target = self._target, None
            gripper = self._want_closed if self._want_closed != self._sent_closed else None
        if target is not None:
            client.post("/pose", {"arr": target.tolist()})
        if gripper is not None:
            client.post("/close_gripper" if gripper else "/open_gripper")
            with self._lock:
                self._sent_closed = gripper
        now = time.monotonic()
        if now < next_poll:
            return next_poll
        state = parse_state(client.post("/getstate"), self.gripper_max_width)
        with self._lock:
            self._reading, self._reading_time = state, now
        # Skip missed polls rather than bursting to catch up after a slow request.
        return max(next_poll + self.period, time.monotonic())
