"""Start a pondering model from a Hugging Face Llama / GPT-NeoX checkpoint (continued pretraining).

Only two small tables: how the HF config maps to `PonderConfig`, and how GPT-NeoX parameter
names map to ours (Llama names are already identical).
"""

from __future__ import annotations

from typing import Any

import torch

from ponderlm.config import PonderConfig
from ponderlm.errors import remote_code_refused
from ponderlm.registry import REGISTRY

# GPT-NeoX prefix renames; everything below `layers.N.` keeps Hugging Face's names.
NEOX_RENAMES = (
    ("gpt_neox.embed_in.", "model.embed_tokens."),
    ("gpt_neox.final_layer_norm.", "model.norm."),
    ("gpt_neox.layers.", "model.layers."),
    ("embed_out.", "lm_head."),
)
# Buffers some HF versions store in checkpoints that we recompute instead.
DROPPED_SUFFIXES = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")
# What a checkpoint's weights define (shapes and the function they compute): continued pretraining takes these
# from the checkpoint, and an explicit setting that disagrees is an error rather than a size mismatch later.
ARCHITECTURE_KEYS = ("backbone", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "rotary_pct",
                     "rms_norm_eps", "layer_norm_eps", "hidden_act", "attention_bias", "mlp_bias",
                     "use_parallel_residual", "tie_word_embeddings")


def check_architecture(source: Any, checkpoint: PonderConfig, overrides: dict[str, Any]) -> None:
    """One ValueError naming every setting in `overrides` that contradicts the checkpoint's architecture."""
    conflicts = [f"{key}={overrides[key]!r} (checkpoint: {getattr(checkpoint, key)!r})" for key in ARCHITECTURE_KEYS
                 if key in overrides and overrides[key] is not None and overrides[key] != getattr(checkpoint, key)]
    if conflicts:
        name = source if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__") else "the checkpoint"
        raise ValueError(f"{name} defines the architecture, and {', '.join(conflicts)} contradict it; leave "
                         f"{'it' if len(conflicts) == 1 else 'them'} out to take the checkpoint's")


def _rope(hf_config: Any) -> tuple[float, float | None]:
    params = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", None):
        raise ValueError(f"RoPE type {rope_type!r} is not supported yet (only the default RoPE)")
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", getattr(hf_config, "rotary_emb_base", 10000.0)))
    partial = params.get("partial_rotary_factor", getattr(hf_config, "rotary_pct", None))
    return float(theta), partial


def ponder_config_from_hf(hf_config: Any, method: str, **overrides: Any) -> PonderConfig:
    """Translate a HF `LlamaConfig` / `GPTNeoXConfig` into a `PonderConfig` for `method`."""
    model_type = hf_config.model_type
    theta, partial = _rope(hf_config)
    common = dict(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        num_hidden_layers=hf_config.num_hidden_layers,
        num_attention_heads=hf_config.num_attention_heads,
        max_position_embeddings=hf_config.max_position_embeddings,
        rope_theta=theta,
        hidden_act=hf_config.hidden_act,
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        bos_token_id=getattr(hf_config, "bos_token_id", None),
        eos_token_id=getattr(hf_config, "eos_token_id", None),
        pad_token_id=getattr(hf_config, "pad_token_id", None),
        # Continued pretraining: new method parameters (pause vectors) follow the checkpoint's own init
        # scheme, so they start at the scale of the weights they join.
        init="hf",
        initializer_range=getattr(hf_config, "initializer_range", 0.02),
    )
    if model_type == "llama":
        kwargs = dict(
            backbone="llama",
            num_key_value_heads=getattr(hf_config, "num_key_value_heads", None),
            head_dim=getattr(hf_config, "head_dim", None),
            rms_norm_eps=hf_config.rms_norm_eps,
            attention_bias=bool(getattr(hf_config, "attention_bias", False)),
            mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
            rotary_pct=1.0,
        )
    elif model_type == "gpt_neox":
        kwargs = dict(
            backbone="gpt_neox",
            layer_norm_eps=hf_config.layer_norm_eps,
            use_parallel_residual=bool(hf_config.use_parallel_residual),
            attention_bias=bool(getattr(hf_config, "attention_bias", True)),
            mlp_bias=True,
            rotary_pct=0.25 if partial is None else float(partial),
        )
    else:
        raise ValueError(f"from_backbone supports Llama and GPT-NeoX checkpoints, got model_type={model_type!r}")
    max_steps = overrides.pop("max_steps", 1 if getattr(REGISTRY.get(method), "takes_steps", True) else 0)
    return PonderConfig(method=method, max_steps=max_steps, **{**common, **kwargs, **overrides})


