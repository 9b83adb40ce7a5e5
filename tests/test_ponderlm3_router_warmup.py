"""PonderLM-3 `router_warmup_steps`: s is held at the router's initial prior during the first N training steps."""

from __future__ import annotations

import pytest
import torch
from helpers import padded_batch, tiny_model

from ponderlm import PonderConfig


def make(warmup: int, router_init: str = "full_depth"):
    model = tiny_model("ponderlm3", "llama", max_steps=2, router_init=router_init, router_warmup_steps=warmup)
    torch.nn.init.normal_(model.method.router.net[0].weight, std=0.5)  # a router that would spread the tokens
    return model


@pytest.mark.parametrize("router_init", ["full_depth", "uniform"])
def test_warmup_holds_the_prior_and_gives_the_router_no_gradient(router_init):
    model = make(5, router_init).train()
    ids, mask = padded_batch("left", seed=3)
    expected = torch.softmax(torch.tensor([0.0, 0.0, 2.0 if router_init == "full_depth" else 0.0]), -1)
    model.set_training_progress(4)  # still warming up
    hidden = torch.randn(2, 7, model.config.hidden_size)
    s, w = model.method.route(hidden)
    torch.testing.assert_close(s, expected.expand_as(s))
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    for p in model.method.router.parameters():
        assert p.grad is not None and p.grad.abs().max() == 0  # in the graph (no unused parameter), zero gradient
    assert model.model.embed_tokens.weight.grad.abs().max() > 0

    model.zero_grad()
    model.set_training_progress(5)  # warm-up over: the router decides per token and learns
    s, _ = model.method.route(hidden)
    assert s.std(dim=(0, 1)).max() > 1e-3
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    assert model.method.router.net[0].weight.grad.abs().max() > 0


def test_warmup_does_not_apply_at_inference():
    model = make(10**6).eval()
    model.set_training_progress(0)
    hidden = torch.randn(2, 7, model.config.hidden_size)
    s, _ = model.method.route(hidden)
    assert s.std(dim=(0, 1)).max() > 1e-3


def test_default_is_off_and_negative_is_rejected():
    assert PonderConfig(method="ponderlm3", max_steps=1).router_warmup_steps == 0
    with pytest.raises(ValueError, match="router_warmup_steps"):
        PonderConfig(method="ponderlm3", max_steps=1, router_warmup_steps=-1)
