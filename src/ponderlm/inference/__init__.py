"""Inference: token-by-token decoding with real early exit, generation, step and FLOP accounting."""

from ponderlm.inference.generate import generate
from ponderlm.inference.sequential import decode_options, sequential_logits

__all__ = ["decode_options", "generate", "sequential_logits"]
