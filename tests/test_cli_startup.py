"""`ponderlm --help` stays light: the package root and every command's `register` import no torch or
transformers (issue 28: the CLI took 11-16 s to print help). Not timed: which modules got imported is
what decides the start-up time, and it does not depend on the machine's load
(benchmarks/bench_cli_startup.py measures the time)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ponderlm.cli import build_parser, main
from ponderlm.version import __version__

HEAVY = ("torch", "transformers", "matplotlib")  # each costs 0.3 s to seconds to import

# Runs the CLI in a fresh interpreter and reports which heavy modules it loaded (argparse's --help exits
# through SystemExit, so the report runs in a finally block).
_REPORT = f"sorted(m for m in {HEAVY!r} if m in sys.modules)"
_PROBE = f"""
import json, sys
from ponderlm.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
finally:
    print(json.dumps({{"heavy": {_REPORT}}}), file=sys.stderr)
sys.exit(code or 0)
"""


def _heavy_imports(*argv: str) -> tuple[int, list[str], str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return proc.returncode, report["heavy"], proc.stdout


def test_top_level_help_imports_no_torch():
    code, heavy, out = _heavy_imports("--help")
    assert code == 0 and heavy == []
    assert "pareto" in out and "serve" in out and "lm-eval" in out  # every command is still listed


def test_import_ponderlm_is_light():
    code = f"import sys, ponderlm; print({_REPORT})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"


def _commands() -> list[list[str]]:
    """Every command and sub-command path, e.g. ["analyze", "difficulty"]."""
    import argparse

    found: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append(path + [name])
                    walk(sub, path + [name])

    walk(build_parser(), [])
    return found


def test_every_command_registers_without_torch():
    # One process builds every subcommand's help text: each `register` ran without loading torch.
    probe = f"import sys; from ponderlm.cli import build_parser; build_parser(); print({_REPORT})"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"
    assert ["analyze", "difficulty"] in _commands() and ["bench", "decode"] in _commands()


@pytest.mark.parametrize("path", [["eval"], ["analyze"], ["analyze", "jacobi"], ["bench"], ["train"],
                                  ["data", "prepare"], ["plan"]])
def test_command_help_is_complete_and_light(path):
    code, heavy, out = _heavy_imports(*path, "--help")
    assert code == 0 and heavy == []
    assert out.startswith(f"usage: ponderlm {' '.join(path)}") and "--" in out


# Commands that decode take the knobs the methods declare: their flags are read from the declarations (which imports
# the methods, torch included) only when that command runs or prints its help.
@pytest.mark.parametrize("path", [["generate"], ["eval", "ppl"], ["eval", "reasoning"], ["pareto"],
                                  ["analyze", "difficulty"], ["analyze", "alpha"], ["lm-eval"], ["serve"],
                                  ["bench", "decode"]])
def test_decode_command_help_lists_the_declared_knobs(path):
    code, heavy, out = _heavy_imports(*path, "--help")
    assert code == 0 and out.startswith(f"usage: ponderlm {' '.join(path)}")
    assert "decoding knobs of adaponder, latent_cot, ponderlm3:" in out and "--tau" in out
    assert "--depth-policy" in out or path == ["pareto"]  # pareto runs the fixed-pruning controls itself
    assert ("--alpha" in out) and ("--jacobi-iters-eval" in out)


def test_bare_ponderlm_prints_help_and_exits_0(capsys):
    # It used to start the quickstart's training run.
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ponderlm") and "train" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"ponderlm {__version__}"


def test_lazy_root_exports():
    import ponderlm

    assert set(ponderlm.__all__) <= set(dir(ponderlm))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ponderlm.nope  # noqa: B018
    from ponderlm import PonderConfig, PonderForCausalLM, flops

    assert PonderForCausalLM.config_class is PonderConfig and callable(flops.flops)


def test_registry_is_filled_on_first_read_in_a_fresh_process():
    # The root no longer imports the methods; the registry loads them when first read.
    probe = ("from ponderlm.config import PonderConfig; "
             "print(PonderConfig(method='ponderlm3', max_steps=1).method_class.__name__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "PonderLM3"
