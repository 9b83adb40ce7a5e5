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
from helpers import rehash_manifest
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


# ------------------------------------------------------------------ issue 27: no kill leaves a stuck directory
def test_sigkill_while_creating_the_run_dir(recipe, tmp_path, capsys, one_thread):
    """A new run dir appears with its lock and config.yaml in one rename: killed just before it, there is no run
    dir (only the staged one beside it), and a rerun removes that stage and runs."""
    out = tmp_path / "run"
    proc = spawn(recipe, out, crash_at="run-dir")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    stages = [p for p in tmp_path.iterdir() if p.name.startswith(".run.tmp-")]
    assert not out.exists() and len(stages) == 1
    assert sorted(p.name for p in stages[0].iterdir()) == [".ponderlm.lock", "config.yaml"]
    code, err = cli(["train", str(recipe), "--out", str(out)], capsys)
    assert code == 0 and RESTART not in err, err  # nothing of the killed attempt reached `out`
    assert train_rows(out) == [1, 2] and (out / "final" / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.tmp-")]  # no litter beside the run


def test_sigkill_while_a_restart_rewrites_config_yaml(recipe, tmp_path, capsys, one_thread):
    """The lock never exists without config.yaml, and an atomic write's temp file is cleaned by the next run: a
    restart killed after writing the new config's temp file is still restarted by a rerun and by --resume."""
    out = tmp_path / "run"
    first = spawn(recipe, out, crash_at="checkpoint:2")  # a run that never completed a checkpoint
    first.communicate(timeout=120)
    proc = spawn(recipe, out, crash_at="write:config.yaml")  # its restart, killed before the rename
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "config.yaml").is_file() and len(list(out.glob(".config.yaml.tmp-*"))) == 1
    assert_restartable(out, recipe, tmp_path, capsys)
    for run in (out, tmp_path / "again"):
        assert not list(run.glob(".*.tmp-*")) and not list((run / "checkpoints").glob(".tmp-*")), sorted(run.iterdir())


