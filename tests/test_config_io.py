from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pytest
import yaml

from hilrl.config.io import (
    ConfigError,
    declared_keys,
    dump_config,
    from_dict,
    load_config,
    merge,
    parse_overrides,
    rest_field,
    to_dict,
)


@dataclass(frozen=True)
class Camera:
    name: str
    size: tuple[int, int] = (128, 128)
    crop: tuple[float, ...] | None = None


@dataclass
class Env:
    hz: float = 10.0
    max_steps: int = 100
    render: bool = False
    mode: Literal["sim", "real"] = "sim"
    cameras: list[Camera] = field(default_factory=lambda: [Camera("front")])
    joint_limits: list[float] = field(default_factory=lambda: [-1.0, 1.0])
    seeds: list[int] = field(default_factory=list)
    reward_weights: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hz <= 0:
            raise ValueError(f"hz must be positive, got {self.hz}")


@dataclass(frozen=True)
class Agent:
    lr: float = 3e-4
    hidden: tuple[int, ...] = (256, 256)
    checkpoint: str | None = None
    n_critics: Literal[1, 2, 10] = 2


@dataclass
class Task:
    name: str
    env: Env = field(default_factory=Env)
    agent: Agent = field(default_factory=Agent)
    tag: int | str = 0


FULL = {
    "name": "pick_cube",
    "env": {
        "hz": 20,
        "max_steps": 50,
        "render": True,
        "mode": "real",
        "cameras": [
            {"name": "wrist", "size": [64, 48], "crop": [0.1, 0.2, 0.9, 1]},
            {"name": "front"},
        ],
        "joint_limits": [-2, 2.5],
        "seeds": [1, 2, 3],
        "reward_weights": {"grasp": 1, "lift": 0.5},
        "extra": {"anything": [1, "two", {"three": None}]},
    },
    "agent": {"lr": 0.001, "hidden": [64], "checkpoint": "ckpt/latest", "n_critics": 10},
    "tag": "v2",
}


def test_from_dict_builds_nested_typed_config():
    cfg = from_dict(Task, FULL)
    assert cfg.name == "pick_cube"
    assert cfg.env.hz == 20.0 and isinstance(cfg.env.hz, float)
    assert cfg.env.render is True and cfg.env.mode == "real"
    assert cfg.env.cameras == [
        Camera("wrist", (64, 48), (0.1, 0.2, 0.9, 1.0)),
        Camera("front", (128, 128), None),
    ]
    assert isinstance(cfg.env.cameras[0].size, tuple)
    assert all(isinstance(x, float) for x in cfg.env.cameras[0].crop)
    assert cfg.env.joint_limits == [-2.0, 2.5] and isinstance(cfg.env.joint_limits[0], float)
    assert cfg.env.seeds == [1, 2, 3]
    assert cfg.env.reward_weights == {"grasp": 1.0, "lift": 0.5}
    assert cfg.env.extra == {"anything": [1, "two", {"three": None}]}
    assert cfg.agent == Agent(lr=0.001, hidden=(64,), checkpoint="ckpt/latest", n_critics=10)
    assert cfg.tag == "v2"


def test_defaults_and_default_factories_are_used():
    cfg = from_dict(Task, {"name": "t"})
    assert cfg == Task(name="t")
    assert cfg.env.cameras == [Camera("front")]
    assert cfg.env.cameras is not from_dict(Task, {"name": "t"}).env.cameras


def test_to_dict_is_plain_and_round_trips():
    cfg = from_dict(Task, FULL)
    plain = to_dict(cfg)
    assert plain["env"]["cameras"][0]["size"] == [64, 48]
    assert plain["agent"]["hidden"] == [64]
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain  # only YAML-safe types inside
    assert from_dict(Task, plain) == cfg


def test_dump_and_load_round_trip(tmp_path):
    cfg = from_dict(Task, FULL)
    path = tmp_path / "task.yaml"
    dump_config(cfg, path)
    text = path.read_text()
    assert text.index("name:") < text.index("env:") < text.index("agent:")  # field order
    assert load_config(Task, path) == cfg
    assert load_config(Task, str(path)) == cfg


