"""The official PonderLM-2 / PonderingLM checkpoint formats: detect, import to our methods, export back.

Two public code bases save checkpoints as *plain* Hugging Face Llama / GPT-NeoX directories whose
config.json carries the pondering switches as extra fields (their model classes are patched in at load
time, never named in the file):

* LUMIA-Group/PonderLM-2 (`llamafactory/model/loader.py` writes `recurrent_model`, `scale_embeds`,
  `num_latent_thoughts`, `num_jacobi_iterations`, `random_jacobi_iterations`, `interpolation`,
  `interpolation_use_topk`; `--patch_method` picks the class: `ours` = PonderLM-2, `ponderlm` = PonderLM
  v1, `loop`, `pause`, unset = stock). The released `zeng123/PonderLM-2-Pythia-*` are GPT-NeoX
  checkpoints of `ours` wired through `auto_map` (remote code we never run).
* hzby/PonderingLM (`ponderinglm`, `pondering_steps`, `scale_embeds`, `mutiply_pondering_steps`,
  `softmax_temperature`): PonderLM v1, e.g. `zeng123/PonderingPythia-1.4B`.

What each official forward computes (read from their modeling files) and how it maps to ours:
* `ours` (Llama / GPT-NeoX) -> `ponderlm2`, K = num_latent_thoughts, scale sqrt(2.5 d) if scale_embeds;
  latent input = the last (post-norm) hidden state; K stage passes, R = num_jacobi_iterations sweeps, final pass.
* `ponderlm` (Llama, modeling_llama_orin) -> `ponderlm`, K = num_latent_thoughts, sqrt(d) if scale_embeds;
  U^k = U^0 + P^k(gE) unless residual_interpolated_embeds, so equal to our running sum only for K = 1.
* `loop` (Llama) -> `looped`, K = num_latent_thoughts, sqrt(2.5 d) always; K+1 runs of the layers, one final norm.
* `pause` (Llama) -> `pause`, K = num_latent_thoughts, sqrt(d) always; every pause slot embeds the token
  `pause_token_id` (default 50288), so all K pause vectors start as that embedding row.
* PonderingLM (Llama / GPT-NeoX) -> `ponderlm`, K = pondering_steps, sqrt(d) if scale_embeds; running sum
  U^k = U^{k-1} + P^k(gE).

The patch method is not in config.json, so a PonderLM-2-repo Llama checkpoint (where `ours`, `loop` and
`pause` write identical fields) needs `official_method`; our export writes `patch_method` too (ignored by
the official code) so an exported directory re-imports without it. Unknown fields and fields whose
value the mapped method cannot reproduce raise one PonderError naming the field; nothing is guessed.
Remote code is never executed: config.json is read as JSON and weights as tensors.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ponderlm.backbone.hf_import import NEOX_RENAMES, map_hf_state_dict, ponder_config_from_hf
from ponderlm.config import PonderConfig
from ponderlm.errors import PonderError

# --patch_method of the PonderLM-2 repository -> our method.
PATCH_METHODS = {"ours": "ponderlm2", "ponderlm": "ponderlm", "loop": "looped", "pause": "pause",
                 "vanilla": "vanilla"}
# Our method -> the official format `export_official` writes.
EXPORTABLE = {"ponderlm2": "ours", "ponderlm": "ponderlm"}
PONDERLM2_FIELDS = ("recurrent_model", "scale_embeds", "num_latent_thoughts", "num_jacobi_iterations",
                    "random_jacobi_iterations", "interpolation", "interpolation_use_topk", "interpolation_topk",
                    "hidden_layer_num", "residual_interpolated_embeds", "high_memory_mode", "pause_token_id",
                    "patch_method", "checkpoint_num_layers")
PONDERINGLM_FIELDS = ("ponderinglm", "pondering_steps", "mutiply_pondering_steps", "softmax_temperature",
                      "scale_embeds", "checkpoint_num_layers")
# Fields of Hugging Face configs across versions (and of the official configs) that do not change the function.
BENIGN_FIELDS = {"_name_or_path", "architectures", "auto_map", "model_type", "torch_dtype", "dtype",
                 "transformers_version", "max_sequence_length", "rope_theta", "rope_scaling", "rotary_emb_base",
                 "rotary_pct", "rotary_emb_dim", "use_cache", "attn_implementation", "_attn_implementation_autoset",
                 "pretraining_tp", "attention_dropout", "hidden_dropout", "classifier_dropout", "output_hidden_states",
                 "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings", "initializer_range",
                 "use_memory_efficient_attention", "partial_rotary_factor", "head_dim", "mlp_bias", "attention_bias",
                 "is_decoder", "rope_parameters"}
PAUSE_TOKEN_DEFAULT = 50288  # modeling_llama_pause.py: getattr(config, 'pause_token_id', 50288)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "generation_config.json")


@dataclass(frozen=True)
class OfficialFormat:
    """Which official forward a checkpoint was saved for, and the method of ours that computes it."""

    source: str  # "ponderlm2-repo" or "ponderinglm"
    patch_method: str  # official name: ours, ponderlm, loop, pause, vanilla (PonderingLM: ponderlm)
    backbone: str  # llama or gpt_neox
    method: str  # ours: ponderlm2, ponderlm, looped, pause, vanilla
    max_steps: int


def _fail(field: str, msg: str) -> PonderError:
    return PonderError(f"official checkpoint field {field}: {msg}")


def _flag(config: dict, name: str, default: bool = False) -> bool:
    value = config.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _fail(name, f"must be true or false, got {value!r}")
    return value


def _count(config: dict, name: str, default: int | None = None) -> int:
    value = config.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(name, f"must be an integer >= 0, got {value!r}")
    return value


def detect(config: dict, official_method: str | None = None) -> OfficialFormat | None:
    """The official format config.json describes, or None for anything else (ours, a plain HF checkpoint).

    `official_method` (ours / ponderlm / loop / pause / vanilla) says which `--patch_method` trained a
    PonderLM-2-repo checkpoint where config.json cannot (Llama: the methods write identical fields)."""
    model_type = config.get("model_type")
    if model_type not in ("llama", "gpt_neox"):
        if official_method is not None:
            raise _fail("model_type", f"{model_type!r} is not an official Llama / GPT-NeoX checkpoint")
        return None
    if official_method is not None and official_method not in PATCH_METHODS:
        raise PonderError(f"official_method must be one of {', '.join(PATCH_METHODS)}, got {official_method!r}")
    if _flag(config, "ponderinglm"):
        if official_method not in (None, "ponderlm"):
            raise _fail("ponderinglm", f"true marks a PonderingLM (v1) checkpoint, not {official_method!r}")
        steps = _count(config, "pondering_steps", 1)
        return OfficialFormat("ponderinglm", "ponderlm", model_type, "ponderlm" if steps else "vanilla", steps)
    if not any(k in config for k in ("recurrent_model", "num_latent_thoughts", "patch_method")):
        if official_method is None:
            return None  # a plain Llama / GPT-NeoX checkpoint: from_backbone's business
        raise _fail("num_latent_thoughts", "missing: this is not a PonderLM-2-repo checkpoint")
    recorded = config.get("patch_method")
    if recorded is not None and recorded not in PATCH_METHODS:
        raise _fail("patch_method", f"unknown value {recorded!r}; expected one of {', '.join(PATCH_METHODS)}")
    if recorded is not None and official_method is not None and recorded != official_method:
        raise _fail("patch_method", f"config.json says {recorded!r} but official_method={official_method!r}")
    patch = official_method or recorded
    k = _count(config, "num_latent_thoughts", 0)
    recurrent = _flag(config, "recurrent_model")
    if patch is None and model_type == "gpt_neox" and config.get("auto_map") and not _flag(config, "interpolation",
                                                                                             True):
        # The released zeng123/PonderLM-2-Pythia-* checkpoints: GPT-NeoX + auto_map to the `ours` class (the
        # repository's README); its interpolation=false is what tells it from the PonderLM baseline.
        patch = "ours"
    if patch is None and model_type == "llama" and not recurrent:
        patch = "vanilla"  # no patch method and no pondering: the stock forward (every patched class but pause
        # reads recurrent_model; a pause run is told apart by official_method only)
    if patch is None:
        raise _fail("patch_method", "config.json does not record which --patch_method (ours, ponderlm, loop, pause) "
                    "trained this checkpoint (they write the same fields); pass official_method=... "
                    "(ponderlm convert --official-method)")
    if model_type == "gpt_neox" and patch not in ("ours", "vanilla"):
        raise _fail("patch_method", f"the GPT-NeoX {patch!r} baseline of the PonderLM-2 repository is not supported "
                    "(its Llama version is)")
    if model_type == "llama" and patch in ("ponderlm", "loop") and not recurrent:
        raise _fail("recurrent_model", f"false makes the official {patch!r} class run the stock forward; "
                    "import it as official_method=vanilla")
    if patch == "ours" and model_type == "llama" and not recurrent:
        raise _fail("recurrent_model", "false makes the official PonderLM-2 Llama class run the stock forward; "
                    "import it as official_method=vanilla")
    if patch == "vanilla":
        k = 0
    method = PATCH_METHODS[patch] if k else "vanilla"
    return OfficialFormat("ponderlm2-repo", patch, model_type, method, k)


def check_fields(config: dict, fmt: OfficialFormat, ignore_fields: Iterable[str] = ()) -> None:
    """Refuse fields this import does not know, and values the mapped method cannot reproduce."""
    from transformers import GPTNeoXConfig, LlamaConfig

    hf_fields = set((LlamaConfig if fmt.backbone == "llama" else GPTNeoXConfig)().to_dict())
    known = hf_fields | BENIGN_FIELDS | set(PONDERLM2_FIELDS if fmt.source == "ponderlm2-repo" else PONDERINGLM_FIELDS)
    known |= {"layer_norm_eps", "use_parallel_residual"} if fmt.backbone == "gpt_neox" else {"rms_norm_eps"}
    unknown = sorted(set(config) - known - set(ignore_fields))
    if unknown:
        raise _fail(unknown[0], "unknown to the importer, so it cannot say what it changes; if it does not change "
                    "the forward, pass ignore_fields=[...] (ponderlm convert --ignore-field)")
    if fmt.source == "ponderinglm":
        if _flag(config, "mutiply_pondering_steps") and fmt.max_steps > 1:
            raise _fail("mutiply_pondering_steps", "true starts the sum at K * g E[x], which ponderlm cannot express")
        temperature = config.get("softmax_temperature", 1.0)
        if fmt.backbone == "llama" and temperature not in (None, 1, 1.0):
            raise _fail("softmax_temperature", f"{temperature!r}: ponderlm feeds back softmax at temperature 1")
        return
    if fmt.method == "vanilla":
        return
    interpolation = _flag(config, "interpolation", True)
    if fmt.patch_method == "ours" and interpolation:
        raise _fail("interpolation", "true feeds PonderLM-2's latent slots a softmax-weighted embedding; ponderlm2 "
                    "feeds the hidden state (interpolation=false, as the official PonderLM-2 scripts train)")
    if fmt.patch_method == "ponderlm":
        if _flag(config, "output_hidden_states") and config.get("hidden_layer_num"):
            raise _fail("hidden_layer_num", "sums the LM-head softmax over several layers; ponderlm reads the last")
        if fmt.max_steps > 1 and not _flag(config, "residual_interpolated_embeds"):
            raise _fail("residual_interpolated_embeds", "false with num_latent_thoughts > 1 restarts every pass "
                        "from U^0 + P^k(gE); ponderlm keeps the running sum of METHODS.md §4 (equal for K = 1)")
        if _flag(config, "interpolation_use_topk"):
            raise _fail("interpolation_use_topk", "true feeds a top-k softmax; ponderlm uses the full softmax")


def _embed_scale(config: dict, fmt: OfficialFormat) -> float:
    """The official forward's input scale as a float (they compute it in the model dtype; see CHECKPOINTS.md)."""
    d = config["hidden_size"]
    if fmt.patch_method == "vanilla":
        return 1.0
    if fmt.patch_method == "loop":
        return math.sqrt(2.5 * d)  # modeling_llama_loop.py scales unconditionally
    if fmt.patch_method == "pause":
        return math.sqrt(d)  # modeling_llama_pause.py scales unconditionally
    if not _flag(config, "scale_embeds"):
        return 1.0
    # ours: sqrt(2.5 d) (interpolation=false); the PonderLM v1 classes: sqrt(d). Also with K = 0 (no latent pass).
    return math.sqrt(2.5 * d) if fmt.patch_method == "ours" else math.sqrt(d)


