"""Decoding options: a frozen value in scope, never written into the model's config.

Inference knobs (tau, alpha, the fixed-depth policy, the eval Jacobi sweep count) default to the
saved config. `decode_options(model, tau=...)` (`ponderlm.inference`) validates overrides once and
puts a `DecodeOptions` in scope for that model; methods read `current(config)`. The scope is a
`contextvars.ContextVar`, so nested scopes restore their outer value, and threads and asyncio tasks
(the server) each see their own: nothing shared is mutated, unlike setting config attributes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields, replace

_IN_SCOPE: ContextVar[dict[int, DecodeOptions] | None] = ContextVar("ponderlm_decode_options", default=None)


@dataclass(frozen=True)
class DecodeOptions:
    """What decoding (and the eval-mode parallel forward) reads instead of the config's saved values.

    `max_steps` is the model's K (the fixed-depth draw needs it), not an option: it cannot be overridden."""

    tau: float
    alpha: float
    depth_policy: str | None
    depth_target: float | None
    depth_seed: int
    jacobi_iters_eval: int
    max_steps: int

    @classmethod
    def from_config(cls, config) -> DecodeOptions:
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})

    def replace(self, config, **overrides) -> DecodeOptions:
        """These options with `overrides` (None = keep), validated by the config's own rules."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        overridable = {f.name for f in fields(self)} - {"max_steps"}
        unknown = sorted(set(overrides) - overridable)
        if unknown:
            raise ValueError(f"unknown decoding option {unknown[0]!r}")
        if not overrides:
            return self
        trial = copy.copy(config)  # validate on a copy: the model's config is never written
        for key, value in {**asdict(self), **overrides}.items():
            setattr(trial, key, value)
        trial.validate()
        return replace(self, **overrides)


def current(config) -> DecodeOptions:
    """The options in scope for the model owning `config`, else its saved values."""
    scoped = (_IN_SCOPE.get() or {}).get(id(config))
    return scoped if scoped is not None else DecodeOptions.from_config(config)


@contextmanager
def scope(config, options: DecodeOptions) -> Iterator[DecodeOptions]:
    """Put `options` in scope for the model owning `config` (already validated: see `DecodeOptions.replace`)."""
    token = _IN_SCOPE.set({**(_IN_SCOPE.get() or {}), id(config): options})
    try:
        yield options
    finally:
        _IN_SCOPE.reset(token)
