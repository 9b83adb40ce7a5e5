"""The server's web page in a real browser: headless Chromium (Debian's `chromium`, installed by .ci/run) types a
prompt, clicks Generate, and the test reads the streamed tokens and their depth colours from the DOM.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages separated
by NUL bytes on file descriptors 3 and 4), so no browser-automation package is needed. The engine is held
after the first token, so the test sees the page showing a partial answer while the stream is still open
(streaming, not one answer at the end), then lets it finish."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import single_thread

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed: pip install 'ponderlm[serve]'")
pytest.importorskip("openai", reason="the openai client is not installed: pip install 'ponderlm[test]'")

from serve_helpers import NAME, WAIT_S, Server, wait_until  # noqa: E402

from ponderlm.inference.render import HTML_RAMP  # noqa: E402

PROMPT = "Once upon a time"
MAX_TOKENS, TAU = 24, 0.3  # a threshold that gives this barely trained router more than one depth
# Required on machines without a display, a sandbox or a network: nothing is fetched, nothing persists.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=900,700", "--remote-debugging-pipe"]


def chromium_binary() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


class Browser:
    """Headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, binary: str, profile: Path) -> None:
        # Chromium reads commands on fd 3 and writes replies on fd 4. The pipe ends are first moved above
        # fd 9, so the shell's renumbering cannot overwrite one with the other.
        to_browser, self._writer = os.pipe()
        self._reader, from_browser = os.pipe()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
        for fd in (to_browser, from_browser):
            os.close(fd)
        r, w = high
        command = f'exec "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", command, "chromium", binary, *CHROMIUM_FLAGS,
                                      f"--user-data-dir={profile}", "about:blank"],
                                     pass_fds=(r, w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(r)
        os.close(w)
        self._buffer = b""
        self._ids = iter(range(1, 10**9))
        self.session: str | None = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self._ids)
        message: dict[str, Any] = {"id": n, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self._writer, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + WAIT_S
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == n:
                    if "error" in reply:
                        raise AssertionError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._reader], [], [], left)[0]:
                raise AssertionError(f"Chromium did not answer {method} within {WAIT_S} s")
            chunk = os.read(self._reader, 1 << 20)
            if not chunk:
                raise AssertionError(f"Chromium exited (code {self.proc.poll()}) during {method}")
            self._buffer += chunk

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        x, y = self.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                       " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type_into(self, selector: str, text: str) -> None:
        """Focus the field, select what it holds and type `text` over it, key by key."""
        self.js(f"document.querySelector({json.dumps(selector)}).focus(); "
                f"document.querySelector({json.dumps(selector)}).select()")
        self.call("Input.dispatchKeyEvent", type="keyDown", key="Backspace", code="Backspace",
                  windowsVirtualKeyCode=8)
        self.call("Input.dispatchKeyEvent", type="keyUp", key="Backspace", code="Backspace", windowsVirtualKeyCode=8)
        for ch in text:
            self.call("Input.dispatchKeyEvent", type="keyDown", key=ch, text=ch)
            self.call("Input.dispatchKeyEvent", type="keyUp", key=ch)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._writer)
        os.close(self._reader)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(scope="module")
def server(checkpoint) -> Iterator[Server]:
    srv = Server(checkpoint, max_batch=4)
    yield srv
    srv.close()


@pytest.fixture
def browser(tmp_path) -> Iterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium): the page is not tested")
    b = Browser(binary, tmp_path / "profile")  # a fresh profile: nothing from an earlier run
    yield b
    b.close()


def rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def level(steps: float, max_steps: int) -> int:
    """page.py's (and render.py's) mapping of a step count onto the colour ramp."""
    n = len(HTML_RAMP)
    return 0 if max_steps <= 0 else min(n - 1, max(0, round(steps / max_steps * (n - 1))))


