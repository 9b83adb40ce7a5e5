"""Llama and GPT-NeoX backbones with one slot-aware attention and a slot KV cache."""

from ponderlm.backbone.attention import additive_mask, attention, slot_causal_mask
from ponderlm.backbone.cache import SlotKVCache
from ponderlm.backbone.stack import DecoderStack

__all__ = ["DecoderStack", "SlotKVCache", "additive_mask", "attention", "slot_causal_mask"]
