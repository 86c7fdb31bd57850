"""Typed config loading: YAML task files + ``key.sub=value`` overrides -> nested dataclasses.

Only ``yaml.safe_load``/``yaml.safe_dump`` are used, so a config file can never build Python
objects. Every error is a :class:`ConfigError` that names the dotted key it is about, e.g.
``env.cameras[1].szie: unknown key; known keys: name, size, crop (did you mean 'size'?)``.

Conversion rules: an int is accepted for a float (converted); a bool is never accepted for
an int/float, nor a number for a bool; a list is accepted for a tuple (converted, length
checked for fixed-length tuples); None only where the type is ``X | None``; a ``Literal``
checks membership. A float field also accepts a string such as ``3e-4``, because YAML 1.1
(PyYAML) reads exponent notation without a dot as a string.

A dataclass may declare one :func:`rest_field`: it collects the keys the class does not name
(the settings of plug-in hardware, which the core cannot type; their own dataclasses check
them when the env is built), and :func:`to_dict` writes them back in place. A class may also
name keys that moved in ``__moved_keys__ = {"old": "what to write instead"}`` (refused with
that message), or that moved somewhere this class still reads in ``__renamed_keys__ = {"old":
"new.dotted.key"}`` (an old file keeps loading: the value is moved to its new key; writing
both is refused).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")
_REST = "hilrl.config.rest"  # dataclass field metadata marking the field of unknown keys
_SCI_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config file, override or value that does not fit the config dataclasses."""


def rest_field(*, sections: bool = False) -> Any:
    """A field (a dict) collecting the keys its dataclass does not declare.

    ``sections=False``: every unknown key lands here (flat settings, e.g. a camera driver's
    ``source``/``fps`` next to the camera's own keys). ``sections=True``: only ``name: {...}``
    mappings do (a settings section per hardware kind); any other unknown key is still an
    error with its did-you-mean, so a typo like ``hzz: 3`` is caught when the file loads.
    """
    return dataclasses.field(default_factory=dict,
                             metadata={_REST: "sections" if sections else "any"})


def _rest(cls: type) -> dataclasses.Field | None:
    return next((f for f in dataclasses.fields(cls) if _REST in f.metadata), None)


def declared_keys(cls: type) -> list[str]:
    """The keys a config dataclass declares (without its rest field), in order."""
    rest = _rest(cls)
    return [f.name for f in dataclasses.fields(cls) if f.init and f is not rest]


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if tp is Any:
        return "Any"
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is None or not args:
        return getattr(tp, "__name__", repr(tp))
    inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
    return f"{getattr(origin, '__name__', origin)}[{inner}]"


