"""Decoding options: the values of a method's inference knobs (`option(..., knob=True)`) for one call, the saved
ones with a caller's overrides, never written into the config. The frozen value travels explicitly: in the decode
state (`DecodeState.options`) and as the `options` argument of the parallel forward."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ponderlm.config import Declared
from ponderlm.registry import REGISTRY


def knob_table() -> dict[str, tuple[Declared, tuple[str, ...]]]:
    """Every knob a registered method declares: its first declaration and the methods that declare it."""
    table: dict[str, tuple[Declared, tuple[str, ...]]] = {}
    for name, cls in REGISTRY.items():
        for knob, declared in cls.knobs().items():
            first, methods = table.get(knob, (declared, ()))
            table[knob] = (first, (*methods, name))
    return table


def sweep_knobs() -> list[str]:
    """The knobs some registered method sweeps (declared with `sweep=`), sorted: the Pareto command's list flags
    and the knob values each Pareto point records."""
    return sorted(name for name, (_, methods) in knob_table().items()
                  if any(REGISTRY[m].knobs()[name].sweep for m in methods))


@dataclass(frozen=True)
class DecodeOptions:
    """The knob values of one model's method for a decode or an eval-mode forward (read as attributes:
    `options.tau`), and notes on the caller's overrides that this method ignores."""

    method: str
    values: tuple[tuple[str, Any], ...]
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __getattr__(self, name: str) -> Any:
        for key, value in self.__dict__.get("values", ()):
            if key == name:
                return value
        raise AttributeError(f"method {self.__dict__.get('method')!r} has no knob {name!r}")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def describe(self) -> str:
        """'tau 0.0001, alpha 0, ...': the values set, as every reported evaluation states them beside its number."""
        return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.values if v is not None)

    @classmethod
    def resolve(cls, config, options: DecodeOptions | None = None, **overrides: Any) -> DecodeOptions:
        """The config's saved knob values (or `options`) with `overrides` (None = keep), checked by the
        declarations and the method's rules on a copy of the config. A knob only other methods declare is
        checked too and gives a note; a name no method declares is an error naming this method's knobs."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given and options is not None:
            return options
        method = config.method_class
        own = method.knobs()
        values = options.as_dict() if options is not None else {k: getattr(config, k) for k in own}
        if not given:
            return cls(config.method, tuple(values.items()))
        table = knob_table()
        for name in given:
            if name not in table:
                raise ValueError(f"unknown decoding option {name!r}; method {config.method!r} takes "
                                 f"{', '.join(own) or 'none'}")
        trial = copy.copy(config)  # validated on a copy: the model's config is never written
        for key, value in {**values, **given}.items():
            setattr(trial, key, value)
        method.check_knobs(given, trial)
        trial.validate()
        notes = tuple(f"{name} has no effect on method {config.method!r} (only {', '.join(table[name][1])} "
                      f"take{'s' if len(table[name][1]) == 1 else ''} it)" for name in given if name not in own)
        return cls(config.method, tuple((k, getattr(trial, k)) for k in own), notes)
