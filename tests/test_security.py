"""Loading a run or model directory someone else wrote never executes code from it.

Every pickle-bearing file a loader reads gets a payload that would create a marker file if it ran:
DCP `.metadata`, a non-tensor item inside a `.distcp` shard, `optimizer.pt`, and a `pytorch_model.bin`.
The manifest is rewritten to match (an attacker writes it too), so only the loaders stand in the way.
Each case must end in a PonderError (one line in the CLI) with the marker file absent. The stock DCP
reader is also run on the crafted metadata to prove the payload is live (so the test can fail).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import rehash_manifest, tiny_run

from ponderlm.errors import PonderError
from ponderlm.train import train

MARKER_NAME = "PWNED"


class _Payload:
    """Unpickling this calls os.system; the command creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _config(out: Path, data_dir: Path, *overrides: str):
    return tiny_run(out, data_dir, "name=sec", "train.save_every=2", *overrides)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sec_runs")
    train(_config(root / "dcp", data_dir, "dist.checkpoint=dcp"))
    train(_config(root / "single", data_dir))
    return {"dcp": root / "dcp", "single": root / "single", "data": data_dir}


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "final")
    return dst / "checkpoints" / "step_000002"


def _torch_save_bytes(obj_pickle: bytes) -> bytes:
    """A torch.save zip archive whose data.pkl is `obj_pickle` (what a `.distcp` non-tensor item holds)."""
    buf = io.BytesIO()
    torch.save({"harmless": 1}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, obj_pickle if name.endswith("data.pkl") else src.read(name))
    return out.getvalue()


def _resume(run: Path, data_dir: Path) -> None:
    train(_config(run, data_dir, "train.steps=4", *(["dist.checkpoint=dcp"] if (run / "checkpoints" / "step_000002"
                                                                               / "dcp").is_dir() else [])),
          resume=True)