def test_page_streams_tokens_coloured_by_their_depth(server, browser):
    # What the page must show: the same request through the API, one span per streamed chunk with text,
    # coloured by the steps of the chunk's token.
    stream = server.client.completions.create(model=NAME, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                              stream=True, extra_body={"tau": TAU})
    expected = [(c.choices[0].text, c.choices[0].model_extra["ponder_steps"][-1]) for c in stream
                if c.choices and c.choices[0].text]
    assert len({steps for _, steps in expected}) > 1, "the threshold gives a single depth: nothing to colour"

    browser.call("Page.enable")
    browser.call("Page.navigate", url=server.url + "/")
    wait_until(lambda: browser.js("document.readyState === 'complete' && !!document.getElementById('go')"),
               "the page to load")
    assert browser.js("getComputedStyle(document.getElementById('api_key').parentElement).display") == "none"
    browser.type_into("#prompt", PROMPT)
    browser.type_into("#max_tokens", str(MAX_TOKENS))
    browser.type_into("#tau", str(TAU))
    assert browser.js("document.getElementById('prompt').value") == PROMPT

    gate = server.gate()  # the engine stops before its next backbone call: only the first token gets out
    try:
        browser.click("#go")
        wait_until(lambda: browser.js("document.querySelectorAll('#out .tok.gen').length") >= 1,
                   "the first streamed token to appear")
        partial = browser.js("document.querySelectorAll('#out .tok.gen').length")
        assert partial < len(expected) and browser.js("document.getElementById('status').textContent") \
            == "streaming..."  # shown while the rest is still being computed
    finally:
        gate.set()
    wait_until(lambda: browser.js("document.getElementById('status').textContent").startswith("finished"),
               "the stream to finish")

    spans = browser.js("[...document.querySelectorAll('#out .tok.gen')].map(e => "
                       "[e.textContent, e.dataset.steps, getComputedStyle(e).backgroundColor])")
    assert browser.js("document.querySelector('#out .tok.prompt').textContent") == PROMPT
    assert [text for text, _, _ in spans] == [text for text, _ in expected]
    shown_steps = [float(re.match(r"[\d.]+", label).group()) for _, label, _ in spans]
    assert shown_steps == [steps for _, steps in expected]
    k = server.engine.model.config.max_steps
    assert [colour for _, _, colour in spans] == [rgb(HTML_RAMP[level(s, k)]) for s in shown_steps]
    assert len({colour for _, _, colour in spans}) > 1  # more than one depth colour on screen


def test_page_sends_the_api_key_typed_into_it(checkpoint, browser):
    """With --api-key the page shows a key field: without the key the page reports the 401's message, with it
    the answer streams in."""
    srv = Server(checkpoint, max_batch=2, api_key="page-key")
    try:
        browser.call("Page.navigate", url=srv.url + "/")
        wait_until(lambda: browser.js("document.readyState === 'complete' && !!document.getElementById('go')"),
                   "the page to load")
        assert browser.js("getComputedStyle(document.getElementById('api_key').parentElement).display") != "none"
        browser.type_into("#max_tokens", "4")
        status = "document.getElementById('status').textContent"
        browser.click("#go")
        wait_until(lambda: browser.js(status).startswith("error"), "the refusal")
        assert "missing API key" in browser.js(status)
        browser.type_into("#api_key", "page-key")
        browser.click("#go")
        wait_until(lambda: browser.js(status).startswith("finished"), "the stream to finish")
        assert browser.js("document.querySelectorAll('#out .tok.gen').length") >= 1
    finally:
        srv.close()


def test_page_offers_the_served_methods_knobs_only():
    """The knob fields come from the method's declarations: PonderLM-3's page has tau and alpha, vanilla's none."""
    from ponderlm.registry import method_class
    from ponderlm.serve.page import page_html

    p3 = page_html("m", 1, knobs=method_class("ponderlm3").knobs())
    assert 'id="tau" type="text"' in p3 and 'id="alpha" type="text"' in p3 and 'data-knob="float"' in p3
    assert "data-knob=" not in page_html("m", 0, knobs=method_class("vanilla").knobs()).split("<script>")[0]