def test_a_truncated_metrics_row_is_repaired_on_resume(recipe, tmp_path, capsys, one_thread):
    """A kill or a full disk can cut the last row of metrics.jsonl: --resume drops it (with a warning)."""
    from ponderlm.train import load_config, train

    out = tmp_path / "run"
    train(load_config(str(recipe), ["train.steps=4", "train.save_every=2", f"train.out={out}"]), stop_after=2)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 3, "lo')
    code, err = cli(["train", "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert "metrics.jsonl:3 is a truncated metrics row" in err, err
    assert train_rows(out) == [1, 2, 3, 4]


# ------------------------------------------------------------------ issue 27: invalid checkpoints are fallen back past
@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    """An uninterrupted 4-step run and the same run stopped after step 3 (checkpoints at 1, 2, 3)."""
    from helpers import single_thread

    from ponderlm.train import load_config, train

    root = tmp_path_factory.mktemp("fallback")
    (root / "recipe.yaml").write_text(RECIPE.format(data=data_dir))
    loop = ["train.steps=4", "train.save_every=1", "train.keep_last=3"]
    with single_thread():
        train(load_config(str(root / "recipe.yaml"), [*loop, f"train.out={root / 'full'}"]))
        train(load_config(str(root / "recipe.yaml"), [*loop, f"train.out={root / 'part'}"]), stop_after=3)
    return {"full": root / "full", "part": root / "part", "recipe": root / "recipe.yaml"}


def _wrong_rng_dtype(ckpt: Path) -> None:
    from safetensors.torch import save_file

    save_file({"torch_cpu": torch.zeros(5056)}, str(ckpt / "rng.safetensors"))


def _string_step(ckpt: Path) -> None:
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["tokens_seen"] = str(state["tokens_seen"])
    (ckpt / "trainer_state.json").write_text(json.dumps(state))


def _wrong_shape(ckpt: Path) -> None:
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    state["state"][1]["exp_avg_sq"] = state["state"][1]["exp_avg_sq"][:1]
    torch.save(state, ckpt / "optimizer.pt")


@pytest.mark.parametrize(("damage", "why"), [
    (_wrong_rng_dtype, "holds an invalid RNG state (torch_cpu state is torch.float32 [5056], not uint8 [5056])"),
    (_string_step, "holds an invalid trainer_state.json ("),
    (_wrong_shape, "holds an invalid optimizer.pt (parameter 1: exp_avg_sq is torch.float32 [1"),
], ids=["rng-dtype", "string-field", "optimizer-shape"])
def test_resume_falls_back_past_an_invalid_checkpoint(runs, damage, why, tmp_path, capsys, one_thread):
    """A checkpoint whose files match its manifest but hold an invalid field (crafted, or written by a buggy
    tool) is set aside like a corrupt one, and the run resumes from the one before it, still bit-exact."""
    part = tmp_path / "part"
    shutil.copytree(runs["part"], part)
    damage(part / "checkpoints" / "step_000003")
    rehash_manifest(part / "checkpoints" / "step_000003")
    code, err = cli(["train", "--out", str(part), "--resume"], capsys)
    assert code == 0, err
    assert f"step_000003 {why}" in err and "moved it to step_000003.corrupt and resuming from step_000002" in err, err
    full_rows, part_rows = read_metrics(runs["full"], "train"), read_metrics(part, "train")
    assert [r["step"] for r in part_rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in part_rows] == [r["loss"] for r in full_rows]
    a, b = (load_file(str(run / "final" / "model.safetensors")) for run in (runs["full"], part))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ issue 27: a full disk
@pytest.fixture
def small_fs(tmp_path: Path):
    """A tmpfs mounted in the test's directory (needs root; skipped where it cannot be mounted)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root; the full-disk test runs where it can")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _resize(mnt: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


# ~1.4 MB fit the weights (1.1 MB) and the bundled code but not optimizer.pt (2.2 MB, torch's zip writer);
# 1 MB stops in model.safetensors (safetensors' writer): both report the errno their writer lost or kept.
# dist.checkpoint=dcp: the sharded writer (each rank's files through torch.distributed.checkpoint).
@pytest.mark.parametrize(("size", "extra"), [("1m", []), ("2m", []), ("1m", ["dist.checkpoint=dcp"])],
                         ids=["in-weights", "in-optimizer", "sharded"])
def test_disk_full_while_writing_a_checkpoint(recipe, small_fs, size, extra, capsys, one_thread):
    """ENOSPC on a real (small) filesystem: one `error:` line with the OS error, no traceback, the partial
    checkpoint removed (it would keep filling the disk); after space is freed, --resume finishes the run."""
    out = small_fs / "run"
    _resize(small_fs, size)
    code, err = cli(["train", str(recipe), "--out", str(out), "train.save_every=1", *extra], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert lines[-1] == (f"error: cannot write checkpoint {out}/checkpoints/step_000001: No space left on device "
                         "(errno 28); the partial files were removed; free space and continue with --resume"), err
    assert not list((out / "checkpoints").iterdir())  # no .tmp-step_* left behind
    _resize(small_fs, "64m")
    code, err = cli(["train", "--out", str(out), "--resume", *extra], capsys)
    assert code == 0, err
    assert train_rows(out) == [1, 2] and (out / "final" / "config.json").is_file()


def test_out_may_be_a_link_to_a_directory(recipe, tmp_path, capsys, one_thread):
    """Links inside a run dir are refused; --out itself naming a directory through a link is the user's choice:
    the new run dir is staged beside the directory it names and renamed onto it, and the link stays a link."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    code, err = cli(["train", str(recipe), "--out", str(tmp_path / "link")], capsys)
    assert code == 0, err
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "final" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real", "recipe.yaml"]  # no stage left beside


def test_an_empty_out_in_an_unwritable_parent_still_runs(recipe, tmp_path, capsys, monkeypatch, one_thread):
    """Where the run dir cannot be staged beside --out (a scheduler-made scratch dir in a parent the user may not
    write; root ignores permissions, so the refusal is simulated), an existing empty --out is locked in place."""
    import errno

    from ponderlm.train import rundir

    def no_stage(self, out, write_config):
        raise PermissionError(errno.EACCES, "Permission denied", str(out.parent))

    monkeypatch.setattr(rundir.RunLock, "_create", no_stage)
    (tmp_path / "run").mkdir()
    code, err = cli(["train", str(recipe), "--out", str(tmp_path / "run")], capsys)
    assert code == 0 and RESTART not in err, err
    assert train_rows(tmp_path / "run") == [1, 2] and (tmp_path / "run" / "config.yaml").is_file()
    code, err = cli(["train", str(recipe), "--out", str(tmp_path / "new")], capsys)  # a missing --out: an error
    assert code == 2 and "cannot write to output directory" in err and "Permission denied" in err, err


def test_metrics_rows_damaged_in_the_middle_are_an_error_not_dropped(tmp_path, capsys):
    """Only a cut last row is what a kill leaves (dropped with a warning); a damaged row before it is not, and
    dropping it would silently lose a step: one error naming the line."""
    from ponderlm.errors import PonderError

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "tr\n{"kind": "train", "step": 3}\n{"kind"')
    with pytest.raises(PonderError, match=r"metrics\.jsonl:2 is not a metrics row \(damaged file\)"):
        read_metrics(path)
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "train", "step": 2}\n{"kind": "tr')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    assert "metrics.jsonl:3 is a truncated metrics row" in capsys.readouterr().err
