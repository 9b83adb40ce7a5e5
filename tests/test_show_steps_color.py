"""`generate --show-steps` writes ANSI colours only to a terminal, and never with NO_COLOR set
(https://no-color.org) or `--color never`; `--color always` forces them (issue 28 item 5)."""

from __future__ import annotations

import io

import pytest

from ponderlm.cli import main
from ponderlm.inference.render import TokenView, colour_enabled, legend_plain, render_plain

pytestmark = pytest.mark.usefixtures("one_thread")

ESC = "\x1b["


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


@pytest.mark.parametrize("mode,tty,no_color,expected", [
    ("auto", True, None, True),
    ("auto", False, None, False),  # a pipe or a file
    ("auto", True, "1", False),
    ("auto", True, "", True),  # no-color.org: only a non-empty value disables colour
    ("never", True, None, False),
    ("always", False, None, True),
    ("always", True, "1", True),  # an explicit flag wins over the environment
])
def test_colour_decision(clean_env, monkeypatch, mode, tty, no_color, expected):
    if no_color is not None:
        monkeypatch.setenv("NO_COLOR", no_color)
    stream = FakeTerminal() if tty else io.StringIO()
    assert colour_enabled(mode, stream) is expected


def test_dumb_terminal_gets_no_colour(clean_env, monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    assert not colour_enabled("auto", FakeTerminal())


def test_plain_view_shows_steps_without_escape_codes():
    view = [TokenView("The", 1.0, False), TokenView(" cat", 2.0, True), TokenView("", 0.0, True),
            TokenView(" sat", None, True)]
    assert render_plain(view) == "The[1] cat[2] sat"
    assert "first 1 token(s) are the prompt" in legend_plain(view)


def _generate(capsys, checkpoint, *flags: str) -> str:
    code = main(["generate", "--model", str(checkpoint), "--prompt", "And the LORD said", "--max-new-tokens", "4",
                 "--show-steps", *flags])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_piped_show_steps_has_no_escape_codes(checkpoint, capsys, clean_env):
    out = _generate(capsys, checkpoint)  # pytest's captured stdout is not a terminal
    assert ESC not in out
    assert out.startswith("And[") and "additional steps per token in [brackets]" in out and "avg executed steps" in out
    assert ESC in _generate(capsys, checkpoint, "--color", "always")


def test_terminal_show_steps_is_coloured_unless_no_color(checkpoint, capsys, clean_env, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stdout", terminal)
    _generate(capsys, checkpoint)
    assert ESC in terminal.getvalue()
    for env, flags in (({"NO_COLOR": "1"}, ()), ({}, ("--color", "never"))):
        terminal = FakeTerminal()
        monkeypatch.setattr("sys.stdout", terminal)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        _generate(capsys, checkpoint, *flags)
        assert ESC not in terminal.getvalue() and "[brackets]" in terminal.getvalue()