def test_crafted_dcp_metadata_is_refused(runs, tmp_path):
    marker = tmp_path / MARKER_NAME
    ckpt = _copy_run(runs["dcp"], tmp_path / "run")
    (ckpt / "dcp" / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    rehash_manifest(ckpt)
    with pytest.raises(PonderError, match=r"unsafe or corrupt DCP metadata .*refusing posix\.system"):
        _resume(tmp_path / "run", runs["data"])
    assert not marker.exists()
    # The payload is live: torch's own reader runs it (so this test would catch a regression).
    import torch.distributed.checkpoint as dcp

    with pytest.raises(Exception):  # noqa: B017 - the payload returns an int, which DCP then trips over
        dcp.FileSystemReader(str(ckpt / "dcp")).read_metadata()
    assert marker.exists()


def test_crafted_non_tensor_item_in_a_shard_is_refused(runs, tmp_path):
    marker = tmp_path / MARKER_NAME
    ckpt = _copy_run(runs["dcp"], tmp_path / "run")
    from ponderlm.train.dist_checkpoint import SafeFileSystemReader

    metadata = SafeFileSystemReader(str(ckpt / "dcp")).read_metadata()
    shard = ckpt / "dcp" / "__0_0.distcp"
    blob = shard.read_bytes()
    evil = _torch_save_bytes(pickle.dumps(_Payload(marker), protocol=2))
    hit = [info for index, info in metadata.storage_data.items() if index.fqn == "optim.param_groups.0.lr"]
    assert hit, "the optimizer's learning rate is stored as a non-tensor item"
    hit[0].offset, hit[0].length = len(blob), len(evil)
    shard.write_bytes(blob + evil)
    metadata.storage_meta = None
    (ckpt / "dcp" / ".metadata").write_bytes(pickle.dumps(metadata))
    rehash_manifest(ckpt)
    with pytest.raises(PonderError, match=r"refusing checkpoint item optim\.param_groups\.0\.lr"):
        _resume(tmp_path / "run", runs["data"])
    assert not marker.exists()


def test_crafted_optimizer_pt_is_refused(runs, tmp_path):
    marker = tmp_path / MARKER_NAME
    ckpt = _copy_run(runs["single"], tmp_path / "run")
    torch.save({"state": {}, "param_groups": [], "evil": _Payload(marker)}, ckpt / "optimizer.pt")
    rehash_manifest(ckpt)
    with pytest.raises(PonderError, match=r"refusing .*optimizer\.pt"):
        _resume(tmp_path / "run", runs["data"])
    assert not marker.exists()


def test_crafted_pytorch_model_bin_is_refused_with_one_line(runs, tmp_path):
    from ponderlm.eval.perplexity import load_model

    marker = tmp_path / MARKER_NAME
    model_dir = tmp_path / "model"
    shutil.copytree(runs["single"] / "final", model_dir)
    (model_dir / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, model_dir / "pytorch_model.bin")
    with pytest.raises(PonderError, match=r"refusing the weights in .*\.bin file holds more than tensors"):
        load_model(model_dir, "cpu")
    assert not marker.exists()


def test_a_genuine_sharded_checkpoint_still_resumes(runs, tmp_path):
    _copy_run(runs["dcp"], tmp_path / "run")
    _resume(tmp_path / "run", runs["data"])
    assert (tmp_path / "run" / "checkpoints" / "step_000004" / "dcp").is_dir()


# ------------------------------------------------------------------ issue 27: links and code in a directory
# The CLI refuses a run directory holding a link before it writes (tests/test_bad_inputs.py, "*-link*" cases);
# these check the writers themselves, for a link planted after that check (a race), against the file it targets.
def test_atomic_write_never_follows_a_planted_temp_link(tmp_path):
    from ponderlm.train.rundir import write_text_atomic

    precious = tmp_path / "precious.txt"
    precious.write_text("mine\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / f".config.yaml.tmp-{os.getpid()}").symlink_to(precious)
    write_text_atomic(tmp_path / "run" / "config.yaml", "name: x\n")
    assert precious.read_text() == "mine\n"
    assert (tmp_path / "run" / "config.yaml").read_text() == "name: x\n"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml"]


def test_the_lock_is_never_taken_through_a_link(tmp_path):
    from ponderlm.train.rundir import RunLock

    precious = tmp_path / "precious.txt"
    precious.write_text("mine\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("name: x\n")
    (tmp_path / "run" / ".ponderlm.lock").symlink_to(precious)
    with pytest.raises(PonderError, match=r"\.ponderlm\.lock is a symbolic link; ponderlm never writes through"):
        RunLock().acquire(tmp_path / "run", lambda where: None)
    assert precious.read_text() == "mine\n"


def test_checkpoint_rotation_never_deletes_a_links_target(runs, tmp_path):
    """keep_last deletes old checkpoints; one that is a link is skipped, so the directory it names survives."""
    from ponderlm.train.checkpoint import commit

    outside = tmp_path / "outside"
    shutil.copytree(runs["single"] / "checkpoints" / "step_000002", outside)
    root = tmp_path / "run" / "checkpoints"
    root.mkdir(parents=True)
    (root / "step_000001").symlink_to(outside)
    tmp = root / ".tmp-step_000003"
    tmp.mkdir()
    (tmp / "a.txt").write_text("a")
    commit(tmp, root / "step_000003", 3, {}, keep_last=1)
    assert (outside / "manifest.json").is_file() and len(list(outside.iterdir())) > 3


def test_loading_our_own_checkpoints_never_imports_their_bundled_code(runs):
    """final/ carries modeling code and auto_map for users without ponderlm; ponderlm itself loads the installed
    classes: transformers' dynamic-module package (where remote code is imported) stays untouched."""
    import sys

    from ponderlm.backbone.hf_import import check_backbone_overrides
    from ponderlm.eval.perplexity import load_model
    from ponderlm.modeling import PonderForCausalLM

    final = runs["single"] / "final"
    assert json.loads((final / "config.json").read_text()).get("auto_map")  # the code is there to be run
    before = {m for m in sys.modules if m.startswith("transformers_modules")}
    load_model(final, "cpu")
    PonderForCausalLM.from_backbone(str(final), method="ponderlm2", max_steps=1)
    check_backbone_overrides(str(final), "ponderlm2")
    assert {m for m in sys.modules if m.startswith("transformers_modules")} == before