def _auto_config(path: Any) -> Any:
    """`AutoConfig.from_pretrained` that never runs code from the checkpoint (a config with auto_map is refused
    in one line instead of transformers' prompt to run it)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except ValueError as exc:
        refused = remote_code_refused(exc, f"checkpoint {path}")
        if refused is not None:
            raise refused from None
        raise


def check_backbone_overrides(path_or_model: Any, method: str = "vanilla", **overrides: Any) -> PonderConfig:
    """`check_architecture` from the checkpoint's config alone (no weights read), so a run can refuse
    contradicting settings before it writes anything. Returns the checkpoint's architecture as a config."""
    official = None if hasattr(path_or_model, "config") else _official_config(path_or_model)
    if official is not None:  # an official PonderLM-2 / PonderingLM checkpoint: its architecture as we import it
        check_architecture(path_or_model, official, overrides)
        return official
    hf_cfg = path_or_model.config if hasattr(path_or_model, "config") else _auto_config(path_or_model)
    if hf_cfg.model_type == PonderConfig.model_type:
        base = hf_cfg
    else:
        steps = {"max_steps": overrides["max_steps"]} if "max_steps" in overrides else {}
        base = ponder_config_from_hf(hf_cfg, method, **steps)
    check_architecture(path_or_model, base, overrides)
    return base


def map_hf_state_dict(state_dict: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state_dict.items():
        if name.endswith(DROPPED_SUFFIXES):
            continue
        if model_type == "gpt_neox":
            for old, new in NEOX_RENAMES:
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
        out[name] = tensor
    return out


def from_hf_backbone(cls, path_or_model: Any, method: str = "vanilla", **overrides: Any):
    """See `PonderForCausalLM.from_backbone`."""
    from transformers import AutoModelForCausalLM, PreTrainedModel

    if isinstance(path_or_model, PreTrainedModel):
        hf_model = path_or_model
    else:
        hf_cfg = _auto_config(path_or_model)
        if hf_cfg.model_type == PonderConfig.model_type:
            return _from_ponder_checkpoint(cls, path_or_model, method, **overrides)
        hf_model = AutoModelForCausalLM.from_pretrained(path_or_model, dtype=torch.float32, trust_remote_code=False)
    if getattr(hf_model.config, "model_type", None) == PonderConfig.model_type:
        return _from_ponder_checkpoint(cls, hf_model, method, **overrides)
    steps = {"max_steps": overrides["max_steps"]} if "max_steps" in overrides else {}
    check_architecture(path_or_model, ponder_config_from_hf(hf_model.config, method, **steps), overrides)
    config = ponder_config_from_hf(hf_model.config, method, **overrides)
    model = cls(config)
    state = map_hf_state_dict(hf_model.state_dict(), hf_model.config.model_type)
    missing, unexpected = model.load_state_dict(state, strict=False)
    backbone_missing = [k for k in missing if not k.startswith("method.")
                        and not (config.tie_word_embeddings and k == "lm_head.weight")]
    if backbone_missing or unexpected:
        raise ValueError(f"checkpoint does not match the backbone: missing {backbone_missing[:5]}, "
                         f"unexpected {list(unexpected)[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def _official_config(path: Any) -> PonderConfig | None:
    """Our config of an official PonderLM-2 / PonderingLM checkpoint at `path` from its config.json alone (no weights
    read; `backbone/official_format.py`), or None if it is not one."""
    from ponderlm.backbone.official_format import detect, hf_config_and_kwargs, read_config, resolve_dir
    from ponderlm.errors import PonderError

    if not isinstance(path, (str, bytes)) and not hasattr(path, "__fspath__"):
        return None
    try:
        config = read_config(resolve_dir(path, config_only=True))
    except PonderError:
        return None  # not readable here: the Hugging Face loader reports its own error
    fmt = detect(config)
    if fmt is None:
        return None
    hf, kwargs = hf_config_and_kwargs(config, fmt)
    return ponder_config_from_hf(hf, fmt.method, **kwargs)


def _from_ponder_checkpoint(cls, path_or_model: Any, method: str, **overrides: Any):
    """Switch method on one of our own checkpoints (e.g. PonderLM v1 -> AdaPonderLM): keep every shared weight."""
    source = path_or_model if isinstance(path_or_model, torch.nn.Module) else \
        cls.from_pretrained(path_or_model, trust_remote_code=False)
    check_architecture(path_or_model, source.config, overrides)
    config_dict = source.config.to_dict()
    for key in ("model_type", "transformers_version", "architectures"):
        config_dict.pop(key, None)
    config_dict.update(method=method, **overrides)
    model = cls(PonderConfig(**config_dict))
    own = model.state_dict()
    shared = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(shared, strict=False)
    return model
