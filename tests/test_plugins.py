"""Method plugins: a method shipped in its own distribution (tests/plugin_pkg, the toy method "echo") and declared in
the `ponderlm.methods` entry-point group trains, evaluates, generates and is served from the CLI in fresh processes,
and its checkpoint loads through `trust_remote_code` where neither ponderlm nor the plugin can be imported.

The plugin is installed for real (`pip install --no-deps --no-build-isolation -t DIR`, offline) into a directory that
only the child processes get on PYTHONPATH: this process never sees its entry point.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from test_hub import run_without_ponderlm

from ponderlm.errors import PonderError
from ponderlm.registry import REGISTRY, load_plugins, register_method

PLUGIN = Path(__file__).parent / "plugin_pkg"
RUN_ARGS = ["model.method=echo", "model.max_steps=1", "model.echo_scale=0.75", "model.hidden_size=32",
            "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.max_position_embeddings=64",
            "data.seq_len=32", "train.steps=2", "train.batch_size=2", "train.eval_every=2", "train.eval_batches=1",
            "train.sample_tokens=0", "train.device=cpu", "log.tensorboard=false", "name=echo-plugin"]
PROMPT, NEW = "the cat sat on", 5


def install(tmp_path: Path, source: Path = PLUGIN) -> Path:
    """pip-install the distribution at `source` into a fresh directory (a copy is built: pip writes build/ and
    *.egg-info next to the sources) and return that directory."""
    site, build = tmp_path / "site", tmp_path / "build"
    shutil.copytree(source, build)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--disable-pip-version-check", "--target", str(site), str(build)],
                   check=True, capture_output=True, timeout=120)
    return site


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    site = install(tmp_path_factory.mktemp("plugin"))
    return {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error"}


# The CLI's `main` (what the `ponderlm` script runs) for several commands in one fresh process: each stdout in a list.
COMMANDS = """
import contextlib, io, json, sys
from ponderlm.cli import main
outputs = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0, argv
    outputs.append(out.getvalue())
print(json.dumps(outputs))
"""


def cli(env: dict[str, str], *commands: list[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", COMMANDS, json.dumps(commands)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_plugin_trains_evaluates_generates_serves_and_its_checkpoint_carries_its_code(env, data_dir, tmp_path):
    run, final = tmp_path / "run", tmp_path / "run" / "final"
    _, ppl, offline = cli(env, ["train", f"data.data_dir={data_dir}", f"train.out={run}", *RUN_ARGS],
                          ["eval", "ppl", "--model", str(run), "--seq-len", "16", "--batch-size", "2",
                           "--max-batches", "1", "--no-progress", "--json"],
                          ["generate", "--model", str(run), "--prompt", PROMPT, "--max-new-tokens", str(NEW)])
    assert json.loads((final / "config.json").read_text())["method"] == "echo"
    result = json.loads(ppl)
    assert result["method"] == "echo" and result["avg_steps"] == 1.0 and result["ppl"] > 1
    assert offline.startswith(PROMPT) and len(offline.strip()) > len(PROMPT)

    # The server starts (a fresh process, torch import and all) while the remote-code check runs.
    with served(env, run) as complete:
        # The checkpoint's remote code: without the plugin on the path and with ponderlm made unimportable, it
        # loads and computes what the plugin does here.
        assert (final / "ponderlm__plugin__ponder_echo__method.py").is_file()
        ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
        remote = run_without_ponderlm(tmp_path, ids, final)
        assert complete() == offline.rstrip("\n")[len(PROMPT):]  # served == offline
    assert remote["ponderlm_modules"] == [] and remote[str(final)]["class"].startswith("transformers_modules.")
    with echo_registered():
        from ponderlm import PonderForCausalLM

        model = PonderForCausalLM.from_pretrained(final).eval()
        with torch.no_grad():
            torch.testing.assert_close(torch.tensor(remote[str(final)]["logits"]), model(ids).logits,
                                       rtol=0, atol=1e-5)
        gen = model.generate(ids, max_new_tokens=6, return_dict_in_generate=True)
    assert remote[str(final)]["sequences"] == gen.sequences.tolist()


@contextlib.contextmanager
def served(env: dict[str, str], run: Path) -> Iterator[Callable[[], str]]:
    """`ponderlm serve` in a fresh process; yields a function that waits for it and returns the greedy completion
    of PROMPT."""
    from serve_helpers import WAIT_S, free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ponderlm", "serve", "--model", str(run), "--port", str(port),
                               "--threads", "1", "--served-model-name", "echo"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def complete() -> str:
        deadline = time.monotonic() + 2 * WAIT_S  # the import of torch alone takes a while on a busy machine
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5):
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()[-3000:]
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        body = json.dumps({"model": "echo", "prompt": PROMPT, "max_tokens": NEW, "temperature": 0}).encode()
        request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return json.loads(response.read())["choices"][0]["text"]

    try:
        yield complete
    finally:
        server.terminate()
        server.wait(timeout=WAIT_S)


class echo_registered:
    """The plugin's class registered in this process for a block (as its entry point would), then removed."""

    def __enter__(self) -> None:
        sys.path.insert(0, str(PLUGIN))
        from ponder_echo.method import Echo

        register_method("echo")(Echo)

    def __exit__(self, *exc) -> None:
        REGISTRY.pop("echo")
        sys.path.remove(str(PLUGIN))


