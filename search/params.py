"""A preset's ``space``: its searched fields and gates, and the gated walk over them.

A field is a range (``low``/``high``, optional ``log``) or a list of ``choices``, proposed only
``when`` a gate is on, or ``unless`` it is. A gate (``{gate: true}``) is a yes/no choice that
switches a group of fields on or off: ``then`` and ``otherwise`` map fields to what the gate fixes
when it is on and when it is off. A gate may itself sit under a gate (``when``/``unless``); a gate
its own gate leaves undecided counts as off, and fixes nothing. A field whose values depend on a
gate is a list of alternatives, each under its own gate state, e.g. ImageNet ResNets unless the
``foundation`` gate picks a ViT:

    backbone:
      - {choices: [resnet18, resnet50], unless: foundation}
      - {choices: [dinov2_vits14, dinov2_vitb14], when: foundation}

No Optuna or Ray here: a machine with torch alone reads presets and draws configs (``draw``).
"""

import dataclasses
import difflib
import itertools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from iic.config import IICConfig

SPEC_KEYS = {"low", "high", "log", "choices", "when", "unless", "gate", "then", "otherwise"}


class PresetError(ValueError):
    """A preset that cannot be searched; the message names the entry and the fix."""


@dataclass(frozen=True)
class Param:
    """One searched field (a float/int range or a list of choices), or a gate."""

    name: str  # unique in the space: the field's name, with "@gate" for an alternative
    kind: str  # "float", "int", "categorical" or "gate"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    when: str | None = None  # proposed only while this gate is on ...
    unless: str | None = None  # ... or only while this gate is off (or undecided)
    off: tuple = ()  # a gate's (field, value) pairs for when it is off
    on: tuple = ()  # ... and for when it is on
    field: str = ""  # the IICConfig field a searched param sets (its name, but for an alternative)

    def __post_init__(self):
        if not self.field and self.kind != "gate":
            object.__setattr__(self, "field", self.name)

    @property
    def options(self) -> list:
        """The values of a categorical field or a gate."""
        return list(self.choices) if self.kind == "categorical" else [False, True]

    def active(self, gates: dict[str, bool]) -> bool:
        """Whether the param is proposed, given the gates decided so far (undecided ones are off)."""
        if self.when is not None and not gates.get(self.when, False):
            return False
        return self.unless is None or not gates.get(self.unless, False)

    def spec(self) -> dict:
        """The param as a preset's ``space`` entry (``parse_space`` reads it back)."""
        if self.kind == "gate":
            spec = {"gate": True, **({"then": dict(self.on)} if self.on else {}), "otherwise": dict(self.off)}
        elif self.kind == "categorical":
            spec = {"choices": list(self.choices)}
        else:
            spec = {"low": self.low, "high": self.high, "log": self.log}
        return spec | {key: gate for key, gate in (("when", self.when), ("unless", self.unless)) if gate}


def parse_space(space: dict | None) -> list[Param]:
    """The space's params, gates first, each after the gate it sits under (a field's gate is
    decided before it, whatever the file's order: a YAML writer may sort the keys), otherwise in
    the file's order. An alternative's entries come back as one ``Param`` each."""
    params = []
    for name, spec in (space or {}).items():
        if isinstance(spec, list):
            params += parse_alternatives(name, spec)
        else:
            params.append(parse_param(name, spec))
    gates = {p.name: p for p in params if p.kind == "gate"}
    ordered: list[Param] = []
    while len(ordered) < len(gates):
        ready = [
            g
            for g in gates.values()
            if g not in ordered and all(parent in (o.name for o in ordered) for parent in parents(g) if parent in gates)
        ]
        if not ready:
            loop = ", ".join(g.name for g in gates.values() if g not in ordered)
            raise PresetError(f"space: the gates {loop} sit under each other in a loop; one must be decided first")
        ordered += ready
    return ordered + [p for p in params if p.kind != "gate"]


def parents(param: Param) -> list[str]:
    return [gate for gate in (param.when, param.unless) if gate is not None]


def parse_alternatives(name: str, specs: list) -> list[Param]:
    """A field with one entry per gate state (``[{..., unless: g}, {..., when: g}]``)."""
    if not specs or not all(isinstance(spec, dict) and not spec.get("gate") for spec in specs):
        raise PresetError(f"space.{name}: a list gives alternatives of one field, each a range or choices")
    conditions = [(spec.get("when"), spec.get("unless")) for spec in specs]
    if any(when is None and unless is None for when, unless in conditions) or len(set(conditions)) < len(specs):
        raise PresetError(
            f"space.{name}: each alternative needs its own `when: GATE` or `unless: GATE`, so that one at most is "
            "proposed at a time"
        )
    return [
        dataclasses.replace(
            parse_param(name, spec), name=f"{name}@{'not_' + spec['unless'] if spec.get('unless') else spec['when']}"
        )
        for spec in specs
    ]


