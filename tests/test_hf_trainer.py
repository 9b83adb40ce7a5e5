"""Training under transformers' `Trainer` with gradient accumulation (`num_items_in_batch`).

The same 8 sequences, one optimizer step as batch 8 x accumulation 1 and as batch 2 x accumulation 4, must log the
same loss and grad norm and leave the same weights. transformers' own `LlamaForCausalLM`, run the same way, is the
independent reference: a vanilla PonderForCausalLM built from it has the same logits, so it must also log the
Llama's numbers. Label masking (-100) and padding give micro-batches different target counts, which is where a
per-micro-batch mean goes wrong."""

from __future__ import annotations

import pytest
import torch
from helpers import VOCAB, tiny_model
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from ponderlm import PonderForCausalLM

pytest.importorskip("accelerate")  # the Trainer's own requirement

PAD = 0


def examples(uneven: bool = True) -> list[dict[str, torch.Tensor]]:
    """8 rows of 12 tokens. `uneven`: rows 1 and 5 are right-padded (label -100 there) and row 2 ignores a label
    span, so 2-row micro-batches hold different numbers of targets (a mean per micro-batch weights them wrongly)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (8, 12), generator=g)
    mask = torch.ones_like(ids)
    if uneven:
        mask[1, 5:] = 0
        mask[5, 9:] = 0
    ids[mask == 0] = PAD
    labels = ids.masked_fill(mask == 0, -100)
    if uneven:
        labels[2, 3:9] = -100
    return [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(8)]


def train_one_step(model: torch.nn.Module, batch: int, accumulation: int, out_dir, uneven: bool = True
                   ) -> tuple[dict, dict]:
    """One SGD step of `model` (a copy) on `examples(uneven)`; returns (the logged step, the new state dict)."""
    model = _copy(model).train()
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        max_steps=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", logging_steps=1,
        report_to="none", save_strategy="no", use_cpu=True, seed=0, dataloader_drop_last=False,
        max_grad_norm=1e9)  # no clipping: the weights show the raw gradient
    trainer = Trainer(model=model, args=args, train_dataset=examples(uneven))
    trainer.train()
    logged = next(row for row in trainer.state.log_history if "loss" in row)
    return logged, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    clone = type(model)(model.config)
    clone.load_state_dict(model.state_dict())
    return clone


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        initializer_range=0.2, pad_token_id=PAD, tie_word_embeddings=True))


def assert_same_step(a: tuple[dict, dict], b: tuple[dict, dict], names: dict[str, str] | None = None) -> None:
    (log_a, weights_a), (log_b, weights_b) = a, b
    assert log_a["loss"] == pytest.approx(log_b["loss"], rel=1e-4)
    assert log_a["grad_norm"] == pytest.approx(log_b["grad_norm"], rel=1e-4)
    for name, value in weights_a.items():
        other = weights_b[(names or {}).get(name, name)]
        torch.testing.assert_close(value, other, atol=1e-5, rtol=1e-4, msg=name)


def test_llama_reference_is_the_same_with_and_without_accumulation(llama, tmp_path, one_thread):
    """The reference behaviour itself (so the comparisons below test what transformers does)."""
    assert_same_step(train_one_step(llama, 8, 1, tmp_path / "a"), train_one_step(llama, 2, 4, tmp_path / "b"))


def test_accumulation_gives_the_llama_loss_gradients_and_weights(llama, tmp_path, one_thread):
    ours = PonderForCausalLM.from_backbone(llama)
    reference = train_one_step(llama, 8, 1, tmp_path / "ref")
    one = train_one_step(ours, 8, 1, tmp_path / "one")
    four = train_one_step(ours, 2, 4, tmp_path / "four")
    assert_same_step(one, four)
    # Our parameter names are the Llama's (the lm_head is tied to the embedding in both).
    assert_same_step(four, reference)
    # The untouched run would differ: the step moved the weights.
    assert not torch.allclose(four[1]["model.embed_tokens.weight"], ours.state_dict()["model.embed_tokens.weight"])


def test_accumulation_with_an_auxiliary_loss(tmp_path, one_thread):
    """PonderLM-3's step penalty, a mean over each micro-batch's tokens, is weighted by the micro-batch's share of
    the targets: exact when they hold equal counts (unpadded rows), as the LM loss is for any counts."""
    model = tiny_model("ponderlm3", max_steps=2, lambda_steps=0.5, jacobi_iters_train=[2], pad_token_id=PAD)
    one = train_one_step(model, 8, 1, tmp_path / "one", uneven=False)
    assert_same_step(one, train_one_step(model, 2, 4, tmp_path / "four", uneven=False))
    assert one[1]["method.router.net.0.weight"].ne(model.state_dict()["method.router.net.0.weight"]).any()


def test_num_items_in_batch_sums_the_token_losses():
    """forward's own contract, as transformers' ForCausalLMLoss: sum of the token losses / num_items_in_batch;
    without it the mean (what ponderlm's own trainer uses, unchanged)."""
    model = tiny_model("vanilla")
    rows = examples()[:2]
    ids, mask, labels = (torch.stack([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "labels"))
    targets = int((labels[:, 1:] != -100).sum())
    mean = model(ids, attention_mask=mask, labels=labels).loss
    summed = model(ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(40)).loss
    torch.testing.assert_close(summed, mean * targets / 40)
