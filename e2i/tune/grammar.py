"""The grammar of the ``space:`` section of a search space: distributions, conditional blocks, and
their validation against the train-config fields they name.

    space:                                    # dotted train-config key -> distribution
      model.type: {choice: [siglip, clip, attention, mlp]}
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.hidden_dim: {int: [64, 512], step: 64}
      model.dropout: {quniform: [0.0, 0.3, 0.05]}
      conditional:                            # blocks sampled only when `when` holds
        - when: {model.type: attention}       # value or [values]; several keys = all must hold
          model.num_heads: {choice: [2, 4, 8]}

Distributions: ``choice: [...]``, ``uniform: [lo, hi]``, ``loguniform: [lo, hi]``, ``int: [lo, hi]``
(+ ``step``/``q``, or ``log: true``), ``quniform: [lo, hi, q]`` (``uniform`` + ``step`` is the same).
Keys are ``seed`` and fields of model/loss/optim, plus ``data.train[i].repeat`` / ``.weight`` of a
mixed train set whose parts the base config lists (e.g. ``data.train[1].repeat: {choice: [1, 3, 5]}``).
A condition may only name a ``choice`` parameter of the enclosing scopes (the root or a parent block);
a key may appear in several blocks only if their conditions exclude each other.

:func:`parse_block` turns the section into a tree of :class:`Block` (a scope's :class:`Param` s, then
its conditional blocks); each entry is checked here, errors name the field path
(``space.optim.lr.loguniform: low > high (0.1 > 0.01)``). The whole document, and the check of the
configs the tree can produce, are :mod:`e2i.tune.space`. No ray or optuna import here.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from e2i.config import HEAD_TYPES, LOSS_TYPES, PRECISIONS, TrainConfig
from e2i.errors import ConfigError

KINDS = ("choice", "uniform", "loguniform", "int", "quniform")
NAMED_CHOICES = {"model.type": HEAD_TYPES, "loss.type": LOSS_TYPES, "optim.precision": PRECISIONS}
SEARCHABLE_SECTIONS = ("model", "loss", "optim")  # + the top-level `seed` and MIX_KEY
MIX_KEY = re.compile(r"data\.train\[\d+\]\.(repeat|weight)")  # e.g. data.train[1].repeat: {choice: [1, 3]}
FIXED_KEYS = {  # keys a search must not vary, with the reason shown to the user
    "optim.epochs": "trial length is scheduler.max_t",
    "optim.min_steps_per_epoch": "it sets the length of an epoch, the unit of scheduler.max_t and ASHA's rungs",
    "metric": "the objective must be the same for every trial",
}


# --------------------------------------------------------------------------------------------------
# Distributions and conditional blocks


@dataclass(frozen=True)
class Param:
    """One searched config field; ``key`` is also the Optuna parameter name."""

    key: str
    kind: str  # one of KINDS
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None  # quantisation (int, uniform/quniform)
    log: bool = False  # loguniform, or int with log: true

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial (or anything with the same suggest_* methods) for a value."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list:
        """Values checked at load: every choice / small int range, else the ends and the middle."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            step = self.step or 1
            values = list(range(self.low, self.high + 1, step))
            if len(values) <= 16 and not self.log:
                return values
            return sorted({self.low, values[len(values) // 2], values[-1]})
        high = self.high
        if self.step:  # Optuna rounds the top down onto the grid low + k * step
            high = self.low + math.floor((self.high - self.low) / self.step + 1e-9) * self.step
        return [self.low, high]

    def draw(self, rng: random.Random) -> Any:
        """A random value (for load-time checks; the search itself samples through Optuna)."""
        if self.kind == "choice":
            return rng.choice(self.choices)
        if self.kind == "int":
            return rng.choice(range(self.low, self.high + 1, self.step or 1))
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        value = rng.uniform(self.low, self.high)
        if self.step:
            value = min(self.high, self.low + round((value - self.low) / self.step) * self.step)
        return value


@dataclass(frozen=True)
class Condition:
    """All of ``key in values`` must hold (keys are choice parameters of enclosing scopes)."""

    requires: tuple[tuple[str, tuple], ...]

    def holds(self, values: dict[str, Any]) -> bool:
        return all(key in values and values[key] in allowed for key, allowed in self.requires)

    def excludes(self, other: Condition) -> bool:
        """True when no assignment can satisfy both (same key, disjoint values)."""
        mine = dict(self.requires)
        return any(key in mine and not set(mine[key]) & set(allowed) for key, allowed in other.requires)

    def __str__(self) -> str:
        return ", ".join(f"{k} in {list(v)}" if len(v) > 1 else f"{k}={v[0]}" for k, v in self.requires)


@dataclass(frozen=True)
class Block:
    """A scope of the space: its own params, then nested conditional blocks (in file order)."""

    params: tuple[Param, ...] = ()
    blocks: tuple[Block, ...] = ()
    when: Condition | None = None  # None for the root

    def suggest(self, trial: Any, values: dict[str, Any]) -> None:
        """Define-by-run: suggest own params, then the blocks whose condition holds (in place)."""
        for param in self.params:
            values[param.key] = param.suggest(trial)
        for block in self.blocks:
            if block.when.holds(values):
                block.suggest(trial, values)

    def all_params(self) -> Iterator[Param]:
        yield from self.params
        for block in self.blocks:
            yield from block.all_params()

    def grid(self, values: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every combination of the params' grid values, conditional blocks expanded where active."""
        keys = [p.key for p in self.params]
        for combo in itertools.product(*(p.grid() for p in self.params)):
            yield from _expand_blocks(self.blocks, {**values, **dict(zip(keys, combo))})

    def draw(self, rng: random.Random, values: dict[str, Any]) -> None:
        for param in self.params:
            values[param.key] = param.draw(rng)
        for block in self.blocks:
            if block.when.holds(values):
                block.draw(rng, values)


def _expand_blocks(blocks: tuple[Block, ...], values: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if not blocks:
        yield values
        return
    first, rest = blocks[0], blocks[1:]
    if first.when.holds(values):
        for expanded in first.grid(values):
            yield from _expand_blocks(rest, expanded)
    else:
        yield from _expand_blocks(rest, values)


# --------------------------------------------------------------------------------------------------
# Parsing


def fail(source: str, where: str, message: str) -> ConfigError:
    """The error of one entry: ``<source>: <field path>: <message>``."""
    return ConfigError(f"{source}: {where}: {message}")


def _field_type(key: str) -> Any:
    """Annotation of a dotted TrainConfig field ('model.num_heads' -> int); KeyError if unknown."""
    cls: Any = TrainConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise KeyError(", ".join(sorted(f.name for f in fields(cls))))
        cls = hints[part]
        is_section = hasattr(cls, "__dataclass_fields__")
        if is_section != (i < len(parts) - 1):
            raise KeyError("a section, not a field" if is_section else "a field, not a section")
    return cls


def _scalar_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _check_key(key: str, source: str, where: str) -> Any:
    if key in FIXED_KEYS:
        raise fail(source, where, f"cannot be searched ({FIXED_KEYS[key]})")
    if MIX_KEY.fullmatch(key):  # the mix of a mixed train set (the base's data.train lists the parts)
        return float
    section = key.split(".")[0]
    if key != "seed" and section not in SEARCHABLE_SECTIONS:
        sections = ", ".join(f"{s}.*" for s in SEARCHABLE_SECTIONS)
        raise fail(source, where, f"cannot be searched (searchable: seed, {sections}, data.train[i].repeat"
                   "/weight; data is set in `data:`, resources in `search.resources_per_trial`)")
    try:
        return _scalar_type(_field_type(key))
    except KeyError as exc:
        detail = exc.args[0]
        raise fail(source, where, f"not a train-config field ({detail})" if detail.startswith("a ")
                   else f"unknown key (valid keys here: {detail})") from None


def _number(value: Any, source: str, where: str) -> float | int:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(source, where, f"expected a number, got {value!r}")
    return value


def _parse_choice(key: str, tp: Any, values: Any, source: str, where: str) -> Param:
    if not isinstance(values, list):
        raise fail(source, where, f"expected a list of values, got {type(values).__name__}")
    if not values:
        raise fail(source, where, "empty choice list")
    out = []
    for i, value in enumerate(values):
        at = f"{where}[{i}]"
        if isinstance(value, (list, dict)):
            raise fail(source, at, f"choices must be scalars, got {value!r}")
        if key in NAMED_CHOICES and value not in NAMED_CHOICES[key]:
            raise fail(source, at, f"{value!r} is not one of {', '.join(NAMED_CHOICES[key])}")
        out.append(_coerce_value(value, tp, source, at))
    if len(set(map(repr, out))) != len(out):
        raise fail(source, where, f"duplicate values in {values}")
    return Param(key, "choice", choices=tuple(out))


def _coerce_value(value: Any, tp: Any, source: str, where: str) -> Any:
    if value is None:
        return None
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and not isinstance(value, bool):
        return float(_number(value, source, where))
    if tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    expected = getattr(tp, "__name__", tp)
    raise fail(source, where, f"expected {expected}, got {type(value).__name__} {value!r}")


def _parse_range(key: str, tp: Any, kind: str, spec: dict, source: str, where: str) -> Param:
    bounds = spec[kind]
    at = f"{where}.{kind}"
    need = 3 if kind == "quniform" else 2
    if not isinstance(bounds, list) or len(bounds) != need:
        form = "[low, high, q]" if need == 3 else "[low, high]"
        raise fail(source, at, f"expected {form}, got {bounds!r}")
    numbers = [_number(v, source, f"{at}[{i}]") for i, v in enumerate(bounds)]
    low, high = numbers[0], numbers[1]
    step = numbers[2] if kind == "quniform" else spec.get("step", spec.get("q"))
    log = kind == "loguniform" or bool(spec.get("log", False))
    if tp not in (int, float):
        raise fail(source, at, f"{key} is a {getattr(tp, '__name__', tp)} field: use choice: [...]")
    if kind == "int" or tp is int:
        if kind != "int":
            raise fail(source, at, f"{key} is an int field: use int: [low, high]")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in bounds):
            raise fail(source, at, f"int bounds must be integers, got {bounds!r}")
    if low > high:
        raise fail(source, at, f"low > high ({low} > {high})")
    if log and low <= 0:
        raise fail(source, at, f"log scale needs low > 0, got {low}")
    if step is not None:
        step = _number(step, source, f"{where}.step")
        if kind == "int" and (not isinstance(step, int) or isinstance(step, bool)):
            raise fail(source, f"{where}.step", f"must be an integer for int ranges, got {step!r}")
        if step <= 0:
            raise fail(source, f"{where}.step", f"must be > 0, got {step}")
        if log:
            raise fail(source, f"{where}.step", "cannot quantise a log-scale range")
        if step > high - low and high > low:
            raise fail(source, f"{where}.step", f"larger than the range ({step} > {high - low})")
    return Param(key, kind, low=low, high=high, step=step, log=log)


def _parse_param(key: str, spec: Any, source: str, where: str) -> Param:
    tp = _check_key(key, source, where)
    if not isinstance(spec, dict):
        raise fail(source, where,
                   f"expected a mapping like {{choice: [...]}} or {{loguniform: [lo, hi]}}, got {spec!r}")
    kinds = [k for k in spec if k in KINDS]
    extra = sorted(set(spec) - set(KINDS) - {"step", "q", "log"})
    if extra:
        raise fail(source, f"{where}.{extra[0]}", f"unknown key (valid: {', '.join(KINDS)}, step, q, log)")
    if len(kinds) != 1:
        raise fail(source, where, f"needs exactly one of {', '.join(KINDS)}, got {kinds or 'none'}")
    kind = kinds[0]
    if kind == "choice":
        if set(spec) != {"choice"}:
            raise fail(source, where, "choice takes no step/q/log")
        return _parse_choice(key, tp, spec["choice"], source, f"{where}.choice")
    if kind == "quniform" and ("step" in spec or "q" in spec):
        raise fail(source, where, "quniform takes q as its third value, not step/q")
    if kind != "int" and "log" in spec:
        raise fail(source, f"{where}.log", "only int ranges take log (use loguniform)")
    if kind == "loguniform" and ("step" in spec or "q" in spec):
        raise fail(source, f"{where}.step", "cannot quantise a log-scale range")
    return _parse_range(key, tp, kind, spec, source, where)


def _parse_condition(when: Any, scope: dict[str, Param], source: str, where: str) -> Condition:
    if not isinstance(when, dict) or not when:
        raise fail(source, where, f"expected a mapping like {{model.type: attention}}, got {when!r}")
    requires = []
    for key, value in when.items():
        at = f"{where}.{key}"
        if key not in scope:
            searched = ", ".join(k for k, p in scope.items() if p.kind == "choice") or "none"
            raise fail(source, at, f"conditions must name a choice parameter searched in an enclosing "
                       f"scope (available: {searched})")
        param = scope[key]
        if param.kind != "choice":
            raise fail(source, at, f"{key} is a {param.kind} range; conditions need a choice parameter")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v not in param.choices:
                raise fail(source, at, f"{v!r} is not one of the choices of {key} "
                           f"({', '.join(map(str, param.choices))})")
        requires.append((key, tuple(values)))
    return Condition(tuple(requires))


def parse_block(mapping: Any, scope: dict[str, Param], source: str, where: str,
                when: Condition | None = None) -> Block:
    """Parse a scope's entries; ``scope`` holds the params visible to conditions (enclosing scopes)."""
    if not isinstance(mapping, dict):
        raise fail(source, where, f"expected a mapping, got {type(mapping).__name__}")
    params: list[Param] = []
    for key, spec in mapping.items():
        if key in ("conditional", "when"):
            continue
        at = f"{where}.{key}"
        if key in scope:
            raise fail(source, at, "searched twice (already in an enclosing scope)")
        params.append(_parse_param(key, spec, source, at))
    inner = {**scope, **{p.key: p for p in params}}
    blocks = []
    entries = mapping.get("conditional", [])
    if not isinstance(entries, list):
        raise fail(source, f"{where}.conditional", "expected a list of blocks (- when: {...} ...)")
    for i, entry in enumerate(entries):
        at = f"{where}.conditional[{i}]"
        if not isinstance(entry, dict) or "when" not in entry:
            raise fail(source, at, "each conditional block needs `when: {key: value}` and its entries")
        cond = _parse_condition(entry["when"], inner, source, f"{at}.when")
        blocks.append(parse_block(entry, inner, source, at, cond))
    _check_overlaps(blocks, source, where)
    return Block(params=tuple(params), blocks=tuple(blocks), when=when)


def _check_overlaps(blocks: list[Block], source: str, where: str) -> None:
    """A key defined in two sibling blocks must live in mutually exclusive blocks."""
    for (i, a), (j, b) in itertools.combinations(enumerate(blocks), 2):
        shared = {p.key for p in a.all_params()} & {p.key for p in b.all_params()}
        if shared and not a.when.excludes(b.when):
            raise fail(source, f"{where}.conditional[{j}]",
                       f"{min(shared)} is also searched in conditional[{i}] and both blocks can be "
                       f"active ({a.when} / {b.when})")
