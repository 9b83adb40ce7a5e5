"""`Backbone`: the narrow view of the model a method computes with.

A method never sees the Hugging Face model object: it gets the scaled token embedding, the decoder
stack (full runs, layer runs, the final norm) and the LM head, and nothing else. So the method
module is a plain child of the model (no parent reference passed down into it, which would break
device-map offloading and makes the import graph circular), and a method can be tested on any
object with these five members.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ponderlm.backbone.stack import DecoderStack


class Backbone:
    """Embed, run, norm and read out: the shared backbone as methods use it (a view, holds no weights)."""

    __slots__ = ("stack", "lm_head", "embed_scale")

    def __init__(self, stack: DecoderStack, lm_head: nn.Linear, embed_scale: float) -> None:
        self.stack, self.lm_head, self.embed_scale = stack, lm_head, embed_scale

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Scaled token embeddings `E[x] * embed_scale` [..., D]."""
        return self.stack.embed_tokens(input_ids) * self.embed_scale

    @property
    def embed_weight(self) -> torch.Tensor:
        """The unscaled embedding matrix E [V, D] (PonderLM v1's probability-weighted feedback mixes its rows)."""
        return self.stack.embed_tokens.weight

    def run(self, inputs: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """The decoder stack on input states [B,T,D] (`DecoderStack.forward`: cache, kv_hook, apply_norm)."""
        return self.stack(inputs, positions, mask, **kwargs)

    def run_layers(self, inputs: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The decoder layers without the final norm (looped LMs feed the residual stream back)."""
        return self.stack.run_layers(inputs, positions, mask)

    def norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final norm."""
        return self.stack.norm(hidden)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits of post-norm states."""
        return self.lm_head(hidden)

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device
