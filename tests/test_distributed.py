"""Multi-process training on CPU: 2 gloo processes under torchrun (tests/test_train.py covers one process).

1. DDP on 2 ranks gives the loss curve of 1 process with the same global batch.
2. FSDP2 (with activation checkpointing) gives the DDP curve.
3. Sharded (DCP) checkpoints resume across world sizes: saved on 2 ranks -> 1 process and 1 -> 2.
4. A rank that dies fails the job with a clear message; the last complete checkpoint stays intact.
5. AdaPonderLM's gates-only stage: backbone unchanged, resume exact across the switch.
Plus `ponderlm plan`. Each torchrun launch takes ~15-25 s on a shared 2-core machine.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ponderlm.errors import PonderError
from ponderlm.train import from_dict, load_config, read_metrics, train
from ponderlm.train.checkpoint import list_checkpoints, verify_checkpoint
from ponderlm.train.config import save_yaml


def tiny(out: Path, data_dir: Path, *overrides: str):
    """2-layer, 32-wide PonderLM-2 (K=1); the Jacobi sweep count is random, so ranks must draw alike."""
    base = {
        "name": "tiny",
        "model": {"backbone": "llama", "method": "ponderlm2", "max_steps": 1, "hidden_size": 32,
                  "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
                  "jacobi_iters_train": [1, 2, 3]},
        "data": {"data_dir": str(data_dir), "seq_len": 32},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"steps": 6, "batch_size": 2, "eval_every": 3, "eval_batches": 100, "save_every": 3,
                  "keep_last": 3, "out": str(out), "sample_tokens": 0, "device": "cpu"},
        "log": {"tensorboard": False},
    }
    return from_dict(base, overrides)


def run(*args: str, env: dict[str, str] | None = None, torchrun: bool = True) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 -m ponderlm train ARGS` (or `python -m ponderlm train ARGS`)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"] if torchrun else ["-m"]
    return subprocess.run([sys.executable, *launcher, "ponderlm", "train", *args], capture_output=True, text=True,
                          timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


def assert_same_curve(a: Path, b: Path, rel: float = 1e-5) -> None:
    rows_a, rows_b = read_metrics(a, "train"), read_metrics(b, "train")
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == list(range(1, 7))
    for x, y in zip(rows_a, rows_b):
        assert x["tokens_seen"] == y["tokens_seen"] and x["lr"] == y["lr"]
        assert x["loss"] == pytest.approx(y["loss"], rel=rel), (x, y)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=100 * rel), (x, y)  # sharded norms: other sums
        assert x["executed_steps"] == y["executed_steps"]
    evals_a, evals_b = read_metrics(a, "eval"), read_metrics(b, "eval")
    assert [e["step"] for e in evals_a] == [e["step"] for e in evals_b] == [3, 6]
    for x, y in zip(evals_a, evals_b):
        assert x["val_tokens"] == y["val_tokens"] and x["val_loss"] == pytest.approx(y["val_loss"], rel=rel)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    """Reference runs shared by the tests: one process (batch 4, DCP checkpoints), DDP and FSDP2 on 2 x 2."""
    root = tmp_path_factory.mktemp("runs")
    save_yaml(tiny(root / "unused", data_dir), root / "tiny.yaml")
    train(tiny(root / "one", data_dir, "train.batch_size=4", "dist.checkpoint=dcp"))
    ok(run(str(root / "tiny.yaml"), "--out", str(root / "ddp")))
    ok(run(str(root / "tiny.yaml"), "dist.backend=fsdp2", "dist.activation_checkpointing=true", "--out",
           str(root / "fsdp")))
    return {"root": root, "yaml": root / "tiny.yaml", "one": root / "one", "ddp": root / "ddp", "fsdp": root / "fsdp"}


def test_ddp_on_two_ranks_matches_one_process(runs):
    assert_same_curve(runs["ddp"], runs["one"])
    assert (runs["ddp"] / "checkpoints" / "step_000006" / "dcp" / "__1_0.distcp").is_file()  # both ranks wrote


def test_fsdp2_matches_ddp_and_exports_a_consolidated_model(runs):
    from ponderlm import PonderForCausalLM

    assert_same_curve(runs["fsdp"], runs["ddp"])
    a = load_file(str(runs["fsdp"] / "final" / "model.safetensors"))
    b = load_file(str(runs["ddp"] / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    model = PonderForCausalLM.from_pretrained(runs["fsdp"] / "final")
    assert model.config.method == "ponderlm2" and sum(p.numel() for p in model.parameters()) > 0


def _truncate_to_step_3(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / "step_000006")
    shutil.rmtree(dst / "final")
    assert (dst / "checkpoints" / "step_000003" / "dcp").is_dir()  # a sharded checkpoint
    return dst


def test_sharded_checkpoints_resume_across_world_sizes(runs, data_dir, tmp_path):
    # Saved on 2 ranks (batch 2 each) -> resumed in 1 process (batch 4): the same global batches.
    two_to_one = _truncate_to_step_3(runs["ddp"], tmp_path / "2to1")
    train(tiny(two_to_one, data_dir, "train.batch_size=4"), resume=True)
    assert_same_curve(two_to_one, runs["ddp"])
    # Saved in 1 process (dist.checkpoint=dcp) -> resumed on 2 ranks.
    one_to_two = _truncate_to_step_3(runs["one"], tmp_path / "1to2")
    ok(run(str(runs["yaml"]), "--out", str(one_to_two), "--resume"))
    assert_same_curve(one_to_two, runs["one"])


def test_a_dead_rank_fails_the_job_and_keeps_the_last_checkpoint(runs, tmp_path):
    out = tmp_path / "crash"
    result = run(str(runs["yaml"]), "train.save_every=2", "--out", str(out), "--nproc", "2", torchrun=False,
                 env={"PONDERLM_FAIL_AT": "1:5"})  # rank 1 exits abruptly during step 5
    assert result.returncode == 1
    assert "rank 1: PONDERLM_FAIL_AT=1:5: simulating a crash in step 5" in result.stderr
    assert "rank 0/2: training failed in step 5" in result.stderr  # our side: which rank, which step
    assert "distributed training failed: rank 1 exited with code 1" in result.stderr
    assert f"last complete checkpoint: {out / 'checkpoints' / 'step_000004'}" in result.stderr
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2, 4] and not (out / "final").exists()
    identity = load_config(out / "config.yaml").identity_hash()
    assert verify_checkpoint(out / "checkpoints" / "step_000004", identity)["step"] == 4


def test_gates_only_stage_keeps_the_backbone_and_resumes_exactly_across_the_switch(data_dir, tmp_path):
    from ponderlm.config import PonderConfig
    from ponderlm.modeling import PonderForCausalLM

    extra = ("model.method=adaponder", "model.max_steps=2", "train.freeze_backbone_steps=3", "train.save_every=1",
             "train.keep_last=10")
    cfg = tiny(tmp_path / "full", data_dir, *extra)
    train(cfg)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # the trainer's initialisation
    init = PonderForCausalLM(PonderConfig(**cfg.model_kwargs())).state_dict()
    ckpts = list_checkpoints(tmp_path / "full" / "checkpoints")
    weights = {s: load_file(str(p / "model.safetensors")) for s, p in ckpts}
    gate = lambda k: k.startswith("method.gates.")  # noqa: E731
    for step in (1, 2, 3):  # gates-only stage: every backbone weight is still the initial one
        assert all(torch.equal(weights[step][k], init[k]) for k in weights[step] if not gate(k)), step
    assert not all(torch.equal(weights[3][k], init[k]) for k in weights[3] if gate(k))
    assert not all(torch.equal(weights[4][k], weights[3][k]) for k in weights[4] if not gate(k))  # then all train

    for fmt, stop in (("auto", 2), ("dcp", 3)):  # single-file and sharded checkpoints, before / at the switch
        part = tiny(tmp_path / fmt, data_dir, *extra, f"dist.checkpoint={fmt}")
        assert train(part, stop_after=stop).step == stop
        train(tiny(tmp_path / fmt, data_dir, *extra, f"dist.checkpoint={fmt}"), resume=True)
        for key in ("loss", "grad_norm", "executed_steps"):
            assert [r[key] for r in read_metrics(tmp_path / fmt, "train")] == \
                   [r[key] for r in read_metrics(tmp_path / "full", "train")], (fmt, key)


def test_distributed_settings_are_validated(data_dir, tmp_path):
    from ponderlm.train.config import grad_accum_for

    with pytest.raises(PonderError, match="freeze_backbone_steps needs model.method=adaponder"):
        tiny(tmp_path, data_dir, "train.freeze_backbone_steps=2")
    with pytest.raises(PonderError, match="dist.checkpoint must be one of"):
        tiny(tmp_path, data_dir, "dist.checkpoint=zarr")
    cfg = tiny(tmp_path, data_dir, "train.global_batch_size=8")
    assert [grad_accum_for(cfg, n) for n in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(PonderError, match="not a multiple of train.batch_size x world size"):
        grad_accum_for(cfg, 3)


def test_plan_prints_memory_flops_and_time(capsys):
    from ponderlm.cli import main

    assert main(["plan", "llama-410m-ponderlm3", "--gpus", "8", "--mfu", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "411.4M" in out and "524,288 tokens per step" in out and "1x1 + 1x2 + 1x3 + 3x4 + 1x4" in out
    assert "sharded over the GPUs" in out and "MFU 0.5" in out
    assert main(["plan", "missing.yaml", "--gpus", "8"]) == 2
    assert "config file not found: missing.yaml" in capsys.readouterr().err
    assert main(["plan", "llama-410m-ponderlm3", "--gpus", "3"]) == 2  # 256 sequences do not split over 3 x 4


@pytest.mark.parametrize("method,K", [("vanilla", 0), ("ponderlm2", 1), ("adaponder", 2)])
def test_plan_activation_estimate_matches_what_autograd_keeps(method, K):
    """fp32, no checkpointing: the estimate vs the bytes of every tensor saved for backward (tiny model)."""
    from ponderlm.config import PonderConfig
    from ponderlm.modeling import PonderForCausalLM
    from ponderlm.plan import activation_bytes

    torch.manual_seed(0)
    config = PonderConfig(backbone="llama", method=method, max_steps=K, hidden_size=128, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=256, vocab_size=512, jacobi_iters_train=[2])
    model = PonderForCausalLM(config).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(0, 512, (2, 128))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=x, labels=x)
    saved[out.logits.untyped_storage().data_ptr()] = out.logits.untyped_storage().nbytes()  # kept in the output
    estimate = activation_bytes(config, 128, 2, act=4, stream=4, checkpointing=False)["total"]
    assert estimate == pytest.approx(sum(saved.values()), rel=0.1)