def official_ponder_config(config: dict, fmt: OfficialFormat, **overrides: Any) -> PonderConfig:
    """Our `PonderConfig` for the official config.json `config` in format `fmt` (architecture via hf_import)."""
    from transformers import GPTNeoXConfig, LlamaConfig

    hf_fields = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "model_type")}
    hf = (LlamaConfig if fmt.backbone == "llama" else GPTNeoXConfig)(**hf_fields)
    method_kwargs: dict[str, Any] = {"max_steps": fmt.max_steps, "embed_scale": _embed_scale(config, fmt),
                                     "init": "ponder"}
    if fmt.method == "ponderlm2":
        iters = _count(config, "num_jacobi_iterations", 3)
        method_kwargs["jacobi_iters_eval"] = iters
        # random_jacobi_iterations draws torch.randint(2, 4) per training step; else the fixed count.
        method_kwargs["jacobi_iters_train"] = [2, 3] if _flag(config, "random_jacobi_iterations") else [iters]
    try:
        return ponder_config_from_hf(hf, fmt.method, **{**method_kwargs, **overrides})
    except ValueError as exc:
        raise PonderError(f"official checkpoint: {exc}") from None


# ---------------------------------------------------------------------- files
def resolve_dir(source: str | Path, config_only: bool = False) -> Path:
    """A local directory, or a hub snapshot of `source` (config and weights; no code files)."""
    path = Path(source)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    patterns = ["config.json"] if config_only else ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
    try:
        return Path(snapshot_download(str(source), allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - hub errors have many types; the message says what happened
        raise PonderError(f"{source}: not a directory and not downloadable ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PonderError(f"{directory} has no config.json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PonderError(f"{path} is not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise PonderError(f"{path} is not a JSON object")
    return config


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


def copy_tokenizer(source: Path, out: Path) -> list[str]:
    """Copy the tokenizer files that exist in `source` (so the converted directory evaluates as is)."""
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
            copied.append(name)
    return copied
