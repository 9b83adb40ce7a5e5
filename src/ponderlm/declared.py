"""Declared options: a dataclass field made with `option(...)` carries its checks (type from the annotation,
finiteness, range, choices) and help in its metadata, and `declarations` reads them back, so validation, CLI flags
and documentation are built from one declaration. A leaf module (no torch, no transformers): the run config
(`ponderlm.train.config`) declares its sections with it too, and `ponderlm plan` / `--help` stay light."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any


@dataclasses.dataclass(frozen=True)
class Declared:
    """One declared option: name, default, type (bool, int, float, str or a list of one), whether None is allowed,
    and what `option` put in its metadata: checks, help, whether it is an inference knob and its sweep points."""

    name: str
    default: Any
    type: Any
    nullable: bool
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    help: str = ""
    knob: bool = False
    sweep: tuple | None = None

    def problem(self, value: Any, label: str | None = None) -> str | None:
        """What is wrong with `value` ('<label> must be ..., got ...'), or None. NaN passes every `<` / `>` check and
        would only surface later (a NaN loss blamed on the lr), so finiteness is checked first."""
        label, kind, lo, hi = label or self.name, self.type, self.low, self.high
        if value is None:
            return None if self.nullable else f"{label} must be set, got None"
        if self.choices is not None:
            return None if value in self.choices else f"{label} must be {self.what()}, got {value!r}"
        if typing.get_origin(kind) in (list, tuple):
            item = dataclasses.replace(self, type=typing.get_args(kind)[0], nullable=False)
            if isinstance(value, (list, tuple)) and value and not any(map(item.problem, value)):
                return None
            return f"{label} must be a non-empty list of {item.what(plural=True)}, got {value!r}"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is float and not (number and math.isfinite(value)):
            return f"{label} must be a finite number, got {value!r}"
        if (kind in (int, bool, str) and (not isinstance(value, kind) or (kind is int) != number)) or number and (
                (lo is not None and (value <= lo if self.low_open else value < lo))
                or (hi is not None and (value >= hi if self.high_open else value > hi))):
            return f"{label} must be {self.what()}, got {value!r}"
        return None

    def what(self, plural: bool = False) -> str:
        """'a finite number in [0, 1)', 'an integer >= 0', 'integers >= 0' (plural), 'one of a, b', ..."""
        if self.choices is not None:
            return f"one of {', '.join(map(str, self.choices))}"
        kind = {int: "an integer", bool: "true or false", str: "a string"}.get(self.type, "a finite number")
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            bound = f" in {'(' if self.low_open else '['}{lo:g}, {hi:g}{')' if self.high_open else ']'}"
        elif lo is not None or hi is not None:
            strict = self.low_open if lo is not None else self.high_open
            bound = f" {'>' if lo is not None else '<'}{'' if strict else '='} {lo if lo is not None else hi:g}"
        else:
            bound = ""
        return (kind.split(" ", 1)[-1] + "s" if plural else kind) + bound


def option(default: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, choices: Any = None, help: str = "", knob: bool = False, sweep: Any = None) -> Any:
    """A dataclass field with its declared checks (type from the annotation, finiteness, range, choices): a
    method's `Options` (checked on every config by `PonderConfig.validate`) or a run-config section (checked by
    `ponderlm.train.config.validate`); `knob=True` makes it an inference knob that generate, the CLI, the server,
    eval and the model card offer, and `sweep` its Pareto sweep points."""
    return dataclasses.field(default=default, metadata={"ponderlm": dict(
        low=low, high=high, low_open=low_open, high_open=high_open, help=help, knob=knob,
        choices=None if choices is None else tuple(choices), sweep=None if sweep is None else tuple(sweep))})


@functools.cache
def declarations(options: type) -> dict[str, Declared]:
    """The declared fields of an `Options` dataclass by name (fields made without `option` have no checks)."""
    out = {}
    for f, hint in ((f, typing.get_type_hints(options)[f.name]) for f in dataclasses.fields(options)):
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kinds = [a for a in args if a is not type(None)]
        out[f.name] = Declared(f.name, f.default, kinds[0] if kinds else Any, len(kinds) < len(args),
                               **f.metadata.get("ponderlm", {}))
    return out


def problems(section: Any, prefix: str) -> list[str]:
    """What is wrong with each field of the dataclass instance `section` made with `option`, as `<prefix>.<name>
    must be ...` (a plain field keeps its own rules: `grad_clip = inf` means no clipping)."""
    declared = declarations(type(section))
    found = (declared[f.name].problem(getattr(section, f.name), f"{prefix}.{f.name}")
             for f in dataclasses.fields(section) if "ponderlm" in f.metadata)
    return [problem for problem in found if problem is not None]
