"""The training loop: exact resume, refused checkpoints, checkpoint layout, loss normalisation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ponderlm.errors import PonderError
from ponderlm.train import from_dict, read_metrics, train
from ponderlm.train.checkpoint import list_checkpoints


def tiny(out: Path, data_dir: Path, *overrides: str):
    """A 2-layer, 32-wide PonderLM-2 (K=1) run config; seconds per run on CPU."""
    base = {
        "name": "tiny",
        "model": {"backbone": "llama", "method": "ponderlm2", "max_steps": 1, "hidden_size": 32,
                  "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64},
        "data": {"data_dir": str(data_dir), "seq_len": 32},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"steps": 6, "batch_size": 2, "eval_every": 2, "eval_batches": 2, "save_every": 100,
                  "out": str(out), "sample_tokens": 0, "device": "cpu"},
        "log": {"tensorboard": False},
    }
    return from_dict(base, overrides)


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_is_bit_exact(tmp_path, data_dir):
    # Jacobi sweep counts are drawn at random each step and grad_accum=2 splits every step: both must resume exactly.
    extra = ("train.grad_accum=2", "model.jacobi_iters_train=[1, 2, 3]")
    full = train(tiny(tmp_path / "full", data_dir, *extra))
    part = train(tiny(tmp_path / "part", data_dir, *extra), stop_after=3)
    assert part.stopped_early and part.step == 3 and not (tmp_path / "part" / "final").exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "part" / "checkpoints")] == [3]
    resumed = train(tiny(tmp_path / "part", data_dir, *extra), resume=True)
    assert resumed.step == full.step == 6 and resumed.tokens_seen == full.tokens_seen

    rows_full, rows_part = read_metrics(tmp_path / "full", "train"), read_metrics(tmp_path / "part", "train")
    assert [r["step"] for r in rows_part] == list(range(1, 7))
    for key in ("loss", "grad_norm", "lr", "executed_steps", "tokens_seen"):
        assert [r[key] for r in rows_part] == [r[key] for r in rows_full], key
    assert read_metrics(tmp_path / "part", "eval") == read_metrics(tmp_path / "full", "eval")
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path, data_dir):
    train(tiny(tmp_path, data_dir, "train.save_every=2"), stop_after=3)  # checkpoints at 2 and 3
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a row the killed run wrote after its last checkpoint
        f.write(json.dumps({"kind": "train", "step": 4, "loss": 123.0}) + "\n")
    (tmp_path / "checkpoints" / "step_000003" / "manifest.json").unlink()  # step 3 never completed
    train(tiny(tmp_path, data_dir, "train.save_every=2"), resume=True)
    rows = read_metrics(tmp_path, "train")
    assert [r["step"] for r in rows] == list(range(1, 7)) and 123.0 not in [r["loss"] for r in rows]


def test_truncated_checkpoint_is_refused_and_nothing_is_overwritten(tmp_path, data_dir):
    train(tiny(tmp_path, data_dir), stop_after=2)
    ckpt = tmp_path / "checkpoints" / "step_000002"
    opt = ckpt / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])
    before = snapshot(tmp_path)
    with pytest.raises(PonderError, match=r"optimizer\.pt is corrupt or truncated"):
        train(tiny(tmp_path, data_dir), resume=True)
    assert snapshot(tmp_path) == before


def test_foreign_checkpoint_is_refused(tmp_path, data_dir):
    train(tiny(tmp_path, data_dir), stop_after=1)
    before = snapshot(tmp_path)
    with pytest.raises(PonderError, match="different model/data config"):
        train(tiny(tmp_path, data_dir, "model.hidden_size=64"), resume=True)
    assert snapshot(tmp_path) == before


def test_resume_needs_a_checkpoint_and_fresh_runs_refuse_old_dirs(tmp_path, data_dir):
    with pytest.raises(PonderError, match="new does not exist; start the run without --resume"):
        train(tiny(tmp_path / "new", data_dir), resume=True)
    train(tiny(tmp_path / "old", data_dir), stop_after=1)
    with pytest.raises(PonderError, match="already holds a run"):
        train(tiny(tmp_path / "old", data_dir))


def test_checkpoint_layout_rotation_and_safe_loading(tmp_path, data_dir):
    result = train(tiny(tmp_path, data_dir, "train.steps=4", "train.save_every=1", "train.keep_last=2"))
    assert result.exit_code == 0
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [s for s, _ in ckpts] == [3, 4]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    path = ckpts[-1][1]
    manifest = json.loads((path / "manifest.json").read_text())["files"]
    expected = {"model.safetensors", "config.json", "optimizer.pt", "rng.safetensors", "trainer_state.json"}
    assert expected <= set(manifest)
    state = json.loads((path / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["tokens_seen"] == 4 * 2 * 32 and "loader" in state
    optim = torch.load(path / "optimizer.pt", weights_only=True)  # tensors and numbers only
    assert set(optim) == {"state", "param_groups"}
    from ponderlm import PonderForCausalLM

    model = PonderForCausalLM.from_pretrained(path)  # a checkpoint is also a save_pretrained dir
    assert model.config.hidden_size == 32
    resolved = (tmp_path / "config.yaml").read_text()
    assert "vocab_size: 4096" in resolved  # filled in from the data


def test_grad_accumulation_leaves_loss_and_gradient_unchanged(tmp_path, data_dir):
    # The same 4 windows per step either as one batch of 4 or two micro-batches of 2.
    common = ("model.method=vanilla", "model.max_steps=0", "train.steps=2")
    one = train(tiny(tmp_path / "one", data_dir, *common, "train.batch_size=4"))
    two = train(tiny(tmp_path / "two", data_dir, *common, "train.batch_size=2", "train.grad_accum=2"))
    assert one.tokens_seen == two.tokens_seen
    for a, b in zip(read_metrics(one.out_dir, "train"), read_metrics(two.out_dir, "train")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_compiled_layers_train_like_eager_and_save_the_same_names(tmp_path, data_dir):
    common = ("model.method=ponderlm2", "train.steps=2", "train.eval_every=100", "model.jacobi_iters_train=[1]")
    eager = train(tiny(tmp_path / "eager", data_dir, *common))
    compiled = train(tiny(tmp_path / "compiled", data_dir, *common, "train.compile=true"))
    for a, b in zip(read_metrics(eager.out_dir, "train"), read_metrics(compiled.out_dir, "train")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    a = load_file(str(tmp_path / "eager" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "compiled" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_sigterm_between_steps_checkpoints_and_returns_143(tmp_path, data_dir, monkeypatch):
    # Deliver SIGTERM from inside step 2's forward: the step finishes, a checkpoint is written, the loop stops.
    from ponderlm.modeling import PonderForCausalLM

    original = PonderForCausalLM.set_training_progress

    def progress(self, step):
        if step == 1:
            os.kill(os.getpid(), 15)
        return original(self, step)

    monkeypatch.setattr(PonderForCausalLM, "set_training_progress", progress)
    result = train(tiny(tmp_path, data_dir))
    assert result.signal == 15 and result.exit_code == 143 and result.step == 2
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2]
    assert not (tmp_path / "final").exists()


def test_continued_pretraining_from_a_hf_backbone(tmp_path, data_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=64))
    hf.save_pretrained(tmp_path / "hf")
    cfg = from_dict({"model": {"init_from": str(tmp_path / "hf"), "method": "ponderlm2", "max_steps": 1},
                     "data": {"data_dir": str(data_dir), "seq_len": 32},
                     "train": {"steps": 1, "batch_size": 2, "eval_batches": 1, "out": str(tmp_path / "run"),
                               "sample_tokens": 0, "device": "cpu"},
                     "log": {"tensorboard": False}})
    train(cfg)
    from ponderlm import PonderForCausalLM

    model = PonderForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert model.config.method == "ponderlm2" and model.config.hidden_size == 32
    # One step at lr 1e-3 moves each weight by about 1e-3: the backbone weights came from the HF model.
    assert torch.allclose(model.get_input_embeddings().weight, hf.model.embed_tokens.weight, atol=1e-2)