# ---------------------------------------------------------------------------------------------- registration errors
def entry_point_dir(root: Path, line: str) -> Path:
    """A directory holding only a distribution's metadata that declares one `ponderlm.methods` entry point."""
    name = "fake_" + line.split("=")[0].strip()  # one distribution per entry point (metadata dedupes by name)
    info = root / "ep" / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[ponderlm.methods]\n{line}\n")
    return root / "ep"


@pytest.mark.parametrize("line,error", [
    ("vanilla = ponder_echo.method:Echo",
     r"method 'vanilla' is already registered by ponderlm\.methods\.vanilla\.Vanilla; ponder_echo\.method\.Echo "
     r"cannot take the same name"),
    ("broken = no_such_plugin.method:Echo",
     r"method plugin 'broken' \(no_such_plugin\.method:Echo\) failed to load: ModuleNotFoundError: No module named "
     r"'no_such_plugin'"),
    ("notaclass = ponder_echo.method:__doc__", r"method plugin 'notaclass' .* must name a class, got str"),
])
def test_a_plugin_that_cannot_register_is_one_clear_error(tmp_path, monkeypatch, line, error):
    assert "vanilla" in REGISTRY  # the first read registers the built-ins (before this fake plugin is on the path)
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(entry_point_dir(tmp_path, line)))
    with pytest.raises(PonderError, match=error) as caught:
        load_plugins()
    assert "\n" not in str(caught.value)


def test_entry_point_registers_an_undecorated_class_and_a_second_name_is_refused(tmp_path, monkeypatch):
    assert "vanilla" in REGISTRY  # the first read registers the built-ins (before this fake plugin is on the path)
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(entry_point_dir(tmp_path, "echo = ponder_echo.method:Echo")))
    from ponder_echo.method import Echo

    try:
        load_plugins()
        assert REGISTRY["echo"] is Echo and Echo.name == "echo"
        load_plugins()  # the same entry point again (a second registry read) changes nothing
        with pytest.raises(PonderError, match="registered as 'echo'; the entry point's name and @register_method"):
            entry = entry_point_dir(tmp_path / "second", "echo2 = ponder_echo.method:Echo")
            monkeypatch.syspath_prepend(str(entry))
            load_plugins()
    finally:
        REGISTRY.pop("echo", None)


def test_a_method_class_that_cannot_be_bundled_still_saves_with_a_warning(tmp_path, monkeypatch):
    from helpers import tiny_model

    monkeypatch.syspath_prepend(str(PLUGIN))
    from ponder_echo.method import Echo

    class Local(Echo):  # defined in a function: no module attribute the remote code could import it by
        pass

    register_method("local_echo")(Local)
    try:
        with pytest.warns(UserWarning, match=r"'local_echo' .*Local\) is not bundled into the checkpoint's remote"):
            tiny_model("local_echo", max_steps=1).save_pretrained(tmp_path)
        assert not list(tmp_path.glob("ponderlm__plugin__*")) and (tmp_path / "model.safetensors").is_file()
    finally:
        REGISTRY.pop("local_echo")
