"""The run-directory protocol under kill -9, concurrency and corruption (see train/rundir.py, docs/RELIABILITY.md).

Kills are real SIGKILLs: sent by the test while a run trains, or raised by the process itself at a named point
(`PONDERLM_CRASH_AT=checkpoint:N` mid-write of a checkpoint, `=final` before final/ is published), which a timed
kill could only hit by luck. After each one the directory must be accepted by a rerun and by `--resume`.
Reruns go through `ponderlm.cli.main` in-process; only the runs that get killed are subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ponderlm.cli import main
from ponderlm.train import read_metrics

RECIPE = """\
name: rundir
model: {{backbone: llama, method: ponderlm2, max_steps: 1, hidden_size: 32, num_hidden_layers: 1,
        num_attention_heads: 2, max_position_embeddings: 64}}
data: {{data_dir: {data}, seq_len: 32}}
optim: {{lr: 3.0e-3, warmup_steps: 1}}
train: {{steps: 2, batch_size: 2, eval_every: 100, eval_batches: 1, save_every: 100, sample_tokens: 0,
        device: cpu}}
log: {{tensorboard: false}}
"""
RESTART = "holds a run that stopped before its first complete checkpoint; starting it again from step 0"


@pytest.fixture
def recipe(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(data=data_dir))
    return path


def spawn(recipe: Path, out: Path, *overrides: str, crash_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PONDERLM_CRASH_AT", None)
    if crash_at:
        env["PONDERLM_CRASH_AT"] = crash_at
    return subprocess.Popen([sys.executable, "-m", "ponderlm", "train", str(recipe), "--out", str(out), *overrides],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended first ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def train_rows(out: Path) -> list[int]:
    return [r["step"] for r in read_metrics(out, "train")]


def assert_restartable(out: Path, recipe: Path, tmp_path: Path, capsys) -> None:
    """Both ways back into a run that never completed a checkpoint work, starting from step 0."""
    again = tmp_path / "again"
    shutil.copytree(out, again)
    code, err = cli(["train", str(recipe), "--out", str(out)], capsys)
    assert code == 0 and RESTART in err, err
    assert train_rows(out) == [1, 2] and (out / "final" / "config.json").is_file()
    code, err = cli(["train", "--out", str(again), "--resume", "train.steps=2"], capsys)  # its config.yaml
    assert code == 0 and RESTART in err, err
    assert train_rows(again) == [1, 2] and (again / "final" / "config.json").is_file()


def test_sigkill_in_a_step_before_the_first_checkpoint(recipe, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    proc = spawn(recipe, out, "train.steps=1000", "train.save_every=100000")  # no checkpoint before the kill
    wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 1, proc)
    kill9(proc)
    assert not (out / "checkpoints").exists() and (out / "config.yaml").is_file()
    assert_restartable(out, recipe, tmp_path, capsys)


def test_sigkill_while_writing_the_first_checkpoint(recipe, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    proc = spawn(recipe, out, crash_at="checkpoint:2")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name.startswith(".tmp-step_000002") for p in (out / "checkpoints").iterdir()] == [True]
    assert_restartable(out, recipe, tmp_path, capsys)


def test_sigkill_while_publishing_final(recipe, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    proc = spawn(recipe, out, crash_at="final")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final").exists() and list(out.glob(".tmp-final-*"))  # never a half-written final/
    code, err = cli(["generate", "--model", str(out), "--prompt", "hi"], capsys)
    assert code == 2 and "neither a saved model (config.json) nor a run directory with final" in err
    code, err = cli(["train", str(recipe), "--out", str(out)], capsys)  # the run got as far as a checkpoint
    assert code == 2 and "already holds a run (checkpoint at step 2); pass --resume" in err
    code, err = cli(["train", "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert (out / "final" / "config.json").is_file() and not list(out.glob(".tmp-final-*"))
    code, err = cli(["generate", "--model", str(out), "--prompt", "hi", "--max-new-tokens", "1"], capsys)
    assert code == 0, err


def test_one_run_per_directory_and_a_killed_holder_frees_it(recipe, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    proc = spawn(recipe, out, "train.steps=1000", "train.save_every=100000")  # no checkpoint before the kill
    wait_for(lambda: (out / "metrics.jsonl").is_file(), proc)
    for extra in ([str(recipe)], ["--resume"]):
        before = sorted(p.name for p in out.iterdir())
        code, err = cli(["train", *extra, "--out", str(out)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"is in use by another `ponderlm train` (pid {proc.pid} on " in err, err
        assert sorted(p.name for p in out.iterdir()) == before
    kill9(proc)  # the OS drops the lock with the process: no stale lock to clean by hand
    code, err = cli(["train", "--out", str(out), "--resume", "train.steps=2"], capsys)
    assert code == 0 and RESTART in err, err


def test_two_simultaneous_runs_into_one_directory(recipe, tmp_path):
    out = tmp_path / "run"
    procs = [spawn(recipe, out, "train.steps=4") for _ in range(2)]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "is in use by another `ponderlm train`" in loser or "already holds a run" in loser, loser
    assert train_rows(out) == [1, 2, 3, 4]  # one run's rows, not two runs interleaved


def _checksums(out: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file()}


def test_resume_falls_back_to_the_newest_valid_checkpoint(recipe, tmp_path, capsys, one_thread):
    loop = ["train.steps=4", "train.save_every=1", "train.keep_last=3"]
    assert cli(["train", str(recipe), "--out", str(tmp_path / "full"), *loop], capsys)[0] == 0
    from ponderlm.train import load_config, train

    part = tmp_path / "part"
    train(load_config(str(recipe), [*loop, f"train.out={part}"]), stop_after=3)
    weights = part / "checkpoints" / "step_000003" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF  # one flipped bit pattern in the last tensor: the manifest's sha256 catches it
    weights.write_bytes(bytes(blob))
    code, err = cli(["train", "--out", str(part), "--resume"], capsys)
    assert code == 0, err
    assert "step_000003/model.safetensors is corrupt or truncated (checksum mismatch); moved it to " \
           "step_000003.corrupt and resuming from step_000002" in err, err
    assert (part / "checkpoints" / "step_000003.corrupt").is_dir()  # kept for inspection, not deleted
    full_rows, part_rows = read_metrics(tmp_path / "full", "train"), read_metrics(part, "train")
    assert [r["step"] for r in part_rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in part_rows] == [r["loss"] for r in full_rows]  # still bit-exact
    a, b = load_file(str(tmp_path / "full" / "final" / "model.safetensors")), load_file(
        str(part / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_checkpoint_corrupt_is_one_error_and_changes_nothing(recipe, tmp_path, capsys, one_thread):
    from ponderlm.train import load_config, train

    out = tmp_path / "run"
    train(load_config(str(recipe), ["train.steps=4", "train.save_every=1", f"train.out={out}"]), stop_after=2)
    for step in (1, 2):
        state = out / "checkpoints" / f"step_{step:06d}" / "trainer_state.json"
        state.write_text(json.dumps({"step": 99}))
    before = _checksums(out)
    capsys.readouterr()
    code, err = cli(["train", "--out", str(out), "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "every checkpoint in" in err and "is corrupt (newest: checkpoint file" in err, err
    assert _checksums(out) == before