def parse_param(name: str, spec) -> Param:
    fields = {f.name: f for f in dataclasses.fields(IICConfig)}
    if not isinstance(spec, dict):
        raise PresetError(
            f"space.{name}: expected a mapping such as {{low: 0.1, high: 0.9}} or {{choices: [...]}}, got {spec!r}"
        )
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise PresetError(
            f"space.{name}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; use low/high/log, choices, when or "
            "unless, or gate with then and otherwise"
        )
    when, unless = spec.get("when"), spec.get("unless")
    if spec.get("gate"):
        if name in fields:
            raise PresetError(f"space.{name}: a gate cannot share its name with an IICConfig field")
        on, off = spec.get("then") or {}, spec.get("otherwise") or {}
        for key, values in (("then", on), ("otherwise", off)):
            if not isinstance(values, dict) or any(field not in fields for field in values):
                raise PresetError(
                    f"space.{name}: {key} must map IICConfig fields to their values when the gate is "
                    f"{'on' if key == 'then' else 'off'}, e.g. {{overcluster_k: 0}}"
                )
        return Param(name, "gate", when=when, unless=unless, off=tuple(off.items()), on=tuple(on.items()))
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        raise PresetError(f"space.{name}: not an IICConfig field" + (f" — did you mean {close[0]!r}?" if close else ""))
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise PresetError(f"space.{name}: choices must be a non-empty list")
        return Param(name, "categorical", choices=tuple(choices), when=when, unless=unless, field=name)
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
    return Param(name, kind, low=low, high=high, log=log, when=when, unless=unless, field=name)


def space_spec(params: list[Param]) -> dict:
    """The params as a preset's ``space`` section (alternatives as one list per field)."""
    space: dict = {}
    for param in params:
        if param.kind != "gate" and param.name != param.field:
            space.setdefault(param.field, []).append(param.spec())
        else:
            space[param.name] = param.spec()
    return space


def assign(params: list[Param], choose: Callable[[Param], Any]) -> tuple[dict, dict]:
    """Walk the params in order and ask ``choose(param)`` for the value of each one whose gate (if
    it has one) is on. Returns the chosen values by param name (gates included) and the IICConfig
    fields that the gates decided fix (their ``then`` or ``otherwise``)."""
    chosen, fixed = {}, {}
    for param in params:
        if not param.active(chosen):
            continue
        chosen[param.name] = choose(param)
        if param.kind == "gate":
            fixed.update(param.on if chosen[param.name] else param.off)
    return chosen, fixed


def gate_states(params: list[Param]) -> list[tuple[dict, dict]]:
    """Every way the gates can be decided: (the decided gates, the fields they fix), each once."""
    gates = [p for p in params if p.kind == "gate"]
    states = {}
    for values in itertools.product([False, True], repeat=len(gates)):
        by_name = dict(zip((g.name for g in gates), values, strict=True))
        chosen, fixed = assign(gates, lambda gate, by_name=by_name: by_name[gate.name])
        states[tuple(sorted(chosen.items()))] = (chosen, fixed)
    return list(states.values())


def config_point(params: list[Param], config: dict) -> dict:
    """The values of the params, by param name, that would reproduce ``config`` (a complete
    IICConfig dict): searched fields at the config's values, a gate on when the config matches its
    ``then`` values (or, without them, unless it matches its ``otherwise`` values)."""

    def value(param: Param):
        if param.kind == "gate":
            if param.on:
                return all(config.get(k) == v for k, v in param.on)
            return not param.off or any(config.get(k) != v for k, v in param.off)
        return config[param.field]

    return assign(params, value)[0]


def config_changes(params: list[Param], chosen: dict, fixed: dict) -> dict:
    """The IICConfig fields that ``assign``'s result sets (gates are not fields)."""
    return {**{p.field: chosen[p.name] for p in params if p.kind != "gate" and p.name in chosen}, **fixed}


def draw(param: Param, rng: np.random.Generator):
    """A value of ``param`` drawn uniformly (log-uniformly for a log range), as Optuna's random sampler
    does; plain Python types, so that it writes to JSON and YAML as it is."""
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
