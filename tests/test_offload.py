"""accelerate offload: a checkpoint loaded with some layers on disk computes the same logits.

Methods see a `Backbone` view instead of the model object, so accelerate's hooks on the submodules move
the offloaded weights in and out as they run (with the model passed into its own child module, loading
with a `device_map` that offloads failed). Skipped without accelerate (it comes with the eval extra)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

from ponderlm import PonderForCausalLM

pytest.importorskip("accelerate")


@pytest.mark.parametrize("method", ["ponderlm3", "adaponder"])
def test_disk_offloaded_layers_give_the_same_logits(tmp_path, method):
    model = tiny_model(method, max_steps=2)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids).logits
    model.save_pretrained(tmp_path / "ckpt")
    layers = {f"model.layers.{i}": "disk" for i in range(model.config.num_hidden_layers)}
    device_map = {"model.embed_tokens": "cpu", "model.rotary": "cpu", **layers, "model.norm": "cpu",
                  "lm_head": "cpu", "method": "cpu"}
    offloaded = PonderForCausalLM.from_pretrained(tmp_path / "ckpt", device_map=device_map,
                                                  offload_folder=str(tmp_path / "offload"))
    with torch.no_grad():
        torch.testing.assert_close(offloaded(ids).logits, reference, rtol=0, atol=1e-5)