def _mismatch(path: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{path}: expected {expected}, got {value!r} ({type(value).__name__})")


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the type ``tp`` and return it converted (tuples, floats)."""
    if tp is Any or tp is object:
        return value
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _mismatch(path, _type_name(tp), value)
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: let X's own (possibly nested) error through
            return _convert(options[0], value, path)
        for option in options:
            try:
                return _convert(option, value, path)
            except ConfigError:
                continue
        raise _mismatch(path, _type_name(tp), value)
    if origin is Literal:
        for allowed in args:  # compare types too, so True does not match Literal[1]
            if type(value) is type(allowed) and value == allowed:
                return allowed
        choices = ", ".join(map(repr, args))
        raise ConfigError(f"{path}: expected one of {choices}, got {value!r}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _mismatch(path, f"a mapping for {tp.__name__}", value)
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise _mismatch(path, "bool", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _mismatch(path, "int", value)
        return value
    if tp is float:
        if isinstance(value, str) and _SCI_FLOAT.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _mismatch(path, "float", value)
        return float(value)
    container = origin or tp
    if container in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _mismatch(path, _type_name(tp), value)
        if container is list or not args or (len(args) == 2 and args[1] is Ellipsis):
            item_type = args[0] if args else Any
            items = [_convert(item_type, v, f"{path}[{i}]") for i, v in enumerate(value)]
            return items if container is list else tuple(items)
        if len(value) != len(args):
            raise ConfigError(
                f"{path}: expected {_type_name(tp)} with {len(args)} items, "
                f"got {len(value)}: {value!r}"
            )
        return tuple(
            _convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if container is dict:
        if not isinstance(value, Mapping):
            raise _mismatch(path, _type_name(tp), value)
        key_type, val_type = args if args else (Any, Any)
        return {
            _convert(key_type, k, _join(path, k)): _convert(val_type, v, _join(path, k))
            for k, v in value.items()
        }
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _mismatch(path, _type_name(tp), value)
    return value


def unknown_key(path: str, known: Sequence[str], *, what: str = "known keys") -> ConfigError:
    """The error for an unknown key at the dotted ``path``, naming the known ones and the
    closest of them (did-you-mean)."""
    key = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{path}: unknown key; {what}: {', '.join(known)}{hint}")


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build the dataclass ``cls`` from a (nested) mapping, checking keys and types."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    where = path or cls.__name__
    if not isinstance(data, Mapping):
        raise _mismatch(where, f"a mapping for {cls.__name__}", data)
    hints = typing.get_type_hints(cls)
    rest = _rest(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f is not rest}
    moved: Mapping[str, str] = getattr(cls, "__moved_keys__", {})
    data = _renamed(cls, data, path)
    unknown: dict[str, Any] = {}
    for key, value in data.items():
        if key in fields:
            continue
        if key in moved:
            raise ConfigError(f"{_join(path, key)}: {moved[key]}")
        if rest is not None and (rest.metadata[_REST] == "any" or isinstance(value, Mapping)):
            unknown[key] = value
            continue
        raise unknown_key(_join(path, key), fields)
    kwargs = {}
    if rest is not None:
        kwargs[rest.name] = _convert(hints[rest.name], unknown, path)
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, name)}: missing required key")
    try:
        return cls(**kwargs)
    except ValueError as e:  # raised by __post_init__ validation
        raise ConfigError(f"{where}: {e}") from e


def _renamed(cls: type, data: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """``data`` with the keys ``cls.__renamed_keys__`` names moved to their new dotted keys."""
    renamed: Mapping[str, str] = getattr(cls, "__renamed_keys__", {})
    if not any(key in data for key in renamed):
        return data
    out = dict(data)
    for old, new in renamed.items():
        if old not in out:
            continue
        *parents, leaf = new.split(".")
        node = out
        for part in parents:
            child = node.get(part, {})
            if not isinstance(child, Mapping):
                raise _mismatch(_join(path, part), "a mapping", child)
            node[part] = node = dict(child)
        if leaf in node:
            raise ConfigError(f"{_join(path, old)}: also written as {_join(path, new)}; keep "
                              f"only {_join(path, new)} (its new place)")
        node[leaf] = out.pop(old)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        rest = _rest(type(value))
        plain = {f.name: _plain(getattr(value, f.name))
                 for f in dataclasses.fields(value) if f.init and f is not rest}
        if rest is not None:  # the collected keys go back where the file had them
            plain.update(_plain(getattr(value, rest.name)))
        return plain
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain YAML/JSON-safe dict (tuples become lists) that round-trips via from_dict."""
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        raise TypeError(f"to_dict needs a dataclass instance, got {obj!r}")
    return _plain(obj)


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Turn ``["env.hz=20", "name=foo"]`` into a nested dict; later overrides win."""
    if isinstance(args, str):
        raise ConfigError(f"overrides must be a list of strings, got the string {args!r}")
    result: dict[str, Any] = {}
    for arg in args:
        key, eq, text = arg.partition("=")
        parts = key.strip().split(".")
        if not eq or not all(p.strip() for p in parts):
            raise ConfigError(f"bad override {arg!r}: expected the form key.sub=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"bad override {arg!r}: value is not valid YAML ({e})") from None
        for part in reversed(parts):
            value = {part.strip(): value}
        result = merge(result, value)
    return result


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge into a new dict: mappings merge recursively, anything else replaces."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:  # an empty file means "all defaults"
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping of keys to values, got {type(data).__name__}"
        )
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Read the YAML file at ``path`` (or start empty if None), apply overrides, build ``cls``."""
    data = _read_yaml(Path(path)) if path is not None else {}
    data = merge(data, parse_overrides(overrides))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        if path is None:
            raise
        raise ConfigError(f"{e} [while loading {path}]") from e


def dump_config(obj: Any, path: str | Path) -> None:
    """Write ``obj`` (a dataclass instance) as YAML that load_config reads back."""
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_dict(obj), fh, sort_keys=False)
