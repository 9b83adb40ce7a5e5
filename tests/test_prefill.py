"""Parallel prompt prefill of the methods that pack active slots per row: what it writes to the cache.

That prefill == token-by-token decoding (logits, steps, positions, decoding on) for every method, and that batched
generation equals each prompt alone, is checked in tests/test_conformance.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers import padded_batch
from test_adaponder import mixed as mixed_adaponder
from test_latent_cot import make as mixed_latent_cot

from ponderlm.inference.sequential import new_state, sequential_logits

BUILDERS = {"adaponder": lambda: mixed_adaponder("llama"), "latent_cot": lambda: mixed_latent_cot(3, "llama")}


@pytest.mark.parametrize("method", list(BUILDERS))
def test_prefill_of_one_sequence_writes_only_executed_slots(method):
    """Batch 1: halted / skipped steps write no cache entry, exactly as in token-by-token decoding."""
    model = BUILDERS[method]()
    ids, _ = padded_batch("none", length=8)
    ids, mask = ids[:1], torch.ones_like(ids[:1])
    _, ref_steps, ref_state = sequential_logits(model, ids, mask, return_state=True)
    with torch.no_grad():
        state = new_state(model, 1, ids.shape[1])
        _, steps = model.method.prefill(model.backbone, state, ids, mask)
    assert state.cache.length == ref_state.cache.length == ids.shape[1] + int(ref_steps.sum())
    assert state.rows_computed == ids.shape[1] + int(steps.sum())
    assert 0 < int(steps.sum()) < ids.shape[1] * model.config.max_steps  # some steps halted: the check can fail
