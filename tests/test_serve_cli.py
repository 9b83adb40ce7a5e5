"""`ponderlm serve` refuses bad arguments and unusable addresses with one stderr line and exit 2, before it
loads the model or prints "serving ... on" (a port in use once printed that line, then uvicorn's error, exit 3).

Table-driven like tests/test_bad_inputs.py: argv after `ponderlm serve --model {model}`, the regex the single
stderr line must match, and optional environment variables."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")

from ponderlm.cli import main  # noqa: E402


@dataclass
class Case:
    id: str
    argv: list[str]  # {busy} is a port this test holds open
    error: str
    env: dict[str, str] = field(default_factory=dict)


CASES = [
    Case("threads-0", ["--threads", "0"], r"--threads must be >= 1, got 0"),
    Case("threads-negative", ["--threads", "-3"], r"--threads must be >= 1, got -3"),
    Case("max-batch-0", ["--max-batch", "0"], r"--max-batch must be >= 1"),
    Case("max-queue-0", ["--max-queue", "0"], r"--max-queue must be >= 1"),
    Case("max-request-bytes-0", ["--max-request-bytes", "0"], r"--max-request-bytes must be >= 1"),
    Case("max-prompt-chars-negative", ["--max-prompt-chars", "-1"], r"--max-prompt-chars must be >= 1"),
    Case("port-out-of-range", ["--port", "70000"], r"--port must be in 0\.\.65535"),
    Case("depth-target-alone", ["--depth-target", "0.5"], r"--depth-target only applies to --depth-policy uniform"),
    Case("depth-target-learned", ["--depth-policy", "learned", "--depth-target", "0.5"],
         r"--depth-target only applies"),
    Case("depth-policy-without-target", ["--depth-policy", "uniform"], r"--depth-policy uniform needs --depth-target"),
    Case("api-key-empty", ["--api-key", ""], r"--api-key must be non-empty printable ASCII"),
    Case("api-key-newline", ["--api-key", "a\nb"], r"--api-key must be non-empty printable ASCII"),
    Case("api-key-env-control", [], r"\$PONDERLM_API_KEY must be non-empty printable ASCII",
         env={"PONDERLM_API_KEY": "k\x01"}),
    Case("port-in-use", ["--port", "{busy}"], r"cannot listen on 127\.0\.0\.1:\d+: Address already in use"),
    Case("host-invalid", ["--host", "256.1.1.1"], r"cannot listen on 256\.1\.1\.1:8000: --host '256\.1\.1\.1' is not a "
                                                  r"valid address"),
    Case("host-not-ours", ["--host", "192.0.2.1", "--port", "0"],
         r"cannot listen on 192\.0\.2\.1:0: Cannot assign requested address"),
]


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_serve_arguments_are_one_line_exit_2(case: Case, checkpoint, busy_port, capsys, monkeypatch) -> None:
    monkeypatch.delenv("PONDERLM_API_KEY", raising=False)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    argv = [a.replace("{busy}", str(busy_port)) for a in case.argv]
    assert main(["serve", "--model", str(checkpoint), *argv]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(case.error, lines[0]), lines[0]
    assert "serving" not in out + err
