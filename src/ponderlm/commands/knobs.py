"""The decoding knobs on the command line: `--<name-with-dashes>` for every knob a registered method declares
(`option(..., knob=True)`), with type, choices and help from the declaration, one help group per set of methods
declaring it. Reading the declarations imports the methods (torch), which `ponderlm --help` must not: a command sets
`knob_flags` as its `late_arguments` default, which `ponderlm.cli.main` calls for the command it runs only."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ponderlm.errors import PonderError


def float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    if not values:  # "," or "": an empty sweep would write empty results
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def knob_flags(parser: argparse.ArgumentParser, *, sweeps: bool = False, skip: tuple[str, ...] = (),
               default: str = "the checkpoint's") -> None:
    """Add the knob flags to `parser`; skip: knobs the command sets itself. sweeps (the Pareto command): a knob some
    method sweeps takes a comma-separated list, and the fixed-depth controls' knobs are the command's own."""
    from ponderlm.methods.options import knob_table, sweep_knobs
    from ponderlm.registry import REGISTRY

    lists = set(sweep_knobs()) if sweeps else set()
    if sweeps:
        skip = (*skip, *(k for cls in REGISTRY.values() for k in cls.fixed_depth_knobs("uniform", 0.0) or ()))
    groups: dict[tuple[str, ...], Any] = {}
    names = [name for name in knob_table() if name not in skip]
    for name in names:
        declared, methods = knob_table()[name]
        group = groups.get(methods) or groups.setdefault(
            methods, parser.add_argument_group(f"decoding knobs of {', '.join(methods)}"))
        flag, choices = f"--{name.replace('_', '-')}", [c for c in declared.choices or () if c is not None] or None
        if name in lists:
            points = "; ".join(f"{m}: {','.join(f'{v:g}' for v in REGISTRY[m].knobs()[name].sweep)}"
                               for m in methods if REGISTRY[m].knobs()[name].sweep)
            group.add_argument(flag, dest=name, type=float_list, metavar="LIST", help=f"{declared.help}: the values "
                               f"to sweep, comma-separated (default: {points}; else {default} value)")
        else:  # a bool knob's text is checked by its declaration ("true" / "false")
            kind = {float: float, int: int, bool: lambda t: {"true": True, "false": False}.get(t.lower(), t)}
            group.add_argument(flag, dest=name, type=kind.get(declared.type, str), choices=choices,
                               metavar=None if choices else {float: "X", int: "N"}.get(declared.type, "V"),
                               help=f"{declared.help} (default: {default})")
    parser.set_defaults(knob_names=tuple(names))


def knob_values(args: argparse.Namespace) -> dict[str, Any]:
    """The knob values given on the command line, each checked by its declaration (a list value by value) and by the
    rules of the methods declaring them, as one-line errors naming the flag."""
    from ponderlm.methods.options import knob_table
    from ponderlm.registry import REGISTRY

    table = knob_table()
    given = {name: getattr(args, name) for name in getattr(args, "knob_names", ()) if getattr(args, name) is not None}
    try:
        for name, value in given.items():
            for item in value if isinstance(value, list) else [value]:
                if (problem := table[name][0].problem(item, f"--{name.replace('_', '-')}")) is not None:
                    raise ValueError(problem)
        single = {k: v for k, v in given.items() if not isinstance(v, list)}
        for cls in {REGISTRY[m] for name in single for m in table[name][1]}:
            cls.check_knobs(single)
    except ValueError as exc:
        raise PonderError(str(exc)) from None
    return given
