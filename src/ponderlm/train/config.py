"""Run config: the settings of one training run, apart from the model's own `PonderConfig`.

A `RunConfig` is a small tree of dataclasses (model, data, optim, train, log, dist) that maps 1:1
to the YAML recipes in `ponderlm/configs/`. Loading is strict: unknown keys are errors that name
the closest valid key, values are type-checked, and dotted `key=value` overrides are parsed with
`yaml.safe_load` (never `eval`). The resolved config is written to `<out>/config.yaml`.

No hidden recipe: a run's settings come only from the documented defaults (the dataclasses below,
`PonderConfig` and each method's `Options`), a recipe the user named (`recipe`), and the user's
overrides. `sources` remembers where every explicitly set key came from, and `differences()` lists
what differs from the defaults with its source; the trainer prints that list and records it.

Note the two different "max steps": `model.max_steps` is K, the pondering steps per token;
`train.steps` is the number of optimizer steps.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ponderlm.declared import option, problems
from ponderlm.errors import PonderError
from ponderlm.registry import REGISTRY

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "bf16")
DIST_BACKENDS = ("ddp", "fsdp2")
DIST_CHECKPOINTS = ("auto", "dcp")


@dataclass
class DataConfig:
    """Where tokens come from. `data_dir` empty = a cache dir keyed by inputs + tokenizer, prepared on first use."""

    inputs: list[str] = field(default_factory=lambda: ["default"])
    tokenizer: str = "default"
    data_dir: str | None = None
    seq_len: int = option(256, low=2)
    # None = prepare_data's default; inputs with their own split keep it
    val_fraction: float | None = option(None, low=0, high=1, high_open=True)


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay to `min_lr_ratio * lr`."""

    lr: float = option(1e-3, low=0, low_open=True)
    betas: tuple[float, float] = option((0.9, 0.95), low=0, high=1, high_open=True)
    weight_decay: float = option(0.1, low=0)
    eps: float = option(1e-8, low=0, low_open=True)
    warmup_frac: float = option(0.02, low=0, high=1)
    warmup_steps: int | None = option(None, low=0)  # overrides warmup_frac when set
    min_lr_ratio: float = option(0.1, low=0, high=1)
    grad_clip: float = 1.0  # <= 0 disables clipping (the norm is still logged)


@dataclass
class TrainConfig:
    """The loop: `steps` optimizer steps of `batch_size * grad_accum` sequences each (per process)."""

    steps: int = option(1000, low=1)
    batch_size: int = option(8, low=1)
    grad_accum: int = option(1, low=1)
    global_batch_size: int | None = None  # sequences per step over all ranks; sets grad_accum per world size
    seed: int = 0
    device: str = "auto"
    # auto = bf16 autocast on CUDA when supported, else fp32 (never autocast on CPU)
    dtype: str = option("auto", choices=DTYPES)
    eval_every: int = option(200, low=1)
    eval_batches: int = option(20, low=1)
    save_every: int = option(500, low=1)
    keep_last: int = option(2, low=1)
    out: str | None = None  # empty = runs/<name>-<timestamp>
    sample_prompt: str = "Once upon a time"
    sample_tokens: int = option(32, low=0)
    sample_temperature: float = option(0.8, low=0)  # 0 = greedy; the end-of-run sample only
    sample_top_k: int = option(40, low=0)  # 0 = no top-k cut
    freeze_backbone_steps: int = option(0, low=0)  # AdaPonderLM continued pretraining: train only the gates for N steps
    compile: bool = False  # torch.compile each decoder layer (dynamic shapes); docs/PERFORMANCE.md has the gain


@dataclass
class LogConfig:
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "ponderlm"
    log_every: int = option(10, low=1)  # console lines when stderr is not a TTY; metrics.jsonl gets every step


@dataclass
class DistConfig:
    """Multi-process settings, applied by `train/parallel.py` under torchrun (see docs/DISTRIBUTED.md)."""

    backend: str = option("ddp", choices=DIST_BACKENDS)
    activation_checkpointing: bool = False  # per decoder layer; also in one process
    # auto = sharded (torch.distributed.checkpoint) when world size > 1; dcp = always
    checkpoint: str = option("auto", choices=DIST_CHECKPOINTS)
    # collective timeout (in-job data preparation must finish within it)
    timeout_minutes: float = option(30.0, low=0, low_open=True)


