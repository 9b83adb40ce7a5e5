"""Load official PonderLM-2 / PonderingLM checkpoints as our model, continue them as another method, export back.

The formats, their detection and the field checks are in `official_format.py` (which `hf_import` also reads
to check `model.init_from` settings); this module maps the weights and writes the official files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ponderlm.backbone.hf_import import NEOX_RENAMES, _from_ponder_checkpoint, map_hf_state_dict, ponder_config_from_hf
from ponderlm.backbone.official_format import (
    EXPORTABLE,
    PAUSE_TOKEN_DEFAULT,
    OfficialFormat,
    _count,
    _fail,
    check_fields,
    copy_tokenizer,
    detect,
    hf_config_and_kwargs,
    read_config,
    resolve_dir,
)
from ponderlm.config import PonderConfig
from ponderlm.errors import PonderError

__all__ = ["copy_tokenizer", "detect", "export_official", "load_official", "maybe_from_official_backbone",
           "maybe_load_official", "official_ponder_config", "read_config", "resolve_dir"]


def official_ponder_config(config: dict, fmt: OfficialFormat, **overrides: Any) -> PonderConfig:
    """Our `PonderConfig` for the official config.json `config` in format `fmt` (architecture via hf_import)."""
    hf, kwargs = hf_config_and_kwargs(config, fmt)
    try:
        return ponder_config_from_hf(hf, fmt.method, **{**kwargs, **overrides})
    except ValueError as exc:
        raise PonderError(f"official checkpoint: {exc}") from None


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors or pytorch_model*.bin checkpoint (sharded or not), never unpickling code."""
    files = sorted(directory.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file

        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        return state
    files = sorted(directory.glob("pytorch_model*.bin"))
    if not files:
        raise PonderError(f"{directory} has no *.safetensors or pytorch_model*.bin weights")
    state = {}
    for f in files:
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


def official_state_dict(state: dict[str, torch.Tensor], config: dict, fmt: OfficialFormat,
                        ours: PonderConfig) -> dict[str, torch.Tensor]:
    """Official tensor names -> ours (GPT-NeoX prefixes renamed; pause slots from the pause token's row)."""
    out = map_hf_state_dict(state, fmt.backbone)
    if fmt.source == "ponderinglm":
        # PonderingLM's GPT-NeoX class defines `adapter` = Linear(2d, d) that its forward never calls: not part of
        # the function, so it is dropped rather than carried.
        out.pop("adapter.weight", None)
    if fmt.method == "pause":
        pause_id = _count(config, "pause_token_id", PAUSE_TOKEN_DEFAULT)
        if pause_id >= ours.vocab_size:
            raise _fail("pause_token_id", f"{pause_id} is outside the vocabulary ({ours.vocab_size})")
        row = out["model.embed_tokens.weight"][pause_id]
        out["method.pause_embeds"] = row[None].expand(ours.max_steps, -1).clone()
    return out


def load_official(cls: Any, source: str | Path, official_method: str | None = None,
                  ignore_fields: Iterable[str] = (), dtype: torch.dtype | None = None, config: dict | None = None,
                  directory: Path | None = None, **overrides: Any) -> Any:
    """`cls` (PonderForCausalLM) computing what the official checkpoint at `source` computes."""
    directory = directory or resolve_dir(source)
    config = config if config is not None else read_config(directory)
    fmt = detect(config, official_method)
    if fmt is None and config.get("model_type") == PonderConfig.model_type:
        raise PonderError(f"{source} is already a ponderlm checkpoint (to write it in the official format: "
                          "ponderlm convert --to official)")
    if fmt is None:
        raise PonderError(f"{source} is not in an official PonderLM-2 / PonderingLM format (model_type "
                          f"{config.get('model_type')!r} without pondering fields)")
    check_fields(config, fmt, ignore_fields)
    ours = official_ponder_config(config, fmt, **overrides)
    model = cls(ours)
    state = official_state_dict(load_weights(directory), config, fmt, ours)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (ours.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise PonderError(f"{source}: weights do not match the config: missing {missing[:3]}, "
                          f"unexpected {list(unexpected)[:3]}")
    if ours.tie_word_embeddings:
        model.tie_weights()
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def maybe_load_official(cls: Any, source: Any, **kwargs: Any) -> Any | None:
    """`load_official` if `source` is a directory / hub id in an official format, else None (not ours to load).

    Only config.json is read to decide; `official_method` forces the official path."""
    forced = kwargs.get("official_method") is not None
    if not isinstance(source, (str, Path)):
        return None
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            return None
        directory = path
    else:
        try:
            directory = resolve_dir(source, config_only=True)
        except PonderError:
            if forced:
                raise
            return None  # transformers reports its own error for a missing / private repository
    config = read_config(directory)
    if not forced and detect(config) is None:
        return None
    if not path.is_dir():
        directory = resolve_dir(source)
    official = {k: kwargs.pop(k) for k in ("official_method", "ignore_fields") if k in kwargs}
    kwargs.pop("trust_remote_code", None)  # this path never runs code from the checkpoint either way
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    unsupported = sorted(k for k in kwargs if k not in PonderConfig().to_dict())
    if unsupported:
        raise PonderError(f"from_pretrained of an official checkpoint does not take {unsupported[0]}=")
    return load_official(cls, source, directory=directory, config=config,
                         dtype=None if dtype == "auto" else dtype, **official, **kwargs)


# ---------------------------------------------------------------------- export
def export_official(model: Any, out_dir: str | Path, source_dir: str | Path | None = None) -> Path:
    """Write `model` (ponderlm2 or ponderlm) as the official code saves it: a plain Llama / GPT-NeoX directory
    with the pondering fields, loadable by the PonderLM-2 repository (PonderLM-2; PonderLM v1 on Llama) or
    PonderingLM (PonderLM v1 on GPT-NeoX) with their patched classes. Refuses settings they cannot express."""
    from safetensors.torch import save_file

    cfg = model.config
    if cfg.method not in EXPORTABLE:
        raise PonderError(f"export to the official format supports {', '.join(EXPORTABLE)}, not {cfg.method!r}")
    d, k = cfg.hidden_size, cfg.max_steps
    scale = cfg.resolved_embed_scale
    unit = math.sqrt(2.5 * d) if cfg.method == "ponderlm2" else math.sqrt(d)
    if math.isclose(scale, unit, rel_tol=1e-6):
        scale_embeds = True
    elif math.isclose(scale, 1.0, rel_tol=1e-6):
        scale_embeds = False
    else:
        raise PonderError(f"embed_scale {scale:g}: the official code scales by 1 or {unit:g} (scale_embeds)")
    if cfg.latent_feedback != "post_norm":
        raise PonderError("latent_feedback=pre_norm: the official code feeds back the post-norm hidden state")
    if cfg.backbone == "gpt_neox" and cfg.num_key_value_heads != cfg.num_attention_heads:
        raise PonderError("grouped-query attention has no GPT-NeoX official format")
    hf = _hf_config(cfg)
    # The official GPT-NeoX classes (and PonderingLM's Llama) read config.checkpoint_num_layers in __init__ (how many
    # layers to gradient-checkpoint; no effect on the function); 100 is their loaders' default.
    hf["checkpoint_num_layers"] = 100
    if cfg.method == "ponderlm2":
        train = list(cfg.jacobi_iters_train)
        if sorted(train) == [2, 3]:
            random_iters = True
        elif train == [cfg.jacobi_iters_eval]:
            random_iters = False
        else:
            raise PonderError(f"jacobi_iters_train={train}: the official code trains with num_jacobi_iterations or "
                              "a draw from {2, 3} (random_jacobi_iterations)")
        hf.update(patch_method="ours", recurrent_model=True, scale_embeds=scale_embeds, interpolation=False,
                  interpolation_use_topk=False, num_latent_thoughts=k, num_jacobi_iterations=cfg.jacobi_iters_eval,
                  random_jacobi_iterations=random_iters)
    elif cfg.backbone == "llama":  # PonderLM v1 on Llama: the PonderLM-2 repository's `ponderlm` class
        hf.update(patch_method="ponderlm", recurrent_model=True, scale_embeds=scale_embeds, interpolation=True,
                  interpolation_use_topk=False, num_latent_thoughts=k, residual_interpolated_embeds=True)
    else:  # PonderLM v1 on GPT-NeoX: PonderingLM
        hf.update(ponderinglm=True, pondering_steps=k, scale_embeds=scale_embeds, mutiply_pondering_steps=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()
             if not name.startswith("method.")}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    if cfg.backbone == "gpt_neox":
        state = {_neox_name(name): t for name, t in state.items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if source_dir is not None:
        copy_tokenizer(Path(source_dir), out)
    return out


def _neox_name(name: str) -> str:
    for official, ours in NEOX_RENAMES:
        if name.startswith(ours):
            return official + name[len(ours):]
    return name


def _hf_config(cfg: PonderConfig) -> dict:
    """The plain Hugging Face config fields of our backbone (what the official configs carry)."""
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                  num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                  max_position_embeddings=cfg.max_position_embeddings, hidden_act=cfg.hidden_act,
                  tie_word_embeddings=cfg.tie_word_embeddings, initializer_range=cfg.initializer_range,
                  bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                  use_cache=True, torch_dtype="float32")
    if cfg.backbone == "llama":
        return dict(common, model_type="llama", architectures=["LlamaForCausalLM"],
                    num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
                    rope_theta=cfg.rope_theta, rope_scaling=None, attention_bias=cfg.attention_bias,
                    mlp_bias=cfg.mlp_bias)
    if not (cfg.attention_bias and cfg.mlp_bias):
        raise PonderError("GPT-NeoX without biases has no official format (the official GPT-NeoX has biases)")
    return dict(common, model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"], layer_norm_eps=cfg.layer_norm_eps,
                use_parallel_residual=cfg.use_parallel_residual, rotary_pct=cfg.rotary_pct,
                rotary_emb_base=cfg.rope_theta, attention_bias=True)


def maybe_from_official_backbone(cls: Any, source: Any, method: str, **overrides: Any) -> Any | None:
    """`from_backbone` of an official checkpoint: import it as the method it was trained as (same K, embedding
    scale, weights), then switch to `method` like one of our own checkpoints (new modules at their init, e.g.
    PonderLM-3's router at its prior). None if `source` is not an official checkpoint."""
    if not isinstance(source, (str, Path)):
        return None
    try:
        directory = resolve_dir(source, config_only=not Path(source).is_dir())
        config = read_config(directory)
    except PonderError:
        return None  # not readable here: the Hugging Face loader reports its own error
    if detect(config) is None:
        return None
    return _from_ponder_checkpoint(cls, load_official(cls, source), method, **overrides)
