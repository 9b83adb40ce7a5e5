"""Import of the official PonderLM-2 / PonderingLM checkpoint formats (backbone/official.py).

Each test writes a tiny checkpoint as the official code saves it and compares our converted model with the
official forward re-stated from its equations on transformers' stock decoder (tests/official_formats.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from official_formats import (
    hf_model,
    loop_fields,
    official_loop,
    official_pause,
    official_ponderlm2,
    official_ponderlm_v1,
    orin_fields,
    pause_fields,
    ponderinglm_fields,
    ponderlm2_fields,
    write_official,
)

from ponderlm import PonderForCausalLM
from ponderlm.errors import PonderError
from ponderlm.inference import sequential_logits

IDS = torch.tensor([[5, 17, 3, 88, 42, 9, 61], [1, 2, 70, 33, 4, 95, 8]])
TOL = 2e-5


def _ours(path, **kwargs):
    model = PonderForCausalLM.from_pretrained(str(path), **kwargs)
    assert isinstance(model, PonderForCausalLM)
    return model


@pytest.mark.parametrize("backbone", ["llama", "gpt_neox"])
@pytest.mark.parametrize("k", [1, 2])
def test_ponderlm2_matches_official_forward(tmp_path, one_thread, backbone, k):
    hf = hf_model(backbone)
    fields = ponderlm2_fields(k, iters=2)
    if backbone == "gpt_neox":  # as released: GPT-NeoX wired through auto_map, no recurrent_model needed
        fields.pop("recurrent_model")
        fields["auto_map"] = {"AutoModelForCausalLM": "modeling_gpt_neox.GPTNeoXForCausalLM"}
        path = write_official(hf, tmp_path / "ckpt", fields)
        model = _ours(path)
    else:
        path = write_official(hf, tmp_path / "ckpt", fields)
        model = _ours(path, official_method="ours")
    cfg = model.config
    assert (cfg.method, cfg.max_steps, cfg.backbone, cfg.jacobi_iters_eval, list(cfg.jacobi_iters_train)) == \
        ("ponderlm2", k, backbone, 2, [2, 3])
    assert cfg.resolved_embed_scale == pytest.approx(math.sqrt(2.5 * 32))
    expected = official_ponderlm2(hf, IDS, k, sweeps=2, scale=math.sqrt(2.5 * 32))
    with torch.no_grad():
        got = model(IDS).logits
    assert (got - expected).abs().max() < TOL
    # Decoding: with enough sweeps the official Jacobi is the token-by-token solution, which `generate` runs.
    converged = official_ponderlm2(hf, IDS, k, sweeps=IDS.shape[1] * (k + 1), scale=math.sqrt(2.5 * 32))
    seq = sequential_logits(model, IDS)[0]
    assert (seq - converged).abs().max() < 1e-4
    assert (seq - got).abs().max() > 1e-4 or k == 1  # the 2-sweep solve is not converged (the check can fail)


def test_ponderlm2_unscaled_and_fixed_sweeps(tmp_path, one_thread):
    hf = hf_model("llama", seed=1)
    path = write_official(hf, tmp_path / "c", ponderlm2_fields(1, scale=False, iters=4, random_iters=False))
    model = _ours(path, official_method="ours")
    assert model.config.resolved_embed_scale == 1.0 and list(model.config.jacobi_iters_train) == [4]
    with torch.no_grad():
        assert (model(IDS).logits - official_ponderlm2(hf, IDS, 1, sweeps=4, scale=1.0)).abs().max() < TOL


@pytest.mark.parametrize("backbone", ["llama", "gpt_neox"])
def test_ponderinglm_v1_matches_official_forward(tmp_path, one_thread, backbone):
    hf = hf_model(backbone, seed=2)
    path = write_official(hf, tmp_path / "c", ponderinglm_fields(3))
    model = _ours(path)  # detected from `ponderinglm`
    assert (model.config.method, model.config.max_steps) == ("ponderlm", 3)
    expected = official_ponderlm_v1(hf, IDS, 3, scale=math.sqrt(32))
    with torch.no_grad():
        assert (model(IDS).logits - expected).abs().max() < TOL
    assert (sequential_logits(model, IDS)[0] - expected).abs().max() < 1e-4


def test_orin_v1_k1_and_running_sum(tmp_path, one_thread):
    hf = hf_model("llama", seed=3)
    model = _ours(write_official(hf, tmp_path / "a", orin_fields(1)), official_method="ponderlm")
    with torch.no_grad():
        assert (model(IDS).logits - official_ponderlm_v1(hf, IDS, 1, math.sqrt(32), running_sum=False)).abs().max() \
            < TOL
    model = _ours(write_official(hf, tmp_path / "b", orin_fields(3, residual=True)), official_method="ponderlm")
    with torch.no_grad():
        assert (model(IDS).logits - official_ponderlm_v1(hf, IDS, 3, math.sqrt(32))).abs().max() < TOL
    # The official default restarts every pass from U^0: not our method for K > 1, so it is refused by name.
    with pytest.raises(PonderError, match="residual_interpolated_embeds"):
        _ours(write_official(hf, tmp_path / "c", orin_fields(3)), official_method="ponderlm")


@pytest.mark.parametrize("backbone", ["llama", "gpt_neox"])
def test_loop_and_pause_match_official_forward(tmp_path, one_thread, backbone):
    hf = hf_model(backbone, seed=4)
    model = _ours(write_official(hf, tmp_path / "loop", loop_fields(2)), official_method="loop")
    assert model.config.method == "looped"
    with torch.no_grad():
        assert (model(IDS).logits - official_loop(hf, IDS, 2)).abs().max() < TOL
    model = _ours(write_official(hf, tmp_path / "pause", pause_fields(2, pause_token_id=90)), official_method="pause")
    assert model.config.method == "pause"
    with torch.no_grad():
        assert (model(IDS).logits - official_pause(hf, IDS, 2, 90, math.sqrt(32))).abs().max() < TOL
    # GPT-NeoX's pause class reads scale_embeds; the Llama one scales unconditionally.
    fields = {**pause_fields(2, pause_token_id=90), "scale_embeds": False}
    model = _ours(write_official(hf, tmp_path / "pause1", fields), official_method="pause")
    scale = math.sqrt(32) if backbone == "llama" else 1.0
    with torch.no_grad():
        assert (model(IDS).logits - official_pause(hf, IDS, 2, 90, scale)).abs().max() < TOL


def test_loop_without_recurrent_model_and_neox_addhidden_are_refused(tmp_path):
    hf = hf_model("gpt_neox")
    with pytest.raises(PonderError, match="recurrent_model"):
        _ours(write_official(hf, tmp_path / "a", {**loop_fields(2), "recurrent_model": False}), official_method="loop")
    with pytest.raises(PonderError, match="adds the last hidden state"):
        _ours(write_official(hf, tmp_path / "b", orin_fields(1)), official_method="ponderlm")


def test_vanilla_official_is_the_stock_model(tmp_path, one_thread):
    hf = hf_model("llama", seed=5)
    fields = dict(ponderlm2_fields(0), recurrent_model=False)
    model = _ours(write_official(hf, tmp_path / "v", fields))
    assert model.config.method == "vanilla" and model.config.resolved_embed_scale == 1.0
    with torch.no_grad():
        assert (model(IDS).logits - hf(IDS).logits).abs().max() < TOL


@pytest.mark.parametrize("change, field", [
    ({"interpolation": True}, "interpolation"),
    ({"mystery_switch": 3}, "mystery_switch"),
    ({"num_latent_thoughts": -1}, "num_latent_thoughts"),
    ({"scale_embeds": "yes"}, "scale_embeds"),
    ({"patch_method": "magic"}, "patch_method"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "RoPE"),
])
def test_unknown_or_inconsistent_fields_are_one_line_errors(tmp_path, change, field):
    hf = hf_model("llama")
    path = write_official(hf, tmp_path / "c", {**ponderlm2_fields(1), **change})
    with pytest.raises(PonderError, match=field) as err:
        _ours(path, official_method="ours")
    assert "\n" not in str(err.value)


def test_undetermined_patch_method_is_an_error_naming_it(tmp_path):
    path = write_official(hf_model("llama"), tmp_path / "c", ponderlm2_fields(1))
    with pytest.raises(PonderError, match="patch_method") as err:
        _ours(path)  # ours, loop and pause write the same fields: no guess
    assert "official_method" in str(err.value)
    # A recorded patch_method (our export writes it) that contradicts the caller's is refused too.
    recorded = write_official(hf_model("llama"), tmp_path / "d", {**ponderlm2_fields(1), "patch_method": "ours"})
    with pytest.raises(PonderError, match="patch_method"):
        _ours(recorded, official_method="loop")


def test_ignore_fields_lets_a_known_harmless_field_through(tmp_path, one_thread):
    hf = hf_model("llama")
    path = write_official(hf, tmp_path / "c", {**ponderlm2_fields(1), "wandb_run": "abc"})
    with pytest.raises(PonderError, match="wandb_run"):
        _ours(path, official_method="ours")
    assert _ours(path, official_method="ours", ignore_fields=["wandb_run"]).config.method == "ponderlm2"


def test_our_own_checkpoints_still_load(tmp_path, one_thread):
    from ponderlm import PonderConfig

    model = PonderForCausalLM(PonderConfig(method="ponderlm2", max_steps=1, vocab_size=96, hidden_size=32,
                                           num_hidden_layers=1, num_attention_heads=2))
    model.save_pretrained(tmp_path / "ours")
    again = PonderForCausalLM.from_pretrained(tmp_path / "ours")
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


def test_eval_generate_and_serve_load_a_released_checkpoint_directly(tmp_path, one_thread):
    """One command evaluates an official checkpoint: `ponderlm.loading.load_model` (what eval, generate and serve
    use) reads the released GPT-NeoX PonderLM-2 format without a convert step, computing the official forward."""
    from ponderlm.loading import load_model

    hf = hf_model("gpt_neox")
    fields = ponderlm2_fields(1, iters=2)
    fields.pop("recurrent_model")
    fields["auto_map"] = {"AutoModelForCausalLM": "modeling_gpt_neox.GPTNeoXForCausalLM"}
    path = write_official(hf, tmp_path / "ckpt", fields)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, **{f"w{i}": i for i in range(1, 96)}}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(path)  # as released: beside
    model, tokenizer = load_model(path, device="cpu")
    assert model.config.method == "ponderlm2" and not model.training
    assert tokenizer("w5 w17").input_ids == [5, 17]
    with torch.no_grad():
        got = model(IDS).logits
    assert (got - official_ponderlm2(hf, IDS, 1, sweeps=2, scale=math.sqrt(2.5 * 32))).abs().max() < TOL