@dataclass
class RunConfig:
    name: str = "run"
    recipe: str | None = None  # the packaged recipe or file the run started from; None: the documented defaults
    # PonderConfig keyword arguments, plus `init_from` (HF path or id) for continued pretraining.
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    # dotted key -> where its value came from ("recipe quickstart", "override", "flag --method", ...)
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(d["optim"]["betas"])  # YAML-friendly
        return d

    def model_kwargs(self) -> dict[str, Any]:
        """The `PonderConfig` kwargs (without `init_from`)."""
        return {k: v for k, v in self.model.items() if k != "init_from"}

    def identity_hash(self) -> str:
        """Hash of what a checkpoint's weights depend on: model shape/method and the token stream's vocabulary.

        Training-loop settings (steps, lr, ...) are deliberately left out so a run can be resumed with a
        longer schedule; a checkpoint whose hash differs is "foreign" and refused on resume.
        """
        ident = {"model": self.model_kwargs(), "tokenizer": self.data.tokenizer, "seq_len": self.data.seq_len}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


TOP_LEVEL = tuple(f.name for f in dataclasses.fields(RunConfig))


# ---------------------------------------------------------------------------------------------- type checks
def _model_hints() -> dict[str, Any]:
    """Valid `model.*` keys and their types, read from `PonderConfig.__init__` and the registered methods'
    `Options` so they never disagree."""
    from ponderlm.config import PonderConfig  # imports transformers; only needed once a model key is checked

    sig = inspect.signature(PonderConfig.__init__)
    hints = typing.get_type_hints(PonderConfig.__init__)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    keys = {n: hints.get(n, Any) for n, p in sig.parameters.items() if n != "self" and p.kind in named}
    for cls in REGISTRY.values():
        keys.update(typing.get_type_hints(cls.Options))
    keys["init_from"] = str | None
    return keys


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Return `value` checked against the annotation `hint`, or raise PonderError naming `key`."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, key)
            except PonderError:
                continue
        raise PonderError(f"{key} must be {_type_name(hint)}, got {value!r}")
    plain = hint in (type(None), bool, int, str)
    if plain and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):  # True is no int
        return value
    if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)  # also a string: PyYAML reads `3e-4` (no dot) as one
        except ValueError:
            pass
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise PonderError(f"{key} must have {len(args)} items, got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    elif origin is dict and isinstance(value, dict):
        return value
    raise PonderError(f"{key} must be {_type_name(hint)}, got {value!r}")


def _unknown(key: str, valid: typing.Iterable[str]) -> PonderError:
    *parents, leaf = key.split(".")
    prefix = ".".join(parents) + "." if parents else ""
    close = difflib.get_close_matches(leaf, list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return PonderError(f"unknown config key '{key}'{hint}")


# ---------------------------------------------------------------------------------------------- build
def _set(cfg: RunConfig, key: str, value: Any, model_hints: dict[str, Any]) -> None:
    """Set one dotted key on `cfg` with type checks (shared by YAML loading and CLI overrides)."""
    parts = key.split(".")
    top = parts[0]
    if top not in TOP_LEVEL:
        raise _unknown(key, TOP_LEVEL)
    if top in ("name", "recipe"):
        if len(parts) > 1:
            raise PonderError(f"'{top}' is a string, not a section: {key}")
        setattr(cfg, top, _coerce(value, str if top == "name" else str | None, top))
        return
    if top == "sources":  # a saved config.yaml's record of where each key came from
        if len(parts) > 1 or not isinstance(value, dict):
            raise PonderError(f"'sources' must be a mapping of dotted keys to where they came from, got {value!r}")
        cfg.sources.update({str(k): _coerce(v, str, f"sources.{k}") for k, v in value.items()})
        return
    if len(parts) == 1:
        if not isinstance(value, dict):
            raise PonderError(f"'{top}' must be a mapping of keys, got {value!r}")
        for sub, v in value.items():
            _set(cfg, f"{top}.{sub}", v, model_hints)
        return
    if len(parts) > 2:
        raise PonderError(f"config keys have one level below the section, got '{key}'")
    leaf = parts[1]
    hints = model_hints if top == "model" else typing.get_type_hints(type(getattr(cfg, top)))
    if leaf not in hints:
        raise _unknown(key, hints)
    if top == "model":
        cfg.model[leaf] = _coerce(value, hints[leaf], key)
    else:
        setattr(getattr(cfg, top), leaf, _coerce(value, hints[leaf], key))


def parse_override(text: str) -> tuple[str, Any]:
    """`"optim.lr=3e-4"` -> `("optim.lr", 3e-4)`; the value is read with `yaml.safe_load`."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise PonderError(f"override must look like section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise PonderError(f"cannot parse the value of override {text!r}: {exc.problem}") from None
    return key, value


def _leaf_keys(key: str, value: Any) -> list[str]:
    """The dotted leaf keys that setting `key` to `value` sets (a section given as a mapping sets each of its keys)."""
    if key == "sources":  # the record of sources itself, not a setting
        return []
    if "." not in key and key not in ("name", "recipe") and isinstance(value, dict):
        return [f"{key}.{sub}" for sub in value]
    return [key]


def from_dict(data: dict[str, Any], overrides: typing.Sequence[str] = (), *, source: str = "config") -> RunConfig:
    """Build and validate a RunConfig from a YAML-shaped dict plus `key=value` overrides.

    `source` names where `data` came from ("recipe quickstart", "file my.yaml"): it is recorded for every key
    `data` sets, unless `data` is a saved config.yaml that already says where its keys came from (`sources`)."""
    if not isinstance(data, dict):
        raise PonderError(f"a run config must be a mapping, got {type(data).__name__}")
    cfg = RunConfig()
    model_hints = _model_hints()
    for key, value in data.items():
        _set(cfg, str(key), value, model_hints)
    if isinstance(data.get("sources"), dict):
        # A saved config.yaml: every key it writes is listed, but only the sources it recorded were set by someone;
        # a differing value it does not account for was edited into the file by hand.
        for found in differences(cfg):
            if found.source == "unknown":
                cfg.sources[found.key] = source
    else:
        for key, value in data.items():
            for leaf in _leaf_keys(str(key), value):
                cfg.sources.setdefault(leaf, source)
    parsed = [parse_override(text) for text in overrides]
    if not cfg.model.get("init_from") and any(
            (key == "model.init_from" and value) or (key == "model" and isinstance(value, dict)
                                                     and value.get("init_from")) for key, value in parsed):
        # model.init_from takes the architecture from the checkpoint: the shape a recipe wrote for training from
        # scratch gives way; shape keys given as overrides still apply and are checked against the checkpoint.
        from ponderlm.backbone.hf_import import ARCHITECTURE_KEYS

        for key in (*ARCHITECTURE_KEYS, "max_position_embeddings"):
            cfg.model.pop(key, None)
    _drop_foreign_method_options(cfg, parsed)
    for key, value in parsed:
        _set(cfg, key, value, model_hints)
        for leaf in _leaf_keys(key, value):
            cfg.sources[leaf] = "override"
    _forget_dropped_sources(cfg)
    validate(cfg)
    return cfg


def _forget_dropped_sources(cfg: RunConfig) -> None:
    """Keys a method switch or `init_from` removed from `model` no longer come from anywhere."""
    for key in [k for k in cfg.sources if k.startswith("model.") and k[len("model."):] not in cfg.model]:
        del cfg.sources[key]


# ---------------------------------------------------------------------------------------------- provenance
@dataclass(frozen=True)
class Difference:
    """One setting whose value is not its documented default, and where the value came from."""

    key: str
    value: Any
    default: Any
    source: str

    def __str__(self) -> str:
        return f"{self.key} = {_show(self.value)}  (default {_show(self.default)}; {self.source})"


def _show(value: Any) -> str:
    return "null" if value is None else json.dumps(list(value) if isinstance(value, tuple) else value)


# Identifiers of a run, not settings that change what it computes.
_NOT_SETTINGS = ("name", "recipe", "train.out")


def model_defaults() -> dict[str, Any]:
    """The documented default of every `model.*` key: `PonderConfig`'s keyword defaults and every registered
    method's `Options` defaults (docs/METHODS.md renders the same declarations)."""
    from ponderlm.config import PonderConfig, method_options

    sig = inspect.signature(PonderConfig.__init__)
    defaults = {n: p.default for n, p in sig.parameters.items()
                if n != "self" and p.default is not inspect.Parameter.empty}
    defaults.update({k: list(v) if isinstance(v, tuple) else v for k, v in method_options().items()})
    defaults["init_from"] = None
    return defaults


def differences(cfg: RunConfig) -> list[Difference]:
    """Every setting of `cfg` that differs from its documented default (model keys first, then the run's
    sections in config order), with the source recorded for it. `model.method` is the reference, not a
    difference: the model keys are compared with the defaults of the method the run trains."""
    found = []
    defaults = model_defaults()
    for key, value in cfg.model.items():
        if key == "method":
            continue
        default = defaults.get(key)
        if _normal(value) != _normal(default):
            found.append(Difference(f"model.{key}", value, default, cfg.sources.get(f"model.{key}", "unknown")))
    for section in ("data", "optim", "train", "log", "dist"):
        current, default_section = getattr(cfg, section), type(getattr(cfg, section))()
        for f in dataclasses.fields(current):
            key = f"{section}.{f.name}"
            value, default = getattr(current, f.name), getattr(default_section, f.name)
            if key not in _NOT_SETTINGS and _normal(value) != _normal(default):
                found.append(Difference(key, value, default, cfg.sources.get(key, "unknown")))
    return found


def _normal(value: Any) -> Any:
    """Compare lists and tuples, ints and floats, as YAML / JSON round trips them."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def describe_differences(cfg: RunConfig) -> str:
    """The lines the trainer prints at start: the recipe and every setting that differs from the defaults."""
    method = cfg.model.get("method", "vanilla")
    recipe = f"recipe {cfg.recipe}" if cfg.recipe else "no recipe"
    found = differences(cfg)
    if not found:
        return f"{method} ({recipe}): every setting at its documented default (docs/METHODS.md)"
    verb = "setting differs" if len(found) == 1 else "settings differ"
    lines = [f"{method} ({recipe}): {len(found)} {verb} from the documented defaults (docs/METHODS.md):"]
    return "\n".join([*lines, *(f"  {d}" for d in found)])


def provenance(cfg: RunConfig) -> dict[str, Any]:
    """What summary.json records: the recipe and each differing setting with its default and source."""
    return {"recipe": cfg.recipe, "method": cfg.model.get("method", "vanilla"),
            "differs_from_defaults": {d.key: {"value": d.value, "default": d.default, "source": d.source}
                                      for d in differences(cfg)}}


def _drop_foreign_method_options(cfg: RunConfig, parsed: list[tuple[str, Any]]) -> None:
    """When an override switches the recipe to another method, the recipe's options the new method does not have
    (its method's `Options` fields) and its inference knobs (every method's `knob=True` options) give way: they were
    chosen for the recipe's method (e.g. the quickstart's PonderLM-3 compute penalty and tau), not for the new one.
    Overrides still apply."""
    method = next((value for key, value in parsed if key == "model.method"), None)
    recipe_method = cfg.model.get("method")
    if not isinstance(method, str) or method == recipe_method or recipe_method not in REGISTRY \
            or method not in REGISTRY:  # a method that is no str (None, a list) is left to _set's type check
        return

    def options(name: str) -> set[str]:
        return {f.name for f in dataclasses.fields(REGISTRY[name].Options)}

    knobs = {k for cls in REGISTRY.values() for k in cls.knobs()}
    for key in (options(recipe_method) - options(method)) | knobs:
        cfg.model.pop(key, None)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PonderError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PonderError(f"config file {path} is not UTF-8 text; a recipe is a YAML file (see docs/TRAINING.md)") \
            from None
    except yaml.YAMLError as exc:
        raise PonderError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    if data is None:  # an empty file silently training the defaults is never what was meant
        raise PonderError(f"config file {path} is empty; give a recipe with at least one section (model, data, "
                          "train, ...) or leave CONFIG out for the documented defaults")
    return data


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (), *,
                recipe: str | None = None, preset: str | None = None) -> RunConfig:
    """Load a recipe file or a packaged recipe by name and apply overrides; with neither, the documented defaults.

    There is no implicit recipe: `load_config(None, ["model.method=ponderlm3", ...])` is PonderLM-3 at its
    documented defaults. The CPU quickstart is `load_config(recipe="quickstart")`. (`preset` is the old name
    of `recipe`.)"""
    if recipe is not None and preset is not None and recipe != preset:
        raise PonderError("give either --recipe or --preset (its old name), not both")
    recipe = recipe or preset
    if path is not None and recipe is not None:
        raise PonderError("give either a CONFIG file or --recipe, not both")
    if path is None and recipe is None:
        return from_dict({}, overrides)
    data_path = Path(path) if path is not None else preset_path(recipe)
    try:
        data = load_yaml(data_path)
        if recipe is not None:
            cfg = from_dict(data, overrides, source=f"recipe {recipe}")
            cfg.recipe = recipe
            return cfg
        cfg = from_dict(data, overrides, source=f"file {path}")
        if cfg.recipe is None and not isinstance(data.get("sources"), dict):  # a user's recipe file
            cfg.recipe = str(path)
        return cfg
    except PonderError as exc:
        raise PonderError(f"{data_path}: {exc}") from None


def validate(cfg: RunConfig) -> None:
    """Value checks that type checks cannot express; raise PonderError naming the key."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise PonderError(msg)

    t = cfg.train
    for section in ("data", "optim", "train", "log", "dist"):  # the ranges declared on the fields (`option`)
        for problem in problems(getattr(cfg, section), section):
            raise PonderError(problem)
    need(t.out is None or t.out.strip() != "",
         "train.out (--out) is empty; give a run directory or leave it out for runs/<name>-<time>")
    need(bool(cfg.data.inputs), "data.inputs must list at least one input")
    # numpy's seed is the narrowest of the three RNGs train() seeds: it takes [0, 2**32).
    need(0 <= t.seed < 2**32, f"train.seed must be in [0, 2**32), got {t.seed}")
    need(t.device in DEVICES or t.device.startswith("cuda:"),
         f"train.device must be one of {', '.join(DEVICES)} or cuda:N, got {t.device!r}")
    need(t.global_batch_size is None or (t.global_batch_size > 0 and t.global_batch_size % t.batch_size == 0),
         f"train.global_batch_size ({t.global_batch_size}) must be a positive multiple of train.batch_size "
         f"({t.batch_size})")
    method = cfg.model.get("method", "vanilla")
    freezable = [n for n, c in REGISTRY.items() if c.freeze_backbone is not None]
    need(t.freeze_backbone_steps == 0 or method in freezable,
         f"train.freeze_backbone_steps needs model.method={' or '.join(freezable)} (it trains the method's own "
         f"parameters alone first), got method {method!r}")
    max_pos = cfg.model.get("max_position_embeddings")
    if max_pos is not None:
        need(cfg.data.seq_len <= max_pos,
             f"data.seq_len ({cfg.data.seq_len}) exceeds model.max_position_embeddings ({max_pos})")


def grad_accum_for(cfg: RunConfig, world_size: int) -> int:
    """Micro-batches per step: `train.grad_accum`, or what `train.global_batch_size` needs at this world size."""
    t = cfg.train
    if t.global_batch_size is None:
        return t.grad_accum
    per_step = t.batch_size * world_size
    if t.global_batch_size % per_step:
        raise PonderError(f"train.global_batch_size ({t.global_batch_size}) is not a multiple of train.batch_size x "
                          f"world size ({t.batch_size} x {world_size}); change train.batch_size or the process count")
    return t.global_batch_size // per_step


def build_model_config(cfg: RunConfig) -> Any:
    """`PonderConfig(**cfg.model)` with its ValueError turned into a one-line PonderError."""
    from ponderlm.config import PonderConfig

    try:
        model_config = PonderConfig(**cfg.model_kwargs())
    except (ValueError, TypeError) as exc:
        raise PonderError(f"model: {exc}") from None
    if cfg.data.seq_len > model_config.max_position_embeddings:
        raise PonderError(f"data.seq_len ({cfg.data.seq_len}) exceeds model.max_position_embeddings "
                          f"({model_config.max_position_embeddings})")
    return model_config


def save_yaml(cfg: RunConfig, path: str | Path) -> None:
    """Write atomically (temp file + rename), so a kill mid-write never leaves a truncated recipe behind. A comment
    header lists the settings that differ from the documented defaults (the `sources` key keeps them machine-
    readable: loading the file for `--resume` reproduces the same list)."""
    from ponderlm.train.rundir import write_text_atomic  # torch: only needed once a run starts

    header = "".join(f"# {line}\n" for line in describe_differences(cfg).splitlines())
    write_text_atomic(Path(path), header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------------------------- recipes
def preset_names() -> list[str]:
    """The packaged recipes (`ponderlm train --recipe NAME`)."""
    root = resources.files("ponderlm") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """Path of a packaged recipe (`src/ponderlm/configs/<name>.yaml`), found after any kind of install."""
    names = preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"available: {', '.join(names)}"
        raise PonderError(f"unknown recipe '{name}'; {hint}")
    return Path(str(resources.files("ponderlm") / "configs" / f"{name}.yaml"))
