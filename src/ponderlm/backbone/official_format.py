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
* `loop` (Llama / GPT-NeoX) -> `looped`, K = num_latent_thoughts, sqrt(2.5 d) always; K+1 runs of the layers,
  one final norm.
* `pause` (Llama / GPT-NeoX) -> `pause`, K = num_latent_thoughts, sqrt(d) (Llama always, GPT-NeoX if
  scale_embeds); every pause slot embeds the token `pause_token_id` (default 50288), so all K pause vectors
  start as that embedding row.
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
# Fields of Hugging Face configs across versions besides the current class's defaults: either read by the
# architecture mapping (hf_import: RoPE, biases, head_dim, ...) or without effect on the function (dropout at 0 in
# eval, dtype, cache and attention-kernel switches, bookkeeping).
BENIGN_FIELDS = {"_name_or_path", "architectures", "auto_map", "model_type", "torch_dtype", "dtype",
                 "transformers_version", "max_sequence_length", "rope_theta", "rope_scaling", "rotary_emb_base",
                 "rotary_pct", "rotary_emb_dim", "use_cache", "attn_implementation", "_attn_implementation_autoset",
                 "pretraining_tp", "attention_dropout", "hidden_dropout", "classifier_dropout", "output_hidden_states",
                 "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings", "initializer_range",
                 "use_memory_efficient_attention", "partial_rotary_factor", "head_dim", "mlp_bias", "attention_bias",
                 "is_decoder", "rope_parameters", "gradient_checkpointing", "tokenizer_class", "_attn_implementation",
                 "output_attentions", "return_dict"}
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
    if model_type == "gpt_neox" and patch == "ponderlm":
        raise _fail("patch_method", "the PonderLM-2 repository's GPT-NeoX 'ponderlm' class "
                    "(modeling_gpt_neox_addhidden) adds the last hidden state to the input, not the softmax-weighted "
                    "embedding; no method of ours "
                    "computes that (its Llama class and PonderingLM's GPT-NeoX one map to ponderlm)")
    if patch == "loop" and not recurrent:  # both loop classes gate the loop on recurrent_model
        raise _fail("recurrent_model", "false makes the official 'loop' class run the layers once (input scaled by "
                    "sqrt(2.5 d)), which is not a looped model")
    if model_type == "llama" and patch == "ponderlm" and not recurrent:
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
    if fmt.patch_method == "pause" and fmt.backbone == "llama":
        return math.sqrt(d)  # modeling_llama_pause.py scales unconditionally (the GPT-NeoX one reads scale_embeds)
    if not _flag(config, "scale_embeds"):
        return 1.0
    # ours: sqrt(2.5 d) (interpolation=false); the PonderLM v1 classes and GPT-NeoX pause: sqrt(d). Also with K = 0.
    return math.sqrt(2.5 * d) if fmt.patch_method == "ours" else math.sqrt(d)


def hf_config_and_kwargs(config: dict, fmt: OfficialFormat) -> tuple[Any, dict[str, Any]]:
    """The Hugging Face config object of the architecture and our method's settings (K, scale, sweeps), which
    `hf_import.ponder_config_from_hf(hf, fmt.method, **kwargs)` turns into our config."""
    from transformers import GPTNeoXConfig, LlamaConfig

    hf_fields = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "model_type")}
    hf = (LlamaConfig if fmt.backbone == "llama" else GPTNeoXConfig)(**hf_fields)
    kwargs: dict[str, Any] = {"max_steps": fmt.max_steps, "embed_scale": _embed_scale(config, fmt), "init": "ponder"}
    if fmt.method == "ponderlm2":
        iters = _count(config, "num_jacobi_iterations", 3)
        kwargs["jacobi_iters_eval"] = iters
        # random_jacobi_iterations draws torch.randint(2, 4) per training step; else the fixed count.
        kwargs["jacobi_iters_train"] = [2, 3] if _flag(config, "random_jacobi_iterations") else [iters]
    return hf, kwargs


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


def copy_tokenizer(source: Path, out: Path) -> list[str]:
    """Copy the tokenizer files that exist in `source` (so the converted directory evaluates as is)."""
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
            copied.append(name)
    return copied
