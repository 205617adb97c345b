"""The preset file format (``search/presets/*.yaml``), read without Optuna or Ray.

``search/space.py`` builds the Optuna search on top of it; ``benchmarks/record_curves.py`` samples
configs from the same files on machines that have torch but no Ray, Optuna or MLflow. This module
therefore imports nothing beyond ``iic`` and numpy.

A preset's ``space`` holds one entry per searched field (see ``search/space.py`` for the format);
``parse_space`` turns it into ``Param``s, and ``assign`` walks them in order, asking a chooser (an
Optuna trial, or a random generator) for the value of every field whose gate is on.
"""

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from iic.config import IICConfig, read_yaml

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
PRESET_SECTIONS = ("description", "extends", "config", "space", "search", "pbt")


class PresetError(ValueError):
    """A preset that cannot be searched; the message names the entry and the fix."""


@dataclass(frozen=True)
class Param:
    """One searched field: a float/int range or a list of choices, or a gate."""

    name: str
    kind: str  # "float", "int", "categorical" or "gate"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    when: str | None = None  # proposed only while this gate is on ...
    unless: str | None = None  # ... or only while this gate is off
    off: tuple = ()  # a gate's (field, value) pairs for when it is off

    @property
    def options(self) -> list:
        """The values of a categorical field or a gate."""
        return list(self.choices) if self.kind == "categorical" else [False, True]

    def active(self, gates: dict[str, bool]) -> bool:
        """Whether the field is proposed, given the gates decided so far."""
        if self.when is not None and not gates.get(self.when, False):
            return False
        return self.unless is None or not gates.get(self.unless, True)

    def spec(self) -> dict:
        """The param as a preset's ``space`` entry (``parse_space`` reads it back)."""
        if self.kind == "gate":
            return {"gate": True, "otherwise": dict(self.off)}
        spec = (
            {"choices": list(self.choices)}
            if self.kind == "categorical"
            else {"low": self.low, "high": self.high, "log": self.log}
        )
        return spec | {key: gate for key, gate in (("when", self.when), ("unless", self.unless)) if gate}


def available_presets() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def read_preset(name_or_path: str) -> tuple[Path, dict]:
    """The file of a bundled preset (by name) or of a YAML path, and its contents, with the training
    config file it ``extends`` merged under its own ``config`` section."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise PresetError(
            f"unknown preset {name_or_path!r}: choose one of {', '.join(available_presets())} or give a YAML file path"
        )
    raw = read_yaml(path, PresetError) or {}
    if raw.get("extends"):
        # A training config file (configs/*.yaml) under the preset's own config section.
        extended = (path.parent / raw["extends"]).resolve()
        if not extended.is_file():
            raise PresetError(
                f"{path}: extends {raw['extends']!r}, which does not exist (paths are relative to the preset)"
            )
        raw["config"] = {**(read_yaml(extended, PresetError) or {}), **(raw.get("config") or {})}
    return path, raw


def check_sections(raw: dict) -> None:
    unknown = set(raw) - set(PRESET_SECTIONS)
    if unknown:
        raise PresetError(f"unknown section(s) {', '.join(sorted(unknown))}; a preset has {', '.join(PRESET_SECTIONS)}")


def parse_space(space: dict | None) -> list[Param]:
    """The space's params, gates first (so a field's gate is decided before it, whatever order the
    file lists them in: a YAML writer may sort the keys), otherwise in the file's order."""
    params = [parse_param(name, spec) for name, spec in (space or {}).items()]
    return sorted(params, key=lambda param: param.kind != "gate")


def parse_param(name: str, spec) -> Param:
    fields = {f.name: f for f in dataclasses.fields(IICConfig)}
    if not isinstance(spec, dict):
        raise PresetError(
            f"space.{name}: expected a mapping such as {{low: 0.1, high: 0.9}} or {{choices: [...]}}, got {spec!r}"
        )
    unknown = set(spec) - {"low", "high", "log", "choices", "when", "unless", "gate", "otherwise"}
    if unknown:
        raise PresetError(
            f"space.{name}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; use low/high/log, choices, when or "
            "unless, or gate and otherwise"
        )
    when, unless = spec.get("when"), spec.get("unless")
    if spec.get("gate"):
        if name in fields:
            raise PresetError(f"space.{name}: a gate cannot share its name with an IICConfig field")
        off = spec.get("otherwise") or {}
        if not isinstance(off, dict) or any(key not in fields for key in off):
            raise PresetError(
                f"space.{name}: otherwise must map IICConfig fields to their values when the gate is off, e.g. "
                f"{{overcluster_k: 0}}"
            )
        return Param(name, "gate", off=tuple(off.items()))
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        raise PresetError(f"space.{name}: not an IICConfig field" + (f" — did you mean {close[0]!r}?" if close else ""))
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise PresetError(f"space.{name}: choices must be a non-empty list")
        return Param(name, "categorical", choices=tuple(choices), when=when, unless=unless)
    if "low" not in spec or "high" not in spec:
        raise PresetError(f"space.{name}: give low and high (a range) or choices (a list)")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise PresetError(f"space.{name}: low and high must be numbers, got {low!r} and {high!r}")
    if low >= high:
        raise PresetError(
            f"space.{name}: low ({low}) must be below high ({high}); for a fixed value put it under config"
        )
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise PresetError(f"space.{name}: a log range needs low > 0 (got {low})")
    kind = "int" if fields[name].type is int else "float"
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise PresetError(f"space.{name}: {name} is an integer field; low and high must be integers")
    return Param(name, kind, low=low, high=high, log=log, when=when, unless=unless)


def assign(params: list[Param], choose: Callable[[Param], Any]) -> tuple[dict, dict]:
    """Walk the params in order and ask ``choose(param)`` for the value of each one whose gate (if
    it has one) is on. Returns the chosen values by param name (gates included) and the IICConfig
    fields that the gates chosen off fix (their ``otherwise``)."""
    chosen, fixed = {}, {}
    for param in params:
        if not param.active(chosen):
            continue
        chosen[param.name] = choose(param)
        if param.kind == "gate" and not chosen[param.name]:
            fixed.update(param.off)
    return chosen, fixed


def config_changes(params: list[Param], chosen: dict, fixed: dict) -> dict:
    """The IICConfig fields that ``assign``'s result sets (gates are not fields)."""
    return {**{p.name: chosen[p.name] for p in params if p.kind != "gate" and p.name in chosen}, **fixed}


def draw(param: Param, rng: np.random.Generator):
    """A value of ``param`` drawn uniformly (log-uniformly for a log range), as Optuna's random
    sampler draws it; plain Python types, so that it writes to JSON and YAML as it is."""
    if param.kind in ("categorical", "gate"):
        options = param.options
        return options[int(rng.integers(len(options)))]
    if param.kind == "int":
        if param.log:
            return int(round(float(np.exp(rng.uniform(np.log(param.low), np.log(param.high))))))
        return int(rng.integers(int(param.low), int(param.high) + 1))
    if param.log:
        return float(np.exp(rng.uniform(np.log(param.low), np.log(param.high))))
    return float(rng.uniform(param.low, param.high))
