"""`ponderlm` command line: a thin map from subcommands to the command modules in `ponderlm.commands`.

Each command module registers its own subcommands (`register(subparsers)`) so this file stays small and
heavy imports (torch, transformers) happen only inside the command that needs them: building the parser
imports neither, so `ponderlm --help` and most `ponderlm <command> --help` answer in a fraction of a second
(tests/test_cli_startup.py checks the imports; benchmarks/bench_cli_startup.py times it). Arguments read from
the methods (the knob flags, `ponderlm.commands.knobs`) come from a command's `late_arguments` default, called
only for the command being run or asked for its help.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from ponderlm.errors import PonderError
from ponderlm.version import __version__

# Modules that expose `register(subparsers)`.
COMMAND_MODULES = (
    "ponderlm.commands.train",
    "ponderlm.commands.data",
    "ponderlm.commands.generate",
    "ponderlm.commands.eval",
    "ponderlm.commands.bench",
    "ponderlm.commands.plan",
    "ponderlm.commands.serve",
    "ponderlm.commands.convert",
)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (like every other bad input), not argparse's usage block; subparsers inherit it."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ponderlm",
        description="Pretrain, evaluate and serve pondering language models.",
        epilog="Run `ponderlm COMMAND --help` for a command's options; `ponderlm train --recipe quickstart` "
               "trains the CPU quickstart.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = command = build_parser()
    for word in argv:  # the (sub)parser of the command argv names gets its late arguments (e.g. the knob flags)
        subs = [a.choices for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0]:
            break
        command = subs[0][word]
    if command.get_default("late_arguments") is not None:
        command.get_default("late_arguments")(command)
    if not argv:  # like git or pip: help, not a multi-minute training run the user did not ask for
        parser.print_help()
        return 0
    args, extra = parser.parse_known_args(argv)
    # `ponderlm train CONFIG --out DIR key=value`: argparse ends a positional list at the first flag, so
    # positionals after flags come back unparsed; commands with a free positional list accept them anywhere.
    if extra and isinstance(getattr(args, "args", None), list) and not any(x.startswith("-") for x in extra):
        args.args += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except PonderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
