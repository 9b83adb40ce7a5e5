"""Acceptance test of the method interface: a new method defined only here runs through training, `eval ppl`,
FLOPs accounting, `plan`, prefill and batched `generate` with no edit anywhere else in the code base.

The toy method, "echo": the backbone runs K+1 times per token; pass k+1 reads the token's embedding plus
`echo_scale` times the post-norm state of pass k (its own option). Each pass attends over its own pass's keys,
so decoding keeps one cache per pass. Its cost model: K+1 full passes, per-pass caches.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import padded_batch, single_thread, tiny_model, tiny_run

from ponderlm.backbone.attention import slot_causal_mask
from ponderlm.config import check_finite
from ponderlm.flops import ComputeLedger, count_flops, flop_counter, flops, full_pass
from ponderlm.inference.generate import generate
from ponderlm.inference.sequential import new_state, sequential_logits
from ponderlm.methods import MethodOutput, PonderMethod
from ponderlm.methods.base import padding_positions
from ponderlm.registry import REGISTRY, register_method

T = 8


class Echo(PonderMethod):
    """K+1 passes of the shared stack per token, each fed back the previous pass's post-norm state."""

    class Options(PonderMethod.Options):
        echo_scale: float = 0.5  # weight of the fed-back state in the next pass's input

    @classmethod
    def validate_options(cls, config) -> None:
        check_finite(config, "echo_scale")

    @classmethod
    def parallel_cost(cls, config, costs, T, a, sweeps, training):
        return [full_pass(1, T, count=config.max_steps + 1)], []  # feedback is elementwise: no extra matmuls

    @classmethod
    def decode_keys(cls, config, T, a):
        return sum(a) * (T + 1) / 2  # each pass has its own cache with t+1 entries

    def num_caches(self) -> int:
        return self.config.max_steps + 1

    def inputs(self, embedded: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return embedded + self.config.echo_scale * hidden

    def forward(self, backbone, input_ids, attention_mask, labels=None) -> MethodOutput:
        valid, embedded = attention_mask.bool(), backbone.embed(input_ids)
        positions, mask = padding_positions(attention_mask), slot_causal_mask(valid)
        hidden = backbone.run(embedded, positions, mask)
        for _ in range(self.config.max_steps):
            hidden = backbone.run(self.inputs(embedded, hidden), positions, mask)
        return MethodOutput(hidden=hidden, executed_steps=self.config.max_steps * valid.float())

    def decode_token(self, backbone, state, input_ids, valid):
        bias, embedded = self.token_bias(valid), backbone.embed(input_ids)
        hidden = self.run_cached_slot(backbone, state, embedded, 0, bias, cache_index=0)
        for k in range(1, self.num_caches()):
            hidden = self.run_cached_slot(backbone, state, self.inputs(embedded, hidden), k, bias, cache_index=k)
        state.next_position += valid.long()
        return backbone.head(hidden), self.config.max_steps * valid.float()


@pytest.fixture(autouse=True)
def echo():
    register_method("echo")(Echo)
    try:
        with single_thread():
            yield
    finally:
        REGISTRY.pop("echo")


def test_declared_facts_and_option():
    model = tiny_model("echo", max_steps=2, echo_scale=0.25)
    assert isinstance(model.method, Echo) and model.config.echo_scale == 0.25
    assert model.config.num_slots_per_token == 1 and model.config.resolved_embed_scale == 1.0
    with pytest.raises(ValueError, match="echo_scale must be a finite number"):
        tiny_model("echo", max_steps=1, echo_scale=math.nan)
    with pytest.raises(ValueError, match="needs max_steps >= 1"):
        tiny_model("echo")
    with pytest.raises(ValueError, match="needs an adaptive method"):
        tiny_model("echo", max_steps=1, depth_policy="uniform", depth_target=0.5)


def test_train_eval_ppl_and_plan(data_dir, tmp_path, capsys):
    from ponderlm.cli import main
    from ponderlm.train import train

    run = tmp_path / "run"
    train(tiny_run(run, data_dir, "name=echo", "model.method=echo", "model.max_steps=1", "model.echo_scale=0.75"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["avg_executed_steps"] == 1.0 and math.isfinite(summary["val_loss"])
    capsys.readouterr()

    assert main(["eval", "ppl", "--model", str(run), "--seq-len", "16", "--batch-size", "2", "--max-batches", "1",
                 "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "echo" and result["avg_steps"] == 1.0 and math.isfinite(result["ppl"])
    assert result["flops_ratio"] == pytest.approx(flops(_config(run), 16)["forward_ratio"])

    assert main(["plan", str(run / "config.yaml"), "--gpus", "1"]) == 0
    out = capsys.readouterr().out
    assert "echo (K=1)" in out and "passes kept      2x1 (" in out


def _config(run):
    from ponderlm import PonderConfig

    return PonderConfig.from_pretrained(run / "final")


@pytest.mark.parametrize("backbone", ["llama", "gpt_neox"])
def test_flops_match_the_counter(backbone):
    model = tiny_model("echo", backbone, max_steps=2)
    ids = torch.randint(0, 61, (2, T), generator=torch.Generator().manual_seed(3))
    f = flops(model.config, T)
    assert count_flops(model, ids) / ids.numel() == pytest.approx(f["parallel"], rel=0.05)
    model.train()
    with flop_counter() as counter:
        model(ids, labels=ids).loss.backward()
    assert counter.get_total_flops() / ids.numel() == pytest.approx(f["training_executed"], rel=0.05)
    # Decoding, token by token: the analytic forward cost, and the ledger of the real calls.
    model.eval()
    ledger, state = ComputeLedger(model.config), new_state(model, 1, T)
    valid = torch.ones(1, dtype=torch.bool)
    with torch.no_grad(), flop_counter() as counter:
        for t in range(T):
            before = ledger.snapshot(state)
            _, steps = model.method.decode_token(model.backbone, state, ids[:1, t], valid)
            ledger.add_decode(state, before, steps, valid)
    assert counter.get_total_flops() / T == pytest.approx(f["forward"], rel=0.05)
    assert ledger.summary()["flops_per_token"] == pytest.approx(f["forward"], rel=1e-12)


@pytest.mark.parametrize("side", ["left", "right"])
def test_parallel_equals_sequential_and_prefill(side):
    model = tiny_model("echo", max_steps=2)
    ids, mask = padded_batch(side, length=8)
    valid = mask.bool()
    with torch.no_grad():
        parallel = model(ids, attention_mask=mask)
    logits, steps, ref_state = sequential_logits(model, ids, mask, return_state=True)
    torch.testing.assert_close(logits[valid], parallel.logits[valid], atol=2e-5, rtol=1e-4)
    assert torch.equal(steps, parallel.executed_steps)
    with torch.no_grad():
        state = new_state(model, ids.shape[0], ids.shape[1])
        prefilled, prefill_steps = model.method.prefill(model.backbone, state, ids, mask)
    torch.testing.assert_close(prefilled[valid], logits[valid], atol=2e-5, rtol=1e-4)
    assert torch.equal(prefill_steps, steps) and torch.equal(state.next_position, ref_state.next_position)


def test_batched_generate_matches_each_prompt_alone():
    model = tiny_model("echo", max_steps=1)
    ids, mask = padded_batch("left", length=8)
    batched = generate(model, ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    for row in range(ids.shape[0]):
        alone = generate(model, ids[row : row + 1, mask[row].bool()], max_new_tokens=5, do_sample=False)
        assert torch.equal(batched[row, -5:], alone[0, -5:])
