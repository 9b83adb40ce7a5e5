"""Loading a saved model (or a run directory's final model) with its tokenizer, for evaluation, inference and
serving alike: refuses damaged, mismatched or unsafe checkpoints with one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from ponderlm.errors import PonderError


def resolve_model_dir(path: str | Path) -> Path:
    """A `save_pretrained` directory, or a training run directory (then its `final/`)."""
    path = Path(path).expanduser()
    if (path / "final" / "config.json").is_file():
        return path / "final"
    if (path / "config.json").is_file():
        return path
    if not path.exists():
        raise PonderError(f"model directory {path} does not exist")
    raise PonderError(f"{path} is neither a saved model (config.json) nor a run directory with final/config.json")


def load_model(path: str | Path, device: str = "auto") -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a model or run directory. The tokenizer saved with the model
    wins; a model saved without one falls back to the shipped default tokenizer if the vocabularies fit."""
    import json
    import pickle

    from safetensors import SafetensorError

    from ponderlm.modeling import PonderForCausalLM

    model_dir = resolve_model_dir(path)
    device = resolve_device(device)  # before the (possibly long) load
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PonderError(f"{model_dir / 'config.json'} is not valid JSON ({str(exc).splitlines()[0]}); the "
                          "checkpoint is damaged: re-export it or use an earlier checkpoint") from None
    if not isinstance(config, dict):
        raise PonderError(f"{model_dir / 'config.json'} holds {type(config).__name__}, not a model config; the "
                          "checkpoint is damaged: re-export it or use an earlier checkpoint")
    model_type = config.get("model_type")
    if model_type != "ponder":
        from ponderlm.backbone.official_format import detect

        if detect(config) is None:
            raise PonderError(f"{model_dir} holds a {model_type!r} model, not a ponderlm checkpoint; "
                              "convert it with PonderForCausalLM.from_backbone(...) first")
        # An official PonderLM-2 / PonderingLM checkpoint: read as data (JSON + tensors, never its code) and mapped
        # onto our classes, with every field checked (docs/CHECKPOINTS.md), so `eval` / `generate` / `serve` take it
        # directly.
        from ponderlm.backbone.official import load_official

        model = load_official(PonderForCausalLM, str(model_dir), directory=model_dir)
        return _with_tokenizer(model_dir, model, device)
    from transformers.utils import logging as hf_logging

    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per command is noise on stderr
    hf_logging.set_verbosity_error()  # transformers' multi-line load report: the problems are raised below instead
    try:
        # ignore_mismatched_sizes: get the mismatches back as data (and say so in one line) instead of a report
        # trust_remote_code=False: our class loads our checkpoints; the bundled code in a final/ is for users
        # without ponderlm, and code in a directory someone handed over must never run
        model, info = PonderForCausalLM.from_pretrained(str(model_dir), output_loading_info=True,
                                                        ignore_mismatched_sizes=True, trust_remote_code=False)
    except pickle.UnpicklingError:  # transformers reads *.bin with weights_only=True: a payload is refused
        raise PonderError(f"refusing the weights in {model_dir}: a *.bin file holds more than tensors, so "
                          "loading it could run code; use model.safetensors") from None
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PonderError(f"could not load the model in {model_dir}: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    _check_loaded(model_dir, model, info)
    return _with_tokenizer(model_dir, model, device)


def _with_tokenizer(model_dir: Path, model: Any, device: torch.device) -> tuple[Any, Any]:
    """The model in eval mode on `device`, and the tokenizer saved beside it (or the shipped one if it fits)."""
    from ponderlm.data.tokenizer import load_tokenizer

    model.to(device).eval()
    if (model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(model_dir)
    else:
        tokenizer = load_tokenizer("default")
        print(f"note: {model_dir} has no tokenizer; using the shipped default tokenizer", file=sys.stderr)
    if len(tokenizer) > model.config.vocab_size:
        raise PonderError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                          f"{model.config.vocab_size}; save the model with the tokenizer it was trained with")
    return model, tokenizer


def _check_loaded(model_dir: Path, model: Any, info: dict[str, Any]) -> None:
    """Never run on weights the checkpoint does not hold, nor silently drop ones it does: transformers fills missing
    or mismatched tensors with random ones and ignores unexpected ones (after a note), so a config.json with a layer
    or a method's router edited away would load and generate. NaN / inf weights would give NaN logits that look
    like a modelling problem."""
    if info.get("mismatched_keys"):
        first = sorted(info["mismatched_keys"], key=str)[0]  # (name, saved shape, expected shape)
        what = f"{first[0]} is {list(first[1])} in the file but {list(first[2])} for the config" \
            if isinstance(first, tuple) and len(first) == 3 else f"{first} has another shape"
        raise PonderError(f"config.json in {model_dir} does not match its weights: {what}; the checkpoint is "
                          "damaged or mixed up")
    method = model.config.method
    if info.get("missing_keys"):
        names = sorted(info["missing_keys"])
        if names[0].startswith("method."):  # the config names a method whose parameters the file does not hold
            raise PonderError(f"config.json in {model_dir} says method {method!r}, but the weights lack its "
                              f"{names[0]}; the config was edited or belongs to another checkpoint")
        raise PonderError(f"the weights in {model_dir} lack {len(names)} tensor(s) the config needs ({names[0]}"
                          f"{', ...' if len(names) > 1 else ''}); the checkpoint is damaged or incomplete")
    if info.get("unexpected_keys"):  # e.g. num_hidden_layers lowered: the last layers would be dropped silently
        names = sorted(info["unexpected_keys"])
        if names[0].startswith("method."):
            raise PonderError(f"config.json in {model_dir} says method {method!r}, but the weights hold another "
                              f"method's parameters ({names[0]}); the config was edited or belongs to another "
                              "checkpoint")
        raise PonderError(f"the weights in {model_dir} hold {len(names)} tensor(s) the config has no place for "
                          f"({names[0]}{', ...' if len(names) > 1 else ''}); config.json does not match its weights")
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise PonderError(f"the weights in {model_dir} hold NaN or inf values ({name}); the run that wrote "
                              "them diverged or the file is damaged: use an earlier checkpoint")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise PonderError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PonderError(f"--device {device}: CUDA is not available in this PyTorch build or machine; use "
                          "--device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise PonderError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PonderError(f"--device {device}: MPS is not available here; use --device cpu (or auto)")
    return dev
