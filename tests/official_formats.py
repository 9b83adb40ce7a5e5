"""Tiny checkpoints in the official PonderLM-2 / PonderingLM formats, and the official forwards as references.

The files are written as the official code saves them (transformers 4.4x `save_pretrained` of a patched
`LlamaForCausalLM` / `GPTNeoXForCausalLM`): a plain config.json (rope_theta / rotary_emb_base style) with the
pondering fields their loaders set, and the stock Hugging Face tensor names. The references re-state the
official forwards (LUMIA-Group/PonderLM-2 modeling_llama.py, modeling_llama_orin.py, modeling_llama_loop.py,
modeling_llama_pause.py, modeling_gpt_neox.py; hzby/PonderingLM modeling_gpt_neox.py) from their equations,
with transformers' own stock `LlamaModel` / `GPTNeoXModel` as the decoder pass they call, so nothing of
ponderlm's backbone or methods is in the reference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

LLAMA = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-1, rope_theta=10000.0,
             hidden_act="silu", tie_word_embeddings=False)
NEOX = dict(vocab_size=96, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, layer_norm_eps=1e-5, rotary_emb_base=10000, rotary_pct=0.25,
            use_parallel_residual=True, hidden_act="gelu", tie_word_embeddings=False)


def hf_model(backbone: str, seed: int = 0):
    """A random stock HF causal LM of the tiny shape (weights at a scale where pondering changes the output)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if backbone == "llama":
        model = LlamaForCausalLM(LlamaConfig(**LLAMA, initializer_range=0.2))
    else:
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**NEOX, initializer_range=0.2))
    return model.float().eval()


def write_official(model, out: Path, fields: dict, shape: dict | None = None) -> Path:
    """Save `model`'s tensors and a 4.4x-style config.json with the official pondering `fields` (`shape`: the
    model's architecture fields, default the tiny LLAMA / NEOX ones)."""
    out.mkdir(parents=True, exist_ok=True)
    llama = model.config.model_type == "llama"
    config = dict(shape or (LLAMA if llama else NEOX), model_type=model.config.model_type, bos_token_id=0,
                  eos_token_id=0, architectures=["LlamaForCausalLM" if llama else "GPTNeoXForCausalLM"],
                  torch_dtype="float32", transformers_version="4.46.1", use_cache=True, initializer_range=0.02)
    if llama:
        config.update(rope_scaling=None, attention_bias=False, mlp_bias=False, pretraining_tp=1, attention_dropout=0.0)
    else:
        config.update(attention_bias=True, attention_dropout=0.0, hidden_dropout=0.0, classifier_dropout=0.1)
    config.update(fields)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if not llama and "lm_head.weight" in state:  # transformers 5 renamed GPT-NeoX's `embed_out`; 4.4x saves that
        state["embed_out.weight"] = state.pop("lm_head.weight")
    save_file(state, str(out / "model.safetensors"))
    return out


# The fields each official loader writes (PonderLM-2 repo: loader.py; PonderingLM: loader.py), by method.
def ponderlm2_fields(k: int, scale: bool = True, iters: int = 3, random_iters: bool = True) -> dict:
    return dict(recurrent_model=True, scale_embeds=scale, interpolation=False, interpolation_use_topk=False,
                num_latent_thoughts=k, num_jacobi_iterations=iters, random_jacobi_iterations=random_iters,
                output_hidden_states=False, classifier_dropout=0)


def loop_fields(k: int) -> dict:
    return dict(ponderlm2_fields(k), interpolation=False)


def orin_fields(k: int, residual: bool | None = None) -> dict:
    fields = dict(ponderlm2_fields(k), interpolation=True)
    if residual is not None:
        fields["residual_interpolated_embeds"] = residual
    return fields


def pause_fields(k: int, pause_token_id: int) -> dict:
    return dict(ponderlm2_fields(k), pause_token_id=pause_token_id)


def ponderinglm_fields(k: int, scale: bool = True) -> dict:
    return dict(ponderinglm=True, pondering_steps=k, scale_embeds=scale, mutiply_pondering_steps=False,
                checkpoint_num_layers=100)


