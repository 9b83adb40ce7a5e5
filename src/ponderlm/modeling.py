"""`PonderForCausalLM`: the single Hugging Face model class (PreTrainedModel + GenerationMixin).

It holds the shared backbone (`model`), the LM head and the method policy (`method`), and
returns standard causal-LM outputs plus pondering statistics. Auto* classes are registered at
import so `AutoModelForCausalLM.from_pretrained(dir)` works after `import ponderlm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from ponderlm.backbone.interface import Backbone
from ponderlm.backbone.stack import DecoderStack
from ponderlm.config import PonderConfig
from ponderlm.methods import build_method


@dataclass
class PonderCausalLMOutput(CausalLMOutputWithPast):
    """Causal-LM output plus `executed_steps` [B,T] and the method's auxiliary loss."""

    executed_steps: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None


class PonderPreTrainedModel(PreTrainedModel):
    config_class = PonderConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "GPTNeoXLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        if self.config.init == "ponder" and isinstance(module, (nn.Linear, nn.Embedding)):
            # The official PonderLM-2 / PonderingLM scheme (PonderConfig.init_std); layers mark their
            # residual output projections with `is_residual_output`.
            std = self.config.init_std(residual_output=getattr(module, "is_residual_output", False))
            init.trunc_normal_(module.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)
        # Method modules (routers, gates, pause vectors) carry their own initialisation rules.
        init_fn = getattr(module, "init_ponder_weights", None)
        if callable(init_fn):
            init_fn()

    def init_ponder_weights(self) -> None:
        """Apply every method module's own init rule.

        transformers 5 skips `_init_weights` for container modules without parameters of their
        own (e.g. a router wrapping an nn.Sequential), so the rules are applied explicitly after
        `post_init`. They use `transformers.initialization`, which leaves loaded weights untouched.
        """
        for module in self.modules():
            init_fn = getattr(module, "init_ponder_weights", None)
            if callable(init_fn) and module is not self:
                init_fn()


class PonderForCausalLM(PonderPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: PonderConfig) -> None:
        super().__init__(config)
        self.model = DecoderStack(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.method = build_method(config)
        self.post_init()
        self.init_ponder_weights()

    # ------------------------------------------------------------------ HF plumbing
    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.model.gradient_checkpointing = enable

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        self.model.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.model.gradient_checkpointing = False

    # ------------------------------------------------------------------ building blocks for methods
    @property
    def backbone(self) -> Backbone:
        """What the method computes with (embed, decoder stack, norm, LM head): a fresh view each time, so
        it always reads the current submodules (`set_output_embeddings`, FSDP wrapping)."""
        return Backbone(self.model, self.lm_head, self.config.resolved_embed_scale)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Scaled token embeddings `E[x] * embed_scale` [B,T,D]."""
        return self.backbone.embed(input_ids)

    def set_training_progress(self, step: int) -> None:
        """Called by the trainer every optimiser step (schedules inside methods, e.g. AdaPonderLM's k_frac ramp)."""
        self.method.set_training_progress(step)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> PonderCausalLMOutput:
        """Parallel forward of the configured method. `labels` are the inputs (shifted inside, -100 ignored)."""
        if input_ids is None:
            raise ValueError("PonderForCausalLM.forward needs input_ids")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings})"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.method(self.backbone, input_ids, attention_mask, labels)
        logits = out.logits if out.logits is not None else self.lm_head(out.hidden)
        loss = lm_loss = None
        if labels is not None:
            lm_loss = causal_lm_loss(logits, labels, attention_mask)
            loss = lm_loss if out.aux_loss is None else lm_loss + out.aux_loss
        return PonderCausalLMOutput(
            loss=loss, logits=logits, executed_steps=out.executed_steps, aux_loss=out.aux_loss, lm_loss=lm_loss
        )

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Token-by-token generation with real early exit (see `ponderlm.inference.generate`).

        Hugging Face `generate` semantics (transformers prepares the config, processors and stopping criteria;
        greedy, sampling, beam search, num_return_sequences, min_new_tokens, bad_words_ids,
        no_repeat_ngram_size, logits_processor, stopping_criteria, output_scores / output_logits, streamer)
        plus `tau`, `alpha`, `depth_policy`, `depth_target`; the dict output also carries `executed_steps`.
        Options it cannot honour raise a ValueError naming them.
        """
        from ponderlm.inference.generate import generate

        return generate(self, input_ids, **kwargs)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: Any, *args: Any, push_to_hub: bool = False, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained` plus remote code generated from the package and `auto_map`
        (`ponderlm.hub`), so the directory loads with `trust_remote_code=True` where ponderlm is not installed."""
        from ponderlm.hub import write_remote_code

        if push_to_hub:  # the hub upload saves into a temporary directory through this method, code included
            hub_keys = ("repo_id", "commit_message", "private", "token", "create_pr", "revision")
            hub = {key: kwargs.pop(key) for key in hub_keys if key in kwargs}
            self.save_pretrained(save_directory, *args, **kwargs)
            self.push_to_hub(hub.pop("repo_id", str(save_directory).rstrip("/").split("/")[-1]), **hub)
            return
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory)

    # ------------------------------------------------------------------ continued pretraining
    @classmethod
    def from_backbone(cls, path_or_model: Any, method: str = "vanilla", **overrides: Any) -> PonderForCausalLM:
        """Build a pondering model from a Hugging Face Llama / GPT-NeoX causal LM (path, hub id or model object).

        Backbone weights are mapped by name; method parameters are freshly initialised.
        """
        from ponderlm.backbone.hf_import import from_hf_backbone

        return from_hf_backbone(cls, path_or_model, method=method, **overrides)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean next-token cross entropy over valid targets (labels == -100 or padded targets are ignored)."""
    labels = labels.clone()
    if attention_mask is not None:
        labels[attention_mask == 0] = -100
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=-100)


AutoConfig.register(PonderConfig.model_type, PonderConfig, exist_ok=True)
AutoModelForCausalLM.register(PonderConfig, PonderForCausalLM, exist_ok=True)
