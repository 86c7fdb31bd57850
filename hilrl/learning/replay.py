"""Image replay buffer that stores every frame once, plus demo/online mixing and prefetching.

Pure numpy; the learner turns the sampled dicts into JAX arrays itself.

Storage layout
--------------
A ring of ``capacity`` *slots*. Slot ``i`` holds one observation and, when it starts a
transition, that transition's fields; the transition's ``next_obs`` is the observation in
slot ``(i + 1) % capacity``::

    state       (C, S)        float32   observation in slot i
    images/cam  (C, H, W, 3)  uint8     one array per camera (zero or more cameras)
    action      (C, A)        float32   \\
    reward      (C,)          float32    |
    terminated  (C,)          bool       |  fields of the transition that starts at slot i
    truncated   (C,)          bool       |  (meaningless where valid[i] is False)
    intervened  (C,)          bool       |
    extras/name (C,)          float32   /   one per configured scalar extra
    valid       (C,)          bool      slot i starts a sampleable transition

An episode of T steps therefore takes T + 1 slots: its observations in order, the last one
(the final ``next_obs``) with ``valid`` False so it is never sampled as a transition start.
Bytes per slot = one frame set + the small fields + 1, i.e. stored bytes per transition
are (T + 1) / T frame sets instead of the 2 of a naive (obs, next_obs) buffer.

Adding: ``add()`` takes one transition (obs, ..., next_obs); ``add_batch()`` takes N
consecutive steps of one episode in the wire layout (N + 1 observation rows, N rows of
everything else) and gives exactly the buffer N ``add()`` calls would, continuing the
previous batch of the episode without a new slot; ``add_episode()`` takes a whole
``Episode`` and always starts a new slot. Both bulk methods are one vectorised write.

Slots are written strictly in ring order and ``valid[j]`` is cleared whenever slot ``j`` is
(re)written, before anything else. Because slot ``i + 1`` is always overwritten *after* slot
``i``, a set ``valid[i]`` implies slots ``i`` and ``i + 1`` still hold exactly the data
they had when the flag was set: wrap-around can never yield a stale ``next_obs``, and a
transition never straddles two episodes (the boundary slot is never valid).

A camera's frame is an (H, W, 3) uint8 image under ``obs["images"]``. (A frozen encoder's
features are not frames: the actor appends them to the state, see ``env.frozen_encoder``.)

Batches
-------
``sample()`` returns ``{"obs": {"state", "images": {cam}}, "next_obs": {...}, "action",
"reward", "mask", "terminated", "truncated", "intervened", <extras>}``, each with a leading
batch axis; ``mask = 1 - terminated`` (float32), so truncation keeps bootstrapping. Batch
arrays live in recycled memory blocks (``_BatchPool``): a block is reused only once no
array, view or JAX array made from it is alive, which saves ~4 ms of page faults per
256 x 2 x 128^2 batch.

Thread safety
-------------
Every method that touches the slots (add, add_batch, add_episode, sample, gather,
valid_indices, save) takes the buffer's lock, so ``add()`` from an inbox thread and
``sample()`` from a Prefetcher thread can run concurrently; each ``sample()`` sees the
buffer between two ``add()`` calls, never halfway through one (nor through a batch). A
sample copies its batch out under the lock (a few ms for 256 x 2 x 128^2), which is the
longest an ``add()`` waits. ``save()`` and ``save_chunks()`` hold the lock for the whole
write. ``len()`` reads
a counter without the lock.

Snapshot file (format "hilrl-replay", version 1)
-------------------------------------------------
An uncompressed ``.npz`` (images barely compress and speed matters) holding the first
``filled`` rows of every array above under the names shown, plus ``__header__``: a 1-D
uint8 array with the UTF-8 JSON ``{"format", "version", "spec": {capacity, state_size,
image_shapes, action_size, extras}, "cursor", "filled", "open"}``. (Version 2 files, which
held float feature frames of the removed feature cache, are refused.) Read with
``np.load(path, allow_pickle=False)``; written atomically (temp file, fsync, os.replace).

Chunked snapshot (``save_chunks``, what learner checkpoints write): a JSON manifest,
``<name>.json``, holding that same header plus ``"chunk_slots"`` and ``"chunks"``, the
file names of ``.npz`` files in the same directory; chunk ``k`` holds rows ``[k *
chunk_slots, min((k + 1) * chunk_slots, filled))`` of every array, under the same member
names (no header member). A chunk no write touched since the previous chunked snapshot is
named from it rather than written again.
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hilrl.storage.fsutil import NPZ_READ_ERRORS, atomic_write

__all__ = [
    "FORMAT",
    "VERSION",
    "MixedSampler",
    "Prefetcher",
    "ReplayBuffer",
    "ReplayFileError",
]

FORMAT = "hilrl-replay"
VERSION = 1  # see the module docstring
HEADER = "__header__"

Batch = dict[str, Any]

_FLAGS = ("terminated", "truncated", "intervened")
# Keys of a sampled batch; extras become top-level keys too, so they may not reuse these.
_BATCH_KEYS = frozenset(("obs", "next_obs", "action", "reward", "mask", *_FLAGS))
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


class ReplayFileError(ValueError):
    """A replay snapshot is missing, damaged, of another format, or not what was expected."""


def _check_name(kind: str, name: object) -> str:
    # Names become npz member names and batch keys: keep them plain.
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.startswith("__"):
        raise ValueError(f"{kind} name {name!r} is invalid: use letters, digits, '_', '.', '-' "
                         "and do not start with '__'")
    return name


class ReplayBuffer:
    """Ring buffer of transitions with image observations stored once (see module docstring).

    Args:
        capacity: number of slots (observations), >= 2. An episode of T steps uses T + 1.
        state_size: length S of ``obs["state"]``.
        image_shapes: ``{camera: (H, W, 3)}`` of uint8 images; may be empty.
        action_size: length A of the action.
        extras: names of per-transition scalar float32 extras (e.g. ``"grasp_penalty"``).
    """

    def __init__(
        self,
        capacity: int,
        state_size: int,
        image_shapes: Mapping[str, tuple[int, ...]],
        action_size: int,
        extras: Iterable[str] = (),
    ) -> None:
        if int(capacity) != capacity or capacity < 2:
            raise ValueError(f"capacity must be an integer >= 2 (a transition needs two "
                             f"slots), got {capacity!r}")
        if int(state_size) != state_size or state_size < 0:
            raise ValueError(f"state_size must be an integer >= 0, got {state_size!r}")
        if int(action_size) != action_size or action_size < 1:
            raise ValueError(f"action_size must be an integer >= 1, got {action_size!r}")
        shapes: dict[str, tuple[int, ...]] = {}
        for cam, shape in dict(image_shapes).items():
            _check_name("camera", cam)
            shape = tuple(int(s) for s in shape)
            if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
                raise ValueError(f"camera {cam!r}: image shape must be (H, W, 3), got {shape}")
            shapes[cam] = shape
        names = tuple(_check_name("extra", e) for e in extras)
        if len(set(names)) != len(names) or _BATCH_KEYS & set(names):
            raise ValueError(f"extras {names} must be unique and not reuse a batch key "
                             f"{sorted(_BATCH_KEYS)}")
        self.capacity = int(capacity)
        self.state_size = int(state_size)
        self.image_shapes = shapes
        self.action_size = int(action_size)
        self.extras = names

        c = self.capacity
        # np.zeros is lazily backed by the OS: memory is committed as slots get written.
        self._state = np.zeros((c, self.state_size), np.float32)
        self._images = {cam: np.zeros((c, *shape), np.uint8) for cam, shape in shapes.items()}
        self._action = np.zeros((c, self.action_size), np.float32)
        self._reward = np.zeros(c, np.float32)
        self._flags = {name: np.zeros(c, bool) for name in _FLAGS}
        self._extras = {name: np.zeros(c, np.float32) for name in names}
        self._valid = np.zeros(c, bool)

        self._cursor = 0  # next slot to write
        self._filled = 0  # slots written at least once (== capacity after the first wrap)
        self._open = False  # slot cursor-1 is the next_obs of a transition that did not end
        self._size = 0  # number of True in _valid
        self._index_cache: np.ndarray | None = None  # flatnonzero(_valid), rebuilt lazily
        self._lock = threading.Lock()
        # Chunked snapshots (save_chunks) write only what changed: slots are written in ring
        # order, so the count of writes since the last snapshot says which slots changed.
        self._writes = 0
        self._saved_writes = 0
        self._chunk_files: dict[int, str] = {}  # chunk -> file holding it in the last snapshot
        # Batch arrays, as (path in the batch dict, per-row shape, dtype).
        row = {"state": ((self.state_size,), np.float32),
               **{f"images/{cam}": (shape, np.uint8) for cam, shape in shapes.items()}}
        layout = [((key, *name.split("/")), shape, dtype)
                  for key in ("obs", "next_obs") for name, (shape, dtype) in row.items()]
        layout += [(("action",), (self.action_size,), np.float32),
                   (("reward",), (), np.float32), (("mask",), (), np.float32)]
        layout += [((name,), (), np.bool_) for name in _FLAGS]
        layout += [((name,), (), np.float32) for name in names]
        self._pool = _BatchPool(layout)

    # ------------------------------------------------------------------ introspection

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``ReplayBuffer(**buf.spec)`` is an empty twin."""
        return {
            "capacity": self.capacity,
            "state_size": self.state_size,
            "image_shapes": {cam: list(s) for cam, s in self.image_shapes.items()},
            "action_size": self.action_size,
            "extras": list(self.extras),
        }

    def __len__(self) -> int:
        """Number of sampleable transitions."""
        return self._size

    def rewards(self) -> tuple[np.ndarray, np.ndarray]:
        """(reward, terminated) of every sampleable transition, copies."""
        with self._lock:
            return self._reward[self._valid], self._flags["terminated"][self._valid]

    @property
    def nbytes(self) -> int:
        """Bytes of all storage arrays (allocated up front for the full capacity)."""
        return sum(a.nbytes for a in self._arrays().values())

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"state": self._state}
        arrays.update({f"images/{cam}": a for cam, a in self._images.items()})
        arrays["action"] = self._action
        arrays["reward"] = self._reward
        arrays.update(self._flags)
        arrays.update({f"extras/{name}": a for name, a in self._extras.items()})
        arrays["valid"] = self._valid
        return arrays

    # ------------------------------------------------------------------ adding

    def add(
        self,
        obs: Mapping[str, Any],
        action: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        next_obs: Mapping[str, Any],
        intervened: bool = False,
        first: bool | None = None,
        **extras: float,
    ) -> None:
        """Add one transition (the actor sends them one by one, in episode order).

        Contract: ``obs`` *continues* the previous transition when that transition was
        neither terminated nor truncated, ``first`` is not True, and ``obs`` equals the
        previous ``next_obs`` exactly (state and every image). Then only ``next_obs`` is
        written (one slot). Otherwise ``obs`` starts a new episode in a new slot (two
        slots). The equality check costs about as much as one frame copy; it means a
        missed reset, a resent or interleaved transition costs at most a slot, never a
        wrong ``next_obs``. ``first=False`` asserts continuation and raises ValueError when
        it does not hold. Every configured extra must be given (as a keyword); unknown
        keywords are ignored. Inputs are copied. A bad input raises (ValueError for a wrong
        shape, dtype or camera set) before anything is written.
        """
        state, images = self._check_obs(obs, "obs")
        next_state, next_images = self._check_obs(next_obs, "next_obs")
        action = np.asarray(action, np.float32)
        if action.shape != (self.action_size,):
            raise ValueError(f"action: expected shape ({self.action_size},), got {action.shape}")
        values = self._extra_values(extras, None)
        # Convert everything before taking the lock, so a bad value cannot leave a half
        # written transition behind.
        reward = np.float32(float(reward))  # float(): np.float32(None) would be NaN
        ends = bool(terminated), bool(truncated), bool(intervened)
        with self._lock:
            c = self._cursor
            last = (c - 1) % self.capacity
            cont = (first is not True and self._open
                    and np.array_equal(self._state[last], state)
                    and all(np.array_equal(self._images[k][last], v) for k, v in images.items()))
            if first is False and not cont:
                raise ValueError("add(first=False): obs does not continue the previous "
                                 "transition (it ended, or obs differs from its next_obs)")
            if cont:
                start = last
            else:
                start = c
                self._write_obs(start, state, images)
            self._action[start] = action
            self._reward[start] = reward
            for name, flag in zip(_FLAGS, ends, strict=True):
                self._flags[name][start] = flag
            for name, value in values.items():
                self._extras[name][start] = value
            self._write_obs(self._cursor, next_state, next_images)
            self._set_valid(start)
            self._open = not (ends[0] or ends[1])

    def add_batch(
        self,
        obs: Mapping[str, Any],
        action: Any,
        reward: Any,
        terminated: Any,
        truncated: Any,
        intervened: Any = None,
        extras: Mapping[str, Any] | None = None,
    ) -> None:
        """Add N consecutive steps of one episode in one vectorised write (the wire layout).

        ``obs = {"state": (N + 1, S), "images": {cam: (N + 1, H, W, 3)}}`` holds every
        observation once: step i's obs is row i, its next_obs row i + 1. ``action`` is
        (N, A); ``reward``, ``terminated``, ``truncated`` and ``intervened`` (None: all
        False) are (N,); ``extras`` maps every configured extra to N values.

        The result is exactly that of ``add(obs_i, ..., next_obs_i)`` for i = 0..N-1 in
        order: row 0 continues the previous transition under add's rule (that transition
        did not end and row 0 equals its next_obs exactly), so consecutive batches of one
        episode take one slot per step; a step whose obs would not compare equal to the
        stored row (a NaN state, or a state that float32 does not represent exactly) starts
        a new slot, as with add. Only the last step may be terminated or truncated. A batch
        longer than the buffer keeps only its newest observations. Everything is checked
        (ValueError) before anything is written.
        """
        action = np.asarray(action, np.float32)
        if action.ndim != 2 or action.shape[1] != self.action_size or len(action) < 1:
            raise ValueError(f"action: expected shape (N, {self.action_size}) with N >= 1, "
                             f"got {action.shape}")
        n = len(action)
        if not isinstance(obs, Mapping) or "state" not in obs:
            raise ValueError("obs: expected a dict with 'state' (and 'images')")
        state = self._check_array("obs['state']", obs["state"], (n + 1, self.state_size))
        images = dict(obs.get("images") or {})
        if set(images) != set(self.image_shapes):
            raise ValueError(f"obs['images']: cameras {sorted(images)} differ from the "
                             f"buffer's {sorted(self.image_shapes)}")
        images = {cam: self._check_frames(f"obs['images'][{cam!r}]", cam, img, n + 1)
                  for cam, img in images.items()}
        reward = self._check_array("reward", reward, (n,))
        flags = {"terminated": self._check_array("terminated", terminated, (n,)),
                 "truncated": self._check_array("truncated", truncated, (n,)),
                 "intervened": (np.zeros(n, bool) if intervened is None
                                else self._check_array("intervened", intervened, (n,)))}
        ends = flags["terminated"].astype(bool) | flags["truncated"].astype(bool)
        if ends[:-1].any():
            raise ValueError(f"add_batch: step {int(np.flatnonzero(ends)[0])} of {n} is "
                             "terminated or truncated; only the last step of a batch may be")
        values = self._extra_values(dict(extras or {}), n)
        # Steps 1.. follow an open transition whose next_obs is their own obs row, stored
        # as float32; add() would compare the stored row with the given one, so a row that
        # does not survive the cast unchanged (NaN included) starts a new slot. Frames are
        # uint8, so they always compare equal.
        new = np.ones(n, bool)
        new[1:] = ~(state[1:n].astype(np.float32) == state[1:n]).all(axis=1)
        with self._lock:
            last = (self._cursor - 1) % self.capacity
            new[0] = not (self._open
                          and np.array_equal(self._state[last], state[0])
                          and all(np.array_equal(self._images[cam][last], img[0])
                                  for cam, img in images.items()))
            self._write_steps(state, images, action, reward, flags, values, new)

    def add_episode(self, episode: Any) -> None:
        """Add a whole ``hilrl.storage.dataset.Episode`` (T steps, T + 1 observations) in one copy.

        Always starts a new slot and gives exactly the same buffer as calling ``add()`` for
        each step with ``first=True`` on step 0. An episode longer than the buffer keeps
        only its last ``capacity`` observations. Configured extras must be present in
        ``episode.extras`` with T values; other extras are ignored.
        """
        t = int(np.shape(episode.action)[0])
        if t < 1:
            raise ValueError("add_episode: the episode has no steps")
        state = self._check_array("episode.state", episode.state, (t + 1, self.state_size))
        images = dict(episode.images or {})
        if set(images) != set(self.image_shapes):
            raise ValueError(f"episode.images: cameras {sorted(images)} differ from the "
                             f"buffer's {sorted(self.image_shapes)}")
        images = {cam: self._check_frames(f"episode.images[{cam!r}]", cam, img, t + 1)
                  for cam, img in images.items()}
        action = self._check_array("episode.action", episode.action, (t, self.action_size))
        reward = self._check_array("episode.reward", episode.reward, (t,))
        flags = {name: self._check_array(f"episode.{name}", getattr(episode, name), (t,))
                 for name in _FLAGS}
        values = self._extra_values(dict(episode.extras or {}), t)
        new = np.zeros(t, bool)
        new[0] = True
        with self._lock:
            self._write_steps(state, images, action, reward, flags, values, new)

    def _write_steps(self, state: np.ndarray, images: dict[str, np.ndarray],
                     action: np.ndarray, reward: np.ndarray, flags: dict[str, np.ndarray],
                     values: dict[str, np.ndarray], new: np.ndarray) -> None:
        """Write N steps (observation rows 0..N, per-step arrays of N) exactly as N add()
        calls would: step i writes its obs row i to a new slot where ``new[i]``, else its
        obs is the slot written just before (slot cursor - 1 for step 0), then its next_obs
        row i + 1. Fancy-indexed, no per-step Python. The caller holds the lock."""
        cap, n = self.capacity, len(new)
        # Writes are numbered 0..m-1 in the order add() would make them; write p goes to
        # slot (cursor + p) % capacity.
        next_pos = np.arange(n) + np.cumsum(new)  # write of step i's next_obs (row i + 1)
        start_pos = next_pos - 1  # where step i's obs is: its own write or the one before
        m = int(next_pos[-1]) + 1
        rows = np.empty(m, np.int64)
        rows[next_pos] = np.arange(1, n + 1)
        rows[start_pos[new]] = np.flatnonzero(new)
        # Writes before `first` are overwritten again by this very call: skip them.
        first = max(0, m - cap)
        slots = (self._cursor + np.arange(first, m)) % cap
        rows = rows[first:]
        # The usual batch (no break inside) reads one contiguous run of rows: a view, which
        # spares a copy of every frame.
        src: slice | np.ndarray = rows
        if rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
            src = slice(int(rows[0]), int(rows[-1]) + 1)
        start_slots = (self._cursor + start_pos) % cap
        # A step's fields stay in its start slot until a later step starts there (as with
        # sequential adds), so the last step per slot wins; which of several values numpy
        # keeps for a repeated index is unspecified, hence the dedup when the ring wraps.
        steps: slice | np.ndarray = slice(None)
        if m > cap:
            _, last = np.unique(start_slots[::-1], return_index=True)
            steps = n - 1 - last
        # A step's transition survives unless this call writes its start slot again.
        live = start_slots[start_pos >= m - cap]

        self._size -= int(np.count_nonzero(self._valid[slots]))
        self._valid[slots] = False  # first: these slots no longer hold what they pointed at
        self._index_cache = None
        self._state[slots] = state[src]
        for cam, img in images.items():
            self._images[cam][slots] = img[src]
        field_slots = start_slots[steps]
        self._action[field_slots] = action[steps]
        self._reward[field_slots] = reward[steps]
        for name, flag in flags.items():
            self._flags[name][field_slots] = flag[steps]
        for name, value in values.items():
            self._extras[name][field_slots] = value[steps]
        self._size += int(np.count_nonzero(~self._valid[live]))
        self._valid[live] = True
        self._cursor = (self._cursor + m) % cap
        self._filled = min(cap, self._filled + m)
        self._writes += m
        self._open = not (bool(flags["terminated"][-1]) or bool(flags["truncated"][-1]))

    def _write_obs(self, slot: int, state: np.ndarray, images: dict[str, np.ndarray]) -> None:
        # Clear first: slot `slot` no longer holds what any earlier transition pointed at.
        if self._valid[slot]:
            self._valid[slot] = False
            self._size -= 1
            self._index_cache = None
        self._state[slot] = state
        for cam, img in images.items():
            self._images[cam][slot] = img
        self._cursor = (slot + 1) % self.capacity
        self._filled = min(self.capacity, self._filled + 1)
        self._writes += 1

    def _set_valid(self, slot: int) -> None:
        if not self._valid[slot]:
            self._valid[slot] = True
            self._size += 1
            self._index_cache = None

    def _check_obs(self, obs: Mapping[str, Any], what: str
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not isinstance(obs, Mapping) or "state" not in obs:
            raise ValueError(f"{what}: expected a dict with 'state' (and 'images')")
        state = self._check_array(f"{what}['state']", obs["state"], (self.state_size,))
        images = dict(obs.get("images") or {})
        if set(images) != set(self.image_shapes):
            raise ValueError(f"{what}['images']: cameras {sorted(images)} differ from the "
                             f"buffer's {sorted(self.image_shapes)}")
        images = {cam: self._check_frames(f"{what}['images'][{cam!r}]", cam, img)
                  for cam, img in images.items()}
        return state, images

    def _check_frames(self, what: str, cam: str, value: Any, n: int | None = None
                      ) -> np.ndarray:
        # One frame (n None) or n stacked uint8 frames of camera `cam`.
        shape = self.image_shapes[cam] if n is None else (n, *self.image_shapes[cam])
        return self._check_array(what, value, shape, np.uint8)

    @staticmethod
    def _check_array(what: str, value: Any, shape: tuple[int, ...],
                     dtype: type | None = None) -> np.ndarray:
        # Shapes are checked exactly, because assignment would silently broadcast; frames
        # must already have the buffer's dtype, because a cast from float to uint8 would
        # silently wrap (and float32 -> float16 silently overflow to inf).
        arr = np.asarray(value)
        if arr.shape != tuple(shape) or (dtype is not None and arr.dtype != dtype):
            want = f"shape {tuple(shape)}" + (f" dtype {np.dtype(dtype)}" if dtype else "")
            raise ValueError(f"{what}: expected {want}, got shape {arr.shape} dtype {arr.dtype}")
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{what}: expected numbers, got dtype {arr.dtype}")
        return arr

    def _extra_values(self, given: Mapping[str, Any], t: int | None) -> dict[str, Any]:
        values = {}
        for name in self.extras:
            if name not in given:
                raise ValueError(f"extra {name!r} is configured for this buffer but was not "
                                 f"given (got {sorted(given)})")
            if given[name] is None:  # np.asarray(None, np.float32) would be NaN
                raise ValueError(f"extra {name!r} is None")
            arr = np.asarray(given[name], np.float32)
            want = () if t is None else (t,)
            if arr.size != (1 if t is None else t):
                raise ValueError(f"extra {name!r}: expected shape {want}, got {arr.shape}")
            values[name] = arr.reshape(want)
        return values

    # ------------------------------------------------------------------ sampling

    def valid_indices(self) -> np.ndarray:
        """Slots that start a sampleable transition, ascending (a fresh copy)."""
        with self._lock:
            return self._indices().copy()

    def _indices(self) -> np.ndarray:
        if self._index_cache is None:
            self._index_cache = np.flatnonzero(self._valid)
        return self._index_cache

    def empty_batch(self, batch_size: int) -> Batch:
        """Uninitialised arrays shaped like ``sample(batch_size, ...)``'s result.

        The memory is recycled from earlier batches that nothing references any more
        (see _BatchPool), so it holds stale data until filled.
        """
        return self._pool.take(int(batch_size))

    def sample(self, batch_size: int, rng: np.random.Generator,
               out: Batch | None = None) -> Batch:
        """Draw ``batch_size`` transitions uniformly with replacement.

        Returns ``{"obs": {"state", "images": {cam}}, "next_obs": {...}, "action",
        "reward", "mask", "terminated", "truncated", "intervened", <extras>}`` with a
        leading batch axis. ``mask`` is float32 ``1 - terminated``: a truncated transition
        keeps mask 1 so the critic bootstraps through time limits. ``out`` (from
        ``empty_batch``) is filled in place instead of allocating; only pass a batch
        nothing else still reads (JAX on CPU may alias numpy memory).
        """
        with self._lock:
            indices = self._indices()
            if len(indices) == 0:
                raise ValueError("cannot sample from an empty replay buffer")
            picked = indices[rng.integers(0, len(indices), size=int(batch_size))]
            return self._gather(picked, out)

    def gather(self, indices: np.ndarray, out: Batch | None = None) -> Batch:
        """The transitions starting at the given slots (all must be in valid_indices())."""
        indices = np.asarray(indices, np.int64)
        with self._lock:
            if indices.size and (indices.min() < 0 or indices.max() >= self.capacity
                                 or not self._valid[indices].all()):
                raise ValueError("gather: some indices are not sampleable transitions")
            return self._gather(indices, out)

    def _gather(self, idx: np.ndarray, out: Batch | None) -> Batch:
        b = len(idx)
        if out is None:
            out = self.empty_batch(b)
        else:
            self._pool.check(out, b)
        nxt = idx + 1  # mode="wrap" below maps capacity to slot 0
        # np.take(..., out=) with mode != "raise" writes straight into the output (no
        # intermediate buffer); indices are known to be in range.
        for key, rows in (("obs", idx), ("next_obs", nxt)):
            np.take(self._state, rows, axis=0, out=out[key]["state"], mode="wrap")
            for cam, frames in self._images.items():
                np.take(frames, rows, axis=0, out=out[key]["images"][cam], mode="wrap")
        np.take(self._action, idx, axis=0, out=out["action"], mode="wrap")
        np.take(self._reward, idx, out=out["reward"], mode="wrap")
        for name, flags in self._flags.items():
            np.take(flags, idx, out=out[name], mode="wrap")
        for name, values in self._extras.items():
            np.take(values, idx, out=out[name], mode="wrap")
        np.logical_not(out["terminated"], out=out["mask"], casting="unsafe")
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a snapshot (format in the module docstring) atomically to ``path``."""
        path = Path(path)
        with self._lock:
            header = self._header()
            arrays = {name: arr[:self._filled] for name, arr in self._arrays().items()}
            arrays[HEADER] = np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8)
            atomic_write(path, lambda fileobj: np.savez(fileobj, **arrays))

    @property
    def chunk_slots(self) -> int:
        """Slots per file of a chunked snapshot: a power of two of at most ~16 MB."""
        row = sum(a.itemsize * int(np.prod(a.shape[1:])) for a in self._arrays().values())
        return min(self.capacity, 1 << max(0, int(np.log2(CHUNK_BYTES / row))))

    def save_chunks(self, directory: str | os.PathLike[str], name: str) -> str:
        """Write a chunked snapshot: ``<name>.json`` in ``directory`` names one ``.npz`` per
        ``chunk_slots`` slots. Only the chunks written since this buffer's last chunked
        snapshot (saved or loaded) get new files, ``<name>.<chunk>.npz``; the others are
        named from that snapshot, so the cost follows what was added, not the buffer's
        size. Returns the manifest's file name. Every file is written atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            c, filled = self.chunk_slots, self._filled
            files = {k: f for k, f in self._chunk_files.items() if k * c < filled}
            changed = self._changed_chunks(c)
            arrays = self._arrays()
            for k in range(-(-filled // c)):
                if k in files and k not in changed:
                    continue
                lo, hi = k * c, min((k + 1) * c, filled)
                files[k] = f"{name}.{k}.npz"
                atomic_write(directory / files[k], lambda f, lo=lo, hi=hi: np.savez(
                    f, **{n: a[lo:hi] for n, a in arrays.items()}))
            header = {**self._header(), "chunk_slots": c,
                      "chunks": [files[k] for k in range(len(files))]}
            manifest = f"{name}.json"
            atomic_write(directory / manifest,
                         lambda f: f.write(json.dumps(header).encode("utf-8")))
            self._chunk_files, self._saved_writes = files, self._writes
        return manifest

    def _changed_chunks(self, c: int) -> set[int]:
        """Chunks holding a slot written since the last chunked snapshot. The writes end at
        the cursor; the slot before them is included, since continuing an episode sets the
        fields and ``valid`` of the slot written last."""
        n = self._writes - self._saved_writes + 1
        if n >= self.capacity:
            return set(range(-(-self.capacity // c)))
        start = (self._cursor - n) % self.capacity
        ranges = [(start, min(start + n, self.capacity))]
        if start + n > self.capacity:
            ranges.append((0, start + n - self.capacity))
        return {k for lo, hi in ranges for k in range(lo // c, (hi - 1) // c + 1)}

    def _header(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "spec": self.spec,
                "cursor": self._cursor, "filled": self._filled, "open": self._open}

    @staticmethod
    def snapshot_files(path: str | os.PathLike[str]) -> list[str]:
        """The files a snapshot consists of (names in its directory): an ``.npz`` is one;
        a chunked snapshot's manifest names its chunks. Raises ReplayFileError."""
        path = Path(path)
        if path.suffix != ".json":
            return [path.name]
        return [path.name, *_read_manifest(path)["chunks"]]

    @classmethod
    def load(cls, path: str | os.PathLike[str],
             expect: Mapping[str, Any] | None = None) -> ReplayBuffer:
        """Read a snapshot written by ``save`` (``.npz``) or ``save_chunks`` (``.json``);
        sampling and adding continue identically.

        ``expect`` is an optional subset of ``spec`` (e.g. ``{"image_shapes": ...}``) the
        file must match. Any problem raises ReplayFileError naming the file.
        """
        path = Path(path)
        if path.suffix == ".json":
            return cls._from_chunks(path, expect)
        with _open_npz(path) as npz:
            def fail(msg: str) -> ReplayFileError:
                return ReplayFileError(f"{path}: {msg}")

            if HEADER not in npz.files:
                raise fail(f"no {HEADER!r} array; not a {FORMAT} snapshot")
            try:
                header = json.loads(npz[HEADER].tobytes().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise fail(f"{HEADER!r} is not UTF-8 JSON ({e})") from e
            except NPZ_READ_ERRORS as e:
                raise _damaged(path, e) from e
            buf = cls._from_header(path, header, expect)
            buf._fill(path, npz, 0, header["filled"], {HEADER})
        return buf._finish(path, header)

    @classmethod
    def _from_chunks(cls, path: Path, expect: Mapping[str, Any] | None) -> ReplayBuffer:
        header = _read_manifest(path)
        buf = cls._from_header(path, header, expect)
        c, filled, chunks = header.get("chunk_slots"), header["filled"], header["chunks"]
        if type(c) is not int or c < 1 or len(chunks) != -(-filled // c):
            raise ReplayFileError(f"{path}: {len(chunks)} chunks of {c!r} slots do not hold "
                                  f"{filled} slots")
        for k, name in enumerate(chunks):
            chunk = path.parent / name
            with _open_npz(chunk) as npz:
                buf._fill(chunk, npz, k * c, min((k + 1) * c, filled), set())
        # The next chunked snapshot rewrites only what changes after this one.
        buf._chunk_files = dict(enumerate(chunks))
        return buf._finish(path, header)

    @classmethod
    def _from_header(cls, path: Path, header: Any, expect: Mapping[str, Any] | None
                     ) -> ReplayBuffer:
        """An empty buffer of the snapshot's spec, once its header is checked."""
        def fail(msg: str) -> ReplayFileError:
            return ReplayFileError(f"{path}: {msg}")

        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise fail(f"format is not {FORMAT!r}")
        version = header.get("version")
        if version == 2:
            raise fail("version 2 holds float feature frames of the removed feature cache; "
                       "a frozen encoder's features now travel in the state "
                       "(env.frozen_encoder): start a new run")
        if version != VERSION:
            raise fail(f"version {version!r} is not supported (this hilrl reads version "
                       f"{VERSION})")
        spec, cursor, filled = header.get("spec"), header.get("cursor"), header.get("filled")
        if not (isinstance(spec, dict) and type(cursor) is int and type(filled) is int
                and type(header.get("open")) is bool):
            raise fail("header lacks 'spec', 'cursor', 'filled' or 'open'")
        for key, want in (expect or {}).items():
            got = spec.get(key)
            if key == "image_shapes" and isinstance(want, Mapping):
                want = {cam: list(s) for cam, s in want.items()}
            elif key == "extras":
                want = list(want)
            if got != want:
                raise fail(f"{key} is {got!r}, expected {want!r}")
        try:
            buf = cls(**spec)
        except (TypeError, ValueError, MemoryError) as e:
            raise fail(f"invalid spec in header ({type(e).__name__}: {e})") from e
        # Until the first wrap the cursor is the number of slots written.
        if not (0 <= cursor < buf.capacity and 0 <= filled <= buf.capacity
                and (filled == buf.capacity or cursor == filled)):
            raise fail(f"cursor {cursor} / filled {filled} inconsistent with capacity "
                       f"{buf.capacity}")
        return buf

    def _fill(self, path: Path, npz: Any, lo: int, hi: int, other: set[str]) -> None:
        """Copy slots [lo, hi) from an open snapshot file, checking every array."""
        targets = self._arrays()
        if set(npz.files) != set(targets) | other:
            raise ReplayFileError(f"{path}: arrays {sorted(npz.files)} do not match the header "
                                  f"(expected {sorted(set(targets) | other)})")
        for name, target in targets.items():  # one member in memory at a time
            try:
                arr = npz[name]
            except NPZ_READ_ERRORS as e:
                raise _damaged(path, e) from e
            if arr.shape != (hi - lo, *target.shape[1:]) or arr.dtype != target.dtype:
                raise ReplayFileError(
                    f"{path}: array {name!r} is shape {arr.shape} dtype {arr.dtype}, expected "
                    f"{(hi - lo, *target.shape[1:])} {target.dtype}")
            target[lo:hi] = arr

    def _finish(self, path: Path, header: dict[str, Any]) -> ReplayBuffer:
        cursor, filled = header["cursor"], header["filled"]
        valid = self._valid
        # A transition needs its next slot written, and the newest slot has no next yet.
        bad = valid.any() and (filled < 2 or (filled < self.capacity and valid[filled - 1])
                               or valid[(cursor - 1) % self.capacity])
        if bad:
            raise ReplayFileError(f"{path}: 'valid' marks a transition whose next observation "
                                  "was never written")
        self._cursor, self._filled, self._open = cursor, filled, header["open"]
        self._size = int(np.count_nonzero(valid))
        return self


CHUNK_BYTES = 16 << 20  # a chunked snapshot's file size, at most (one slot at the least)


def _damaged(path: Path, e: BaseException) -> ReplayFileError:
    return ReplayFileError(f"{path}: damaged replay snapshot ({type(e).__name__}: "
                           f"{str(e)[:200]})")


class _open_npz:
    """``np.load`` of an .npz, pickle refused, every failure a ReplayFileError."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Any:
        try:
            with open(self.path, "rb") as fh:
                magic = fh.read(4)
        except OSError as e:
            raise ReplayFileError(f"{self.path}: cannot open replay snapshot ({e})") from e
        if magic != b"PK\x03\x04":  # np.load would try to unpickle anything else
            raise ReplayFileError(f"{self.path}: not a replay snapshot (.npz); empty, truncated "
                                  "or some other file")
        try:
            self.npz = np.load(self.path, allow_pickle=False)
        except NPZ_READ_ERRORS as e:
            raise _damaged(self.path, e) from e
        return self.npz

    def __exit__(self, *exc: object) -> None:
        self.npz.close()


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        header = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ReplayFileError(f"{path}: cannot open replay snapshot ({e})") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReplayFileError(f"{path}: not a replay snapshot manifest ({e})") from e
    chunks = header.get("chunks") if isinstance(header, dict) else None
    if not (isinstance(chunks, list) and all(
            isinstance(n, str) and _NAME_RE.fullmatch(n) for n in chunks)):
        raise ReplayFileError(f"{path}: its 'chunks' are not a list of file names")
    return header


class _BatchPool:
    """Hands out batch arrays carved from a few recycled memory blocks.

    Fresh 50 MB batches (256 x 2 cameras x 128^2, obs + next_obs) cost ~4 ms of page
    faults each, as much as the gather itself. A block is reused only once nothing
    references it: every array carved from it, every view of those, and every JAX array
    aliasing them (jax on CPU wraps numpy memory without copying, and keeps the numpy
    array alive) holds a reference to the block, so CPython's refcount says when the
    memory is free. Unreferenced blocks beyond ``keep`` are simply not pooled.
    """

    _ALIGN = 64

    def __init__(self, layout: list[tuple[tuple[str, ...], tuple[int, ...], Any]],
                 keep: int = 6) -> None:
        self._layout = [(path, shape, np.dtype(dtype)) for path, shape, dtype in layout]
        self._keep = keep
        self._blocks: list[np.ndarray] = []
        self._lock = threading.Lock()

    def _sizes(self, b: int) -> list[int]:
        a = self._ALIGN
        return [-(-b * int(np.prod(shape)) * dtype.itemsize // a) * a
                for _, shape, dtype in self._layout]

    def take(self, b: int) -> Batch:
        sizes = self._sizes(b)
        total = max(sum(sizes), 1)
        block = None
        with self._lock:
            # Idle = referenced by the list and by getrefcount's argument only.
            free = [i for i in range(len(self._blocks))
                    if sys.getrefcount(self._blocks[i]) == 2]
            same = [i for i in free if self._blocks[i].nbytes == total]
            if same:
                block = self._blocks[same[0]]
            else:
                block = np.empty(total, np.uint8)
                if len(self._blocks) < self._keep:
                    self._blocks.append(block)
                elif free:  # replace an idle block of another batch size
                    self._blocks[free[0]] = block
        batch: Batch = {}
        offset = 0
        for (path, shape, dtype), size in zip(self._layout, sizes, strict=True):
            n = b * int(np.prod(shape)) * dtype.itemsize
            arr = block[offset:offset + n].view(dtype).reshape(b, *shape)
            offset += size
            node = batch
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = arr
        for key in ("obs", "next_obs"):  # keep the documented shape with zero cameras
            batch[key].setdefault("images", {})
        return batch

    def check(self, batch: Any, b: int) -> None:
        """Raise ValueError unless ``batch`` has every array ``take(b)`` would give."""
        # np.take(out=) checks shapes itself, but the mask write would broadcast silently.
        for path, shape, dtype in self._layout:
            node = batch
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if (not isinstance(node, np.ndarray) or node.shape != (b, *shape)
                    or node.dtype != dtype or not node.flags.c_contiguous):
                raise ValueError(f"out[{'/'.join(path)}]: expected a C-contiguous {dtype} "
                                 f"array of shape {(b, *shape)}")


def _slice_batch(batch: Any, sl: slice) -> Any:
    if isinstance(batch, dict):
        return {k: _slice_batch(v, sl) for k, v in batch.items()}
    return batch[sl]  # a view: rows of a C-contiguous array stay contiguous


class MixedSampler:
    """Batches with ``round(ratio * B)`` rows from ``demo`` (first) and the rest from ``online``.

    Rounds half up. When one buffer is empty every row comes from the other; both empty
    raises ValueError. Both buffers must share everything in their spec but capacity. The
    rows are written straight into one batch (no concatenation copy).
    """

    def __init__(self, online: ReplayBuffer, demo: ReplayBuffer, ratio: float = 0.5) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        a = {k: v for k, v in online.spec.items() if k != "capacity"}
        b = {k: v for k, v in demo.spec.items() if k != "capacity"}
        if a != b:
            raise ValueError(f"online and demo buffers differ: {a} vs {b}")
        self.online, self.demo, self.ratio = online, demo, float(ratio)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """A batch like ``ReplayBuffer.sample``'s; rows [0, n_demo) are demo rows."""
        n_online, n_demo_avail = len(self.online), len(self.demo)
        if n_online == 0 and n_demo_avail == 0:
            raise ValueError("cannot sample: both the online and the demo buffer are empty")
        b = int(batch_size)
        # Transitions only become unsampleable by being replaced, so a non-empty buffer
        # stays non-empty and these counts hold when sampled below.
        if n_demo_avail == 0:
            n_demo = 0
        elif n_online == 0:
            n_demo = b
        else:
            n_demo = int(np.floor(self.ratio * b + 0.5))
        out = self.online.empty_batch(b)
        if n_demo:
            self.demo.sample(n_demo, rng, out=_slice_batch(out, slice(0, n_demo)))
        if n_demo < b:
            self.online.sample(b - n_demo, rng, out=_slice_batch(out, slice(n_demo, b)))
        return out


_DONE = object()  # queued by the prefetch thread when it stops


class Prefetcher:
    """Runs ``sample_fn()`` on a daemon thread, keeping up to ``depth`` batches ready.

    numpy's copies release the GIL, so sampling overlaps with the (JAX) update on the
    main thread. ``sample_fn`` runs only on the prefetch thread, so it may own its
    ``np.random.Generator`` (Generators are not thread-safe: do not share one). Adding to
    the sampled buffers from other threads is safe (ReplayBuffer locks). If ``sample_fn``
    raises, the batches made before are delivered, then ``next()`` re-raises that
    exception (and keeps raising it). ``close()`` stops the thread; use it as a context
    manager or iterator.
    """

    def __init__(self, sample_fn: Callable[[], Batch], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._fn = sample_fn
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="hilrl-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._put(self._fn()):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._error = e
        self._put(_DONE)

    def next(self, timeout: float | None = None) -> Batch:
        """The next batch; waits up to ``timeout`` seconds (None: forever) -> TimeoutError."""
        if self._closed:
            raise RuntimeError("Prefetcher is closed")
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no batch within {timeout} s") from None
        if item is _DONE:
            self._queue.put(_DONE)  # the producer is gone; later calls fail the same way
            if self._error is not None:
                raise self._error
            raise RuntimeError("Prefetcher thread stopped")
        return item

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and drop queued batches (idempotent)."""
        self._closed = True
        self._stop.set()
        while True:  # drain so a blocked put() notices the stop at once
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the prefetch thread is still running."""
        return self._thread.is_alive()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Batch:
        return self.next()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