# ---------------------------------------------------------------------- official forwards (references)
def _decoder(model):
    return model.model if model.config.model_type == "llama" else model.gpt_neox


def _head(model, h):
    return model.get_output_embeddings()(h)


def _embed(model, ids):
    return _decoder(model).get_input_embeddings()(ids)


def _pass(model, embeds, pos):
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    return _decoder(model)(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).last_hidden_state


@torch.no_grad()
def official_ponderlm2(model, ids, k: int, sweeps: int, scale: float):
    """PonderLM-2 (`ours`, interpolation=false): interleave K+1 stages per token (same position id), K stage-building
    passes, `sweeps` Jacobi refinements, a final pass; logits from the last stage of each token."""
    b, t = ids.shape
    stages = [_embed(model, ids) * scale]
    pos = torch.arange(t)[None].expand(b, t)

    def run(stages):
        n = len(stages)
        seq = torch.stack(stages, dim=2).reshape(b, t * n, -1)  # (1,0),(1,1),..,(2,0),...
        h = _pass(model, seq, pos.repeat_interleave(n, dim=1))
        return [h[:, j::n] for j in range(n)]

    for it in range(k):  # stage building: stage j+1 <- hidden of stage j from the newest pass
        out = run(stages)
        stages = [stages[0], *out[: it + 1]]
    for _ in range(sweeps if k else 0):
        out = run(stages)
        stages = [stages[0], *out[:k]]
    return _head(model, run(stages)[-1])


@torch.no_grad()
def official_ponderlm_v1(model, ids, k: int, scale: float, running_sum: bool = True):
    """PonderLM v1: U^0 = s E[x]; H = F(U); P = softmax(W H); U <- U + P(sE) (PonderingLM and orin with
    residual_interpolated_embeds) or U^0 + P(sE) (orin's default); final pass."""
    b, t = ids.shape
    pos = torch.arange(t)[None].expand(b, t)
    u0 = _embed(model, ids) * scale
    weight = _decoder(model).get_input_embeddings().weight * scale
    u = u0
    for _ in range(k):
        p = torch.softmax(_head(model, _pass(model, u, pos)), dim=-1)
        u = (u if running_sum else u0) + p @ weight
    return _head(model, _pass(model, u, pos))


@torch.no_grad()
def official_loop(model, ids, k: int):
    """Loop (modeling_llama_loop.py, modeling_gpt_neox_addhidden_weightshare.py): the stock decoder layers run K+1
    times in a row on the residual stream, the final norm once, input scale sqrt(2.5 d). The layers, rotary table
    and norm are transformers' own."""
    b, t = ids.shape
    pos = torch.arange(t)[None].expand(b, t)
    stack = _decoder(model)
    h = _embed(model, ids) * math.sqrt(2.5 * model.config.hidden_size)
    rope = stack.rotary_emb(h, pos)
    causal = torch.full((t, t), float("-inf")).triu(1)[None, None]
    for _ in range(k + 1):
        for layer in stack.layers:
            h = layer(h, attention_mask=causal, position_ids=pos, position_embeddings=rope)
            h = h[0] if isinstance(h, tuple) else h
    norm = stack.norm if model.config.model_type == "llama" else stack.final_layer_norm
    return _head(model, norm(h))


@torch.no_grad()
def official_pause(model, ids, k: int, pause_id: int, scale: float):
    """Pause: K copies of token `pause_id` after every token (same position id), input scale `scale` (Llama:
    sqrt(d) always; GPT-NeoX: sqrt(d) if scale_embeds), logits from the last pause slot of each token."""
    b, t = ids.shape
    seq = torch.full((b, t * (k + 1)), pause_id, dtype=ids.dtype)
    seq[:, :: k + 1] = ids
    pos = torch.arange(t)[None].expand(b, t).repeat_interleave(k + 1, dim=1)
    h = _pass(model, _embed(model, seq) * scale, pos)
    return _head(model, h[:, k :: k + 1])
