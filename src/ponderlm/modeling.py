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
    # The HF Trainer passes `num_items_in_batch` to forward (and then does not divide by the accumulation steps).
    accepts_loss_kwargs = True

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
        num_items_in_batch: torch.Tensor | int | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        decode_options: Any = None,
        **kwargs: Any,
    ) -> PonderCausalLMOutput | tuple:
        """Parallel forward of the configured method. `labels` are the inputs (shifted inside, -100 ignored);
        `decode_options` (a `DecodeOptions`, `ponderlm.inference.decode_options`): the knob values, default the saved.

        As for transformers' causal LMs:
        - `num_items_in_batch` (passed by the HF `Trainer`): the language-model loss is the sum of the per-token
          losses divided by it, so gradient accumulation gives the same loss and gradients as one large batch;
          the method's auxiliary loss (a mean over this batch) is weighted by this batch's share of the targets.
        - `output_hidden_states`: the HF tuple (embeddings, each layer's output, final normed state) when the
          method makes one backbone pass over the tokens; a pondering method runs several passes per token, so
          per-layer states are not defined and the option is refused.
        - `return_dict=False` returns `to_tuple()` (loss first when labels are given).
        `output_attentions` and `use_cache=True` are refused (SDPA returns no weights; this is the cache-free
        parallel path, `generate` keeps its own slot cache), and so is any other argument: none is ignored.
        """
        # transformers passes options it does not use as None (logits_to_keep as 0); anything else set is refused.
        passed = [k for k, v in kwargs.items() if v is not None and not (k == "logits_to_keep" and v == 0)]
        if passed:
            raise ValueError(f"PonderForCausalLM.forward does not support {passed[0]} (positions come from "
                             "attention_mask; there is no inputs_embeds or HF cache path)")
        if output_attentions:
            raise ValueError("output_attentions is not supported by PonderForCausalLM (attention runs in SDPA, "
                             "which returns no attention weights)")
        if use_cache:
            raise ValueError("use_cache=True is not supported by PonderForCausalLM.forward (the parallel path "
                             "keeps no cache; generate() decodes with its own slot KV cache)")
        if input_ids is None:
            raise ValueError("PonderForCausalLM.forward needs input_ids")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings})"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        with _LayerRecorder(self.model.layers, output_hidden_states) as recorder:
            out = self.method(self.backbone, input_ids, attention_mask, labels, options=decode_options)
        hidden_states = recorder.hidden_states(out.hidden, self.config.method) if output_hidden_states else None
        logits = out.logits if out.logits is not None else self.lm_head(out.hidden)
        loss = lm_loss = None
        if labels is not None:
            lm_loss = causal_lm_loss(logits, labels, attention_mask, num_items_in_batch)
            aux_loss = out.aux_loss
            if aux_loss is not None and num_items_in_batch is not None:
                # The Trainer sums the micro-batch losses without dividing by the accumulation steps: weight this
                # batch's mean by its share of the targets, as its LM loss is weighted.
                aux_loss = aux_loss * (_target_count(labels, attention_mask) / num_items_in_batch)
            loss = lm_loss if aux_loss is None else lm_loss + aux_loss
        output = PonderCausalLMOutput(loss=loss, logits=logits, hidden_states=hidden_states,
                                      executed_steps=out.executed_steps, aux_loss=out.aux_loss, lm_loss=lm_loss)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Token-by-token generation with real early exit (see `ponderlm.inference.generate`).

        Hugging Face `generate` semantics (transformers prepares the config, processors and stopping criteria;
        greedy, sampling, beam search, num_return_sequences, min_new_tokens, bad_words_ids,
        no_repeat_ngram_size, logits_processor, stopping_criteria, output_scores / output_logits, streamer)
        plus the method's inference knobs (tau=, alpha=, ...: `ponderlm.inference.decode_options`); the dict output
        also carries `executed_steps`.
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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> PonderForCausalLM:
        """Also reads the official PonderLM-2 / PonderingLM formats (`backbone/official.py`: detected from
        config.json, `official_method=` where it cannot tell); everything else loads as usual."""
        from ponderlm.backbone.official import maybe_load_official

        official = None if args else maybe_load_official(cls, pretrained_model_name_or_path, **kwargs)
        if official is not None:
            return official
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # ------------------------------------------------------------------ continued pretraining
    @classmethod
    def from_backbone(cls, path_or_model: Any, method: str = "vanilla", **overrides: Any) -> PonderForCausalLM:
        """Build a pondering model from a Hugging Face Llama / GPT-NeoX causal LM (path, hub id or model object).

        Backbone weights are mapped by name; method parameters are freshly initialised.
        """
        from ponderlm.backbone.hf_import import from_hf_backbone
        from ponderlm.backbone.official import maybe_from_official_backbone

        # An official PonderLM-2 / PonderingLM checkpoint continues from the method it was trained as.
        official = maybe_from_official_backbone(cls, path_or_model, method, **overrides)
        if official is not None:
            return official
        return from_hf_backbone(cls, path_or_model, method=method, **overrides)


def _target_labels(labels: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Next-token targets [B, T-1]: -100 where the label is ignored or the target is padding."""
    labels = labels.clone()
    if attention_mask is not None:
        labels[attention_mask == 0] = -100
    return labels[:, 1:]


def _target_count(labels: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    return (_target_labels(labels, attention_mask) != -100).sum()


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None,
                   num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """Next-token cross entropy over valid targets (labels == -100 or padded targets are ignored): their mean, or
    with `num_items_in_batch` their sum divided by it (transformers' `ForCausalLMLoss`: the HF Trainer passes the
    target count of all accumulated micro-batches, so their summed losses are the mean over the whole batch)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = _target_labels(labels, attention_mask).to(shift_logits.device)
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=-100, reduction=reduction)
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


class _LayerRecorder:
    """Records the input of the first decoder layer and every layer's output while the method runs (forward
    hooks; nothing is recorded when disabled), for `output_hidden_states`."""

    def __init__(self, layers: nn.ModuleList, enabled: bool) -> None:
        self.layers, self.enabled = layers, enabled
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[list[torch.Tensor]] = [[] for _ in layers]
        self.handles: list[Any] = []

    def __enter__(self) -> _LayerRecorder:
        if self.enabled:
            self.handles.append(self.layers[0].register_forward_pre_hook(
                lambda module, args: self.inputs.append(args[0])))
            for i, layer in enumerate(self.layers):
                self.handles.append(layer.register_forward_hook(
                    lambda module, args, output, i=i: self.outputs[i].append(output)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()

    def hidden_states(self, final: torch.Tensor, method: str) -> tuple[torch.Tensor, ...]:
        """(embeddings, layer 1 .. L-1 outputs, final normed state) of a single pass over the tokens, as
        transformers' Llama / GPT-NeoX return them; a ValueError when the method ran several passes."""
        passes = len(self.inputs)
        if passes != 1 or self.inputs[0].shape != final.shape:
            raise ValueError(f"output_hidden_states is not supported for method {method!r}: it ran {passes} backbone "
                             "passes over the tokens, so per-layer token states are not defined (only one-pass "
                             "models return them)")
        return (self.inputs[0], *(outputs[0] for outputs in self.outputs[:-1]), final)


AutoConfig.register(PonderConfig.model_type, PonderConfig, exist_ok=True)
AutoModelForCausalLM.register(PonderConfig, PonderForCausalLM, exist_ok=True)
