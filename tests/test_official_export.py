"""Export to the official formats (ponderlm2, ponderlm) and back; `ponderlm convert`; continuing an imported
PonderLM-2 checkpoint as another method (`from_backbone` / `model.init_from`).

The exported directory is read by transformers' stock Llama / GPT-NeoX class (as the official code's patched
class reads it: the same tensor names, extra config fields) and run through the official forward re-stated in
tests/official_formats.py, so the export is checked against the official semantics, not only against itself.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from official_formats import (
    hf_model,
    official_ponderlm2,
    official_ponderlm_v1,
    ponderlm2_fields,
    write_official,
)

from ponderlm import PonderConfig, PonderForCausalLM
from ponderlm.backbone.official import export_official
from ponderlm.cli import main
from ponderlm.errors import PonderError

IDS = torch.tensor([[5, 17, 3, 88, 42, 9], [1, 2, 70, 33, 4, 95]])
SHAPE = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, init="hf",
             initializer_range=0.2)


def _ours(method: str, backbone: str, k: int) -> PonderForCausalLM:
    torch.manual_seed(0)
    return PonderForCausalLM(PonderConfig(method=method, backbone=backbone, max_steps=k, **SHAPE)).eval()


def _stock(path, backbone: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("backbone", ["llama", "gpt_neox"])
def test_ponderlm2_export_runs_the_official_forward_and_round_trips(tmp_path, one_thread, backbone):
    model = _ours("ponderlm2", backbone, 2)
    export_official(model, tmp_path / "official")
    cfg = json.loads((tmp_path / "official" / "config.json").read_text())
    assert cfg["model_type"] == backbone and cfg["num_latent_thoughts"] == 2 and cfg["scale_embeds"] is True
    assert cfg["interpolation"] is False and cfg["random_jacobi_iterations"] is True and cfg["recurrent_model"]
    assert cfg["checkpoint_num_layers"] == 100  # the official GPT-NeoX class reads it in __init__
    from safetensors import safe_open

    with safe_open(str(tmp_path / "official" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    if backbone == "gpt_neox":
        assert "embed_out.weight" in names and "gpt_neox.embed_in.weight" in names
    else:
        assert "lm_head.weight" in names and "model.embed_tokens.weight" in names
    with torch.no_grad():
        ours = model(IDS).logits
    expected = official_ponderlm2(_stock(tmp_path / "official", backbone), IDS, 2, sweeps=3,
                                  scale=math.sqrt(2.5 * 32))
    assert (ours - expected).abs().max() < 2e-5
    back = PonderForCausalLM.from_pretrained(tmp_path / "official")  # `patch_method` makes it unambiguous
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, ours)


@pytest.mark.parametrize("backbone", ["llama", "gpt_neox"])
def test_ponderlm_v1_export_runs_the_official_forward_and_round_trips(tmp_path, one_thread, backbone):
    model = _ours("ponderlm", backbone, 3)
    export_official(model, tmp_path / "official")
    cfg = json.loads((tmp_path / "official" / "config.json").read_text())
    # Llama: the PonderLM-2 repository's `ponderlm` class with the running sum; GPT-NeoX: PonderingLM.
    assert cfg.get("residual_interpolated_embeds") is True if backbone == "llama" else cfg["ponderinglm"] is True
    with torch.no_grad():
        ours = model(IDS).logits
    expected = official_ponderlm_v1(_stock(tmp_path / "official", backbone), IDS, 3, scale=math.sqrt(32))
    assert (ours - expected).abs().max() < 2e-5
    back = PonderForCausalLM.from_pretrained(tmp_path / "official")
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, ours)


@pytest.mark.parametrize("change, word", [
    (dict(method="ponderlm3"), "export"), (dict(embed_scale=3.0), "embed_scale"),
    (dict(latent_feedback="pre_norm"), "latent_feedback"), (dict(jacobi_iters_train=[4], jacobi_iters_eval=2),
                                                              "jacobi_iters_train"),
])
def test_export_refuses_what_the_official_code_cannot_express(tmp_path, change, word):
    model = PonderForCausalLM(PonderConfig(**{**dict(method="ponderlm2", max_steps=1, **SHAPE), **change}))
    with pytest.raises(PonderError, match=word):
        export_official(model, tmp_path / "x")


def test_convert_cli_both_ways(tmp_path, one_thread, capsys):
    hf = hf_model("llama")
    src = write_official(hf, tmp_path / "official", ponderlm2_fields(1))
    (src / "tokenizer_config.json").write_text("{}")
    assert main(["convert", "--from", str(src), "--out", str(tmp_path / "ours")]) != 0  # which patch_method?
    assert "official-method" in capsys.readouterr().err
    assert main(["convert", "--from", str(src), "--out", str(tmp_path / "ours"), "--official-method", "ours"]) == 0
    assert (tmp_path / "ours" / "tokenizer_config.json").is_file()
    ours = PonderForCausalLM.from_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "ponder"
    with torch.no_grad():
        expected = official_ponderlm2(hf, IDS, 1, sweeps=3, scale=math.sqrt(2.5 * 32))
        assert (ours(IDS).logits - expected).abs().max() < 2e-5
    assert main(["convert", "--from", str(tmp_path / "ours"), "--out", str(tmp_path / "back"), "--to",
                 "official"]) == 0
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert back["patch_method"] == "ours" and back["num_latent_thoughts"] == 1


@pytest.mark.parametrize("method, extra", [("ponderlm3", {}), ("latent_cot", {}), ("adaponder", {})])
def test_continue_an_imported_ponderlm2_as_another_method(tmp_path, one_thread, method, extra):
    hf = hf_model("llama")
    src = write_official(hf, tmp_path / "official", {**ponderlm2_fields(2), "patch_method": "ours"})
    model = PonderForCausalLM.from_backbone(str(src), method=method, **extra)
    assert model.config.method == method and model.config.max_steps == 2
    # Every backbone weight is the checkpoint's, and the embedding scale stays the official sqrt(2.5 d).
    for name, tensor in hf.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert model.config.resolved_embed_scale == pytest.approx(math.sqrt(2.5 * 32))
    if method == "ponderlm3":  # the router is added at its prior (its output bias = the prior logits)
        router = model.method.router
        assert torch.equal(router.net[-1].bias.detach(), router.prior())


def test_train_init_from_an_official_checkpoint(tmp_path, data_dir, one_thread):
    """`model.init_from` with an official directory: the architecture check reads it (a contradicting shape key is
    one line naming it) and a short PonderLM-3 run starts from its weights."""
    from helpers import tiny_run
    from transformers import LlamaConfig, LlamaForCausalLM

    from ponderlm.backbone.hf_import import check_backbone_overrides
    from ponderlm.train import train

    torch.manual_seed(0)
    shape = dict(vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
                 hidden_act="silu", tie_word_embeddings=False)
    hf = LlamaForCausalLM(LlamaConfig(**shape)).eval()
    src = write_official(hf, tmp_path / "official", {**ponderlm2_fields(1), "patch_method": "ours"}, shape)
    base = check_backbone_overrides(str(src), "ponderlm3")
    assert (base.method, base.max_steps, base.hidden_size) == ("ponderlm2", 1, 32)
    with pytest.raises(ValueError, match="hidden_size=64"):
        check_backbone_overrides(str(src), "ponderlm3", hidden_size=64)
    cfg = tiny_run(tmp_path / "run", data_dir, f"model.init_from={src}", "model.method=ponderlm3")
    train(cfg)
    final = PonderForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert final.config.method == "ponderlm3"
    assert final.config.resolved_embed_scale == pytest.approx(math.sqrt(2.5 * 32))
