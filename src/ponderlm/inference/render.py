"""The depth view: text with each token coloured by the additional steps spent at it.

A token's steps are those the model executed when it consumed that token, i.e. the pondering that
produced the prediction of the *next* token (`executed_steps[t]`). The last token of a generation is
never consumed, so it has no steps. Three renderings of the same view: ANSI colours for a terminal, plain
text with the step count after each token (a pipe, a file, `NO_COLOR`) and a standalone HTML page (inline
CSS, a tooltip with the step count on every token).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

# 256-colour foregrounds from cool to hot; steps are mapped onto this ramp by their fraction of K.
ANSI_RAMP = (244, 39, 45, 48, 190, 220, 208, 202, 196)
# Backgrounds for HTML, light to dark (readable with black text until the last two, which use white).
HTML_RAMP = ("#f2f2f2", "#d6eaf8", "#aed6f1", "#a3e4d7", "#f9e79f", "#f8c471", "#f0a35e", "#e67e22", "#c0392b")
RESET = "\x1b[0m"
# The styles of a depth view page (token spans with their hover count, legend), shared by `render_html` and the
# server's page (serve/page.py); each adds its own `.text` box.
DEPTH_VIEW_CSS = """body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 52rem; color: #222; }
.tok { position: relative; border-radius: 3px; padding: 1px 0; }
.prompt { text-decoration: underline dotted #555; }
.tok[data-steps]:hover::after { content: attr(data-steps); position: absolute; left: 0; top: 1.7em;
  background: #222; color: #fff; font: 12px system-ui, sans-serif; padding: 2px 6px; border-radius: 3px;
  white-space: nowrap; z-index: 1; }
.legend { margin: 1rem 0; font-size: 14px; }
.meta { color: #666; font-size: 13px; }"""


@dataclass
class TokenView:
    text: str
    steps: float | None  # None: never consumed (last token) or unknown
    generated: bool


def token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token's text by incremental decoding, so a character split over byte-level tokens is shown once
    (on the token that completes it) instead of as replacement characters."""
    pieces, previous = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.startswith(previous) and not text.endswith("\ufffd"):
            pieces.append(text[len(previous):])
            previous = text
        else:
            pieces.append("")  # an incomplete multi-byte character: shown with the token that completes it
    return pieces


def depth_view(tokenizer, ids: Sequence[int], steps: Sequence[float], prompt_len: int) -> list[TokenView]:
    """Pair every token of `ids` with the steps spent at it (`steps` has one entry per consumed token)."""
    pieces = token_pieces(tokenizer, ids)
    return [TokenView(text=piece, steps=float(steps[i]) if i < len(steps) else None, generated=i >= prompt_len)
            for i, piece in enumerate(pieces)]


def _level(steps: float, max_steps: int, n: int) -> int:
    if max_steps <= 0:
        return 0
    return min(n - 1, max(0, round(steps / max_steps * (n - 1))))


def ansi_colour(steps: float | None, max_steps: int) -> str:
    if steps is None:
        return "\x1b[2m"  # dim: no steps recorded
    return f"\x1b[38;5;{ANSI_RAMP[_level(steps, max_steps, len(ANSI_RAMP))]}m"


def render_ansi(view: list[TokenView], max_steps: int) -> str:
    """Coloured text; the prompt is underlined so it stands apart from the generation."""
    out = []
    for tok in view:
        if not tok.text:
            continue
        style = ansi_colour(tok.steps, max_steps) + ("" if tok.generated else "\x1b[4m")
        # Colour codes do not survive a newline on every terminal: re-open the style after each one.
        out.append(style + tok.text.replace("\n", RESET + "\n" + style) + RESET)
    return "".join(out)


COLOR_MODES = ("auto", "always", "never")


def colour_enabled(mode: str, stream: TextIO) -> bool:
    """Whether to write ANSI colours to `stream` for `--color MODE` (auto / always / never).

    auto colours only a terminal: not a pipe or file (escape codes would end up in the data), not when
    `NO_COLOR` is set to a non-empty value (https://no-color.org), not on `TERM=dumb`."""
    if mode not in COLOR_MODES:
        raise ValueError(f"color mode must be one of {', '.join(COLOR_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def render_plain(view: list[TokenView]) -> str:
    """The view without escape codes: each consumed token is followed by its step count in brackets."""
    return "".join(tok.text + (f"[{tok.steps:g}]" if tok.steps is not None else "") for tok in view if tok.text)


def legend_plain(view: list[TokenView]) -> str:
    prompt = sum(1 for tok in view if not tok.generated and tok.text)
    return (f"additional steps per token in [brackets] after it; the first {prompt} token(s) are the prompt; "
            "the last token has none (never consumed)")


def legend_ansi(max_steps: int) -> str:
    levels = " ".join(f"{ansi_colour(k, max_steps)}{k}{RESET}" for k in range(max_steps + 1))
    return f"additional steps per token: {levels}  (underlined: prompt; {ansi_colour(None, 0)}dim{RESET}: none)"


def _html_colour(steps: float | None, max_steps: int) -> tuple[str, str]:
    if steps is None:
        return "transparent", "#000"
    level = _level(steps, max_steps, len(HTML_RAMP))
    return HTML_RAMP[level], "#fff" if level >= len(HTML_RAMP) - 2 else "#000"


def html_legend(max_steps: int) -> str:
    """The step counts 0..K as coloured spans: the legend of the depth-view page and of the server's page."""
    colours = [_html_colour(k, max_steps) for k in range(max_steps + 1)]
    return "".join(f'<span class="tok" style="background:{bg};color:{fg}">{k}</span> '
                   for k, (bg, fg) in enumerate(colours))


def render_html(view: list[TokenView], max_steps: int, title: str = "ponderlm depth view",
                subtitle: str = "") -> str:
    """A standalone page: each token a span with its colour and a tooltip giving its step count."""
    spans = []
    for tok in view:
        if not tok.text:
            continue
        bg, fg = _html_colour(tok.steps, max_steps)
        label = "no steps (not consumed)" if tok.steps is None else f"{tok.steps:g} additional step(s)"
        cls = "tok gen" if tok.generated else "tok prompt"
        spans.append(f'<span class="{cls}" style="background:{bg};color:{fg}" data-steps="{html.escape(label)}" '
                     f'title="{html.escape(label)}">{html.escape(tok.text)}</span>')
    consumed = [t.steps for t in view if t.steps is not None]
    avg = sum(consumed) / len(consumed) if consumed else 0.0
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
{DEPTH_VIEW_CSS}
.text {{ font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; font-size: 15px; }}
</style>
</head>
<body>
<h2>{html.escape(title)}</h2>
<p class="meta">{html.escape(subtitle)}</p>
<div class="legend">additional steps per token: {html_legend(max_steps)} &nbsp; (dotted underline: prompt;
average {avg:.2f} over {len(consumed)} consumed tokens; hover a token for its count)</div>
<div class="text">{"".join(spans)}</div>
</body>
</html>
"""