def test_yaml_exponent_without_dot_is_accepted_for_float(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nagent:\n  lr: 3e-4\n")
    assert load_config(Task, path).agent.lr == pytest.approx(3e-4)


def test_parse_overrides_nested_and_yaml_values():
    got = parse_overrides(
        [
            "env.hz=20",
            "env.cameras=[{name: a, size: [64, 64]}]",
            "name=foo",
            "agent.checkpoint=null",
        ]
    )
    assert got == {
        "env": {"hz": 20, "cameras": [{"name": "a", "size": [64, 64]}]},
        "name": "foo",
        "agent": {"checkpoint": None},
    }
    assert parse_overrides(["a.b=x=y"]) == {"a": {"b": "x=y"}}
    assert parse_overrides(["a.b=1", "a.c=2", "a.b=3"]) == {"a": {"b": 3, "c": 2}}


@pytest.mark.parametrize("bad", ["env.hz", "=3", ".a=1", "a..b=1", "a.=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        parse_overrides([bad])


def test_merge_is_deep_and_does_not_mutate():
    base = {"a": {"b": 1, "c": {"d": 2}}, "l": [1, 2]}
    out = merge(base, {"a": {"c": {"e": 3}}, "l": [9]})
    assert out == {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "l": [9]}
    assert base == {"a": {"b": 1, "c": {"d": 2}}, "l": [1, 2]}
    assert merge({"a": {"b": 1}}, {"a": 5}) == {"a": 5}


def test_overrides_take_precedence_over_file(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("name: from_file\nenv:\n  hz: 5\n  max_steps: 7\n")
    cfg = load_config(Task, path, ["env.hz=20", "agent.hidden=[32, 32]"])
    assert cfg.name == "from_file"
    assert cfg.env.hz == 20.0 and cfg.env.max_steps == 7
    assert cfg.agent.hidden == (32, 32)
    assert load_config(Task, None, ["name=cli_only"]) == Task(name="cli_only")


def test_overrides_are_type_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"env\.max_steps: expected int, got 'lots' \(str\)"):
        load_config(Task, None, ["name=x", "env.max_steps=lots"])


def _err(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(Task, merge({"name": "t"}, data))
    return str(info.value)


def test_unknown_key_names_path_and_suggests():
    msg = _err({"env": {"cameras": [{"name": "a"}, {"name": "b", "szie": [1, 2]}]}})
    assert msg.startswith("env.cameras[1].szie: unknown key")
    assert "known keys: name, size, crop" in msg
    assert "did you mean 'size'?" in msg


def test_unknown_top_level_key_without_close_match():
    msg = _err({"zzzzzz": 1})
    assert msg.startswith("zzzzzz: unknown key") and "did you mean" not in msg


@pytest.mark.parametrize(
    "data, pattern",
    [
        ({"env": {"hz": "fast"}}, r"^env\.hz: expected float, got 'fast' \(str\)"),
        ({"env": {"max_steps": True}}, r"^env\.max_steps: expected int, got True \(bool\)"),
        ({"env": {"hz": False}}, r"^env\.hz: expected float, got False \(bool\)"),
        ({"env": {"max_steps": 2.5}}, r"^env\.max_steps: expected int, got 2\.5 \(float\)"),
        ({"env": {"render": 1}}, r"^env\.render: expected bool, got 1 \(int\)"),
        ({"env": {"render": "yes please"}}, r"^env\.render: expected bool"),
        ({"env": {"hz": None}}, r"^env\.hz: expected float, got None"),
        ({"env": {"seeds": [1, True]}}, r"^env\.seeds\[1\]: expected int, got True \(bool\)"),
        ({"env": {"joint_limits": 3}}, r"^env\.joint_limits: expected list\[float\], got 3"),
        ({"env": {"reward_weights": {"grasp": "x"}}}, r"^env\.reward_weights\.grasp: expected"),
        (
            {"env": {"cameras": [{"name": "a", "size": [1, 2, 3]}]}},
            r"^env\.cameras\[0\]\.size: expected tuple\[int, int\] with 2 items, got 3",
        ),
        (
            {"env": {"cameras": [{"name": "a", "size": [1, 2.5]}]}},
            r"^env\.cameras\[0\]\.size\[1\]: expected int",
        ),
        (
            {"env": {"cameras": [{"name": "a", "crop": ["x"]}]}},
            r"^env\.cameras\[0\]\.crop\[0\]: expected float",
        ),
        ({"env": {"cameras": ["front"]}}, r"^env\.cameras\[0\]: expected a mapping for Camera"),
        ({"env": {"mode": "sime"}}, r"^env\.mode: expected one of 'sim', 'real', got 'sime'"),
        ({"agent": {"n_critics": True}}, r"^agent\.n_critics: expected one of 1, 2, 10, got True"),
        ({"agent": {"checkpoint": 5}}, r"^agent\.checkpoint: expected str, got 5 \(int\)"),
        ({"tag": 1.5}, r"^tag: expected int \| str, got 1\.5 \(float\)"),
        ({"env": 3}, r"^env: expected a mapping for Env, got 3 \(int\)"),
    ],
)
def test_type_errors_name_key_expected_and_value(data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_dict(Task, merge({"name": "t"}, data))


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"^name: missing required key"):
        from_dict(Task, {})
    with pytest.raises(ConfigError, match=r"^env\.cameras\[0\]\.name: missing required key"):
        from_dict(Task, {"name": "t", "env": {"cameras": [{"size": [1, 1]}]}})


def test_post_init_value_error_is_prefixed_with_path():
    with pytest.raises(ConfigError, match=r"^env: hz must be positive, got -1\.0"):
        from_dict(Task, {"name": "t", "env": {"hz": -1}})
    with pytest.raises(ConfigError, match=r"^Env: hz must be positive"):
        from_dict(Env, {"hz": 0})


def test_non_mapping_top_level(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: top level must be a mapping.*got list"):
        load_config(Task, path)


def test_empty_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(Task, path, ["name=x"]) == Task(name="x")


def test_yaml_syntax_error_mentions_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: t\nenv:\n  hz: 10\n  cameras: [a, b\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML at line 5"):
        load_config(Task, path)


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope" / "task.yaml"
    with pytest.raises(ConfigError, match=r"nope/task\.yaml: config file not found"):
        load_config(Task, path)


def test_error_from_file_value_names_the_file(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("name: t\nenv:\n  hz: fast\n")
    with pytest.raises(ConfigError, match=r"^env\.hz: expected float.*task\.yaml"):
        load_config(Task, path)


def test_python_object_tag_is_rejected_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match=r"evil\.yaml: invalid YAML at line 1.*python/object"):
        load_config(Task, path)
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        parse_overrides([f'name=!!python/object/apply:os.system ["touch {marker}"]'])
    assert not marker.exists()


def test_overrides_must_be_a_list():
    with pytest.raises(ConfigError, match="list of strings"):
        parse_overrides("env.hz=3")  # type: ignore[arg-type]


# --- keys a class does not declare: plug-in hardware settings ----------------------------------


@dataclass(frozen=True)
class Lens:
    name: str
    driver: str = "usb"
    settings: dict[str, Any] = rest_field()  # every other key: the driver's


@dataclass(frozen=True)
class Rig:
    robot: str = "sim"
    hz: float = 10.0
    lenses: list[Lens] = field(default_factory=list)
    sections: dict[str, dict[str, Any]] = rest_field(sections=True)  # only name: {...}

    __moved_keys__: ClassVar[dict[str, str]] = {"rate": "moved: write hz instead"}


def test_rest_fields_collect_unknown_keys_and_round_trip():
    data = {"robot": "arm", "arm": {"host": "h", "gains": [1, 2]},
            "lenses": [{"name": "front", "driver": "usb", "source": 0, "fps": 30}]}
    rig = from_dict(Rig, data)
    assert rig.sections == {"arm": {"host": "h", "gains": [1, 2]}}
    assert rig.lenses[0].settings == {"source": 0, "fps": 30}
    plain = to_dict(rig)
    assert plain["arm"] == {"host": "h", "gains": [1, 2]} and "sections" not in plain
    assert plain["lenses"][0] == {"name": "front", "driver": "usb", "source": 0, "fps": 30}
    assert from_dict(Rig, plain) == rig
    assert declared_keys(Rig) == ["robot", "hz", "lenses"]


def test_sections_rest_field_still_refuses_a_mistyped_plain_key():
    with pytest.raises(ConfigError, match=r"^hzz: unknown key; known keys: robot, hz, lenses "
                                          r"\(did you mean 'hz'\?\)"):
        from_dict(Rig, {"hzz": 3})
    with pytest.raises(ConfigError, match=r"^rate: moved: write hz instead"):
        from_dict(Rig, {"rate": 3})
