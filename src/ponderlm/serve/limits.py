"""Per-request limits of `ponderlm serve` (stdlib only: the CLI's parser reads the defaults without importing
the server's dependencies)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_REQUEST_BYTES = 4 * 2**20  # lm-eval's largest batches of token-id prompts are well below this
PROMPT_CHARS_PER_POSITION = 32  # default prompt limit: 32 characters per position of the model's context
# Deeper JSON than any OpenAI request needs (a chat message's content part is 5 levels down). Checked
# right after parsing, before pydantic or an error message's repr() recurses into the value.
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class Limits:
    """`--max-request-bytes` and `--max-prompt-chars`. The prompt limit is checked before tokenizing, so an
    oversized prompt costs no tokenizer time; the model's context length is checked after."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_prompt_chars: int | None = None  # None: PROMPT_CHARS_PER_POSITION x the model's context length

    def prompt_chars(self, context_length: int) -> int:
        return self.max_prompt_chars or PROMPT_CHARS_PER_POSITION * context_length
