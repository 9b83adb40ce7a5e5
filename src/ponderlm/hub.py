"""Self-contained checkpoints: remote code generated from the package, token ids, model card.

`PonderForCausalLM.save_pretrained` calls `write_remote_code(dir)`, which bundles the modules the model
needs (the import closure of `ponderlm.modeling`) into the checkpoint as flat files with their imports
rewritten to relative ones, plus an entry file `modeling_ponder.py`, and sets `auto_map` in
config.json. `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` then works in a Python
where ponderlm is not installed.

Why flat files: transformers' dynamic-module loader (`transformers/dynamic_module_utils.py`) copies a
local checkpoint's code into its module cache by following `from .name import ...` lines, one level,
in the same directory only (a `from .pkg.mod import` or `from . import mod` line is not followed).
So `ponderlm/methods/base.py` becomes `ponderlm__methods__base.py`, `from ponderlm.methods.base import
X` becomes `from .ponderlm__methods__base import X`, and the entry file names every bundled module in
a `from .mod import __name__` line so the loader copies modules that are only imported lazily.

The code is generated at save time from the installed package, so it is always the code that wrote
the weights; nothing is maintained by hand. A model that was itself loaded from remote code re-saves
the bundle it was loaded from. A method defined outside the package (a plugin) is bundled with it: the
import closure of its module within its own top-level package, as `ponderlm__plugin__<module>.py`, imported
by the entry file so that it registers itself.
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

ROOT_PACKAGE = "ponderlm"
ROOT_MODULE = "ponderlm.modeling"
ENTRY_FILE = "modeling_ponder.py"
# One module for both classes: the loader caches each entry file's import closure under its own hash,
# so a separate configuration file would give the model a second, different PonderConfig class.
AUTO_MAP = {"AutoConfig": "modeling_ponder.PonderConfig", "AutoModelForCausalLM": "modeling_ponder.PonderForCausalLM"}
BUNDLE_PREFIX = "ponderlm__"
PLUGIN_PREFIX = BUNDLE_PREFIX + "plugin__"  # ponderlm has no `plugin` subpackage, so the names cannot collide
# Auto* registration is for the installed package; remote code is found through `auto_map` instead, and
# registering the "ponder" model type from a checkpoint would shadow the installed classes in that process.
_DROPPED_CALLS = {("AutoConfig", "register"), ("AutoModelForCausalLM", "register")}


def flat_name(module: str) -> str:
    """`ponderlm.methods.base` -> `ponderlm__methods__base` (the package itself -> `ponderlm__`); a plugin's
    `toy.method` -> `ponderlm__plugin__toy__method`."""
    top, _, rest = module.partition(".")
    if top != ROOT_PACKAGE:
        return PLUGIN_PREFIX + module.replace(".", "__")
    return BUNDLE_PREFIX + rest.replace(".", "__")


def _module_file(module: str, packages: tuple[str, ...] = (ROOT_PACKAGE,)) -> Path | None:
    """Source file of a module or package (its __init__.py) of one of `packages` (top-level names); None if
    `module` is not one."""
    top = module.partition(".")[0]
    if top not in packages:
        return None
    if top == ROOT_PACKAGE:
        path = Path(__file__).resolve().parent
    else:  # a plugin: already imported (its method is registered), so this only looks its location up
        path = Path(importlib.import_module(top).__file__).resolve()
        if path.name != "__init__.py":  # a single-module plugin
            return path if module == top else None
        path = path.parent
    path = path.joinpath(*module.split(".")[1:])
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def _absolute(module: str, node: ast.ImportFrom, packages: tuple[str, ...]) -> str | None:
    """The absolute module an ImportFrom names (relative imports resolved against `module`)."""
    if node.level == 0:
        return node.module
    is_package = getattr(_module_file(module, packages), "name", None) == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _ponder_imports(module: str, tree: ast.AST, packages: tuple[str, ...] = (ROOT_PACKAGE,)):
    """Yield (node, absolute module, [(name, alias, is_submodule)]) for every import of a module of `packages`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] in packages:
                    raise ValueError(f"{module}: `import {alias.name}` cannot be bundled as remote code; "
                                     f"use `from {alias.name.rpartition('.')[0] or alias.name} import ...`")
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node, packages)
            if target is None or _module_file(target, packages) is None:
                continue
            names = [(a.name, a.asname, _module_file(f"{target}.{a.name}", packages) is not None) for a in node.names]
            yield node, target, names


def import_closure(root: str = ROOT_MODULE, plugins: tuple[str, ...] = ()) -> list[str]:
    """Every ponderlm module `root` and the `plugins` modules import, directly or not, at module level or inside
    functions, with the plugins' modules (and those of their own top-level packages they import)."""
    packages = (ROOT_PACKAGE, *(m.partition(".")[0] for m in plugins))
    seen: set[str] = set()
    todo = [root, *plugins]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        tree = ast.parse(_module_file(module, packages).read_text(encoding="utf-8"))
        for _, target, names in _ponder_imports(module, tree, packages):
            todo += [f"{target}.{name}" for name, _, sub in names if sub]
            if any(not sub for _, _, sub in names):  # names defined in `target` itself
                todo.append(target)
    return sorted(seen)


def _rewrite(module: str, source: str, packages: tuple[str, ...] = (ROOT_PACKAGE,)) -> str:
    """`source` with every import of `packages` made relative to the flat bundle and Auto* registration dropped."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, int, int, str]] = []  # (line, col, end_line, end_col, text), 1-based lines
    for node, target, names in _ponder_imports(module, tree, packages):
        indent = lines[node.lineno - 1][: node.col_offset]
        if indent.strip():
            raise ValueError(f"{module}:{node.lineno}: an import sharing its line with other code cannot be bundled")
        attrs = [f"{name} as {alias}" if alias else name for name, alias, sub in names if not sub]
        stmts = [_import_line(target, ", ".join(attrs))] if attrs else []
        stmts += [f"from . import {flat_name(f'{target}.{name}')} as {alias or name}" for name, alias, sub in names
                  if sub]
        edits.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset,
                      ("\n" + indent).join(stmts)))
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        func = call.func if isinstance(call, ast.Call) else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                and (func.value.id, func.attr) in _DROPPED_CALLS:
            edits.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, "pass"))
    for line, col, end_line, end_col, text in sorted(edits, reverse=True):
        head = lines[line - 1][:col]
        tail = lines[end_line - 1][end_col:]
        lines[line - 1: end_line] = [head + text + tail]
    return "".join(lines)


def _import_line(module: str, names: str) -> str:
    # Built from parts: a line of this file that starts with "from ." would itself look like a relative
    # import to the loader's regex once this module is bundled.
    return " ".join(("from", "." + flat_name(module), "import", names))


def _entry_source(modules: list[str], version: str, plugin: tuple[str, str, str] | None = None) -> str:
    listed = [m for m in modules if m not in ("ponderlm.config", ROOT_MODULE)]
    keep = "\n".join(_import_line(m, "__name__ as _  # noqa: F401") for m in listed)
    if plugin is not None:  # (method, module, class); no entry points reach remote code, so the entry file registers it
        method, module, cls = plugin
        keep += ("\n\n# The checkpoint's method comes from a plugin: register it under the name config.json uses.\n"
                 f"{_import_line('ponderlm.registry', 'register_method')}\n{_import_line(module, cls)}\n"
                 f"register_method({method!r})({cls})")
    config_line = _import_line("ponderlm.config", "PonderConfig  # noqa: F401")
    model_line = _import_line(ROOT_MODULE, "PonderCausalLMOutput, PonderForCausalLM  # noqa: F401")
    return f'''"""Remote code of a ponderlm checkpoint, generated from ponderlm {version} at save time. Do not edit.

Load with `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`; ponderlm need not be installed.
Each `ponderlm__*.py` file is one module of the package (`ponderlm/a/b.py` -> `ponderlm__a__b.py`).
"""

{config_line}
{model_line}

# transformers copies a checkpoint's code by following `from .module import` lines; these name the
# modules that are only imported inside functions (generation, continued pretraining), so they are copied too.
{keep}
'''


def remote_code_files(method: str | None = None) -> dict[str, str]:
    """{file name: source} of the bundle: the entry file plus one flat file per module (with the module of
    `method`'s class if it is defined outside the package)."""
    bundled_from = _bundle_dir()
    if bundled_from is not None:  # running from a checkpoint's remote code: re-save that code as it is
        return {p.name: p.read_text(encoding="utf-8") for p in sorted(bundled_from.glob("*.py"))
                if p.name == ENTRY_FILE or p.name.startswith(BUNDLE_PREFIX)}
    plugin = _plugin(method)
    plugins = (plugin[1],) if plugin else ()
    packages = (ROOT_PACKAGE, *(m.partition(".")[0] for m in plugins))
    modules = import_closure(plugins=plugins)
    files = {f"{flat_name(m)}.py": _rewrite(m, _module_file(m, packages).read_text(encoding="utf-8"), packages)
             for m in modules}
    files[ENTRY_FILE] = _entry_source(modules, _version(), plugin)
    return files


def _plugin(method: str | None) -> tuple[str, str, str] | None:
    """(method, module, class name) if `method`'s class is defined outside ponderlm (a plugin), else None."""
    if method is None:
        return None
    from ponderlm.registry import method_class

    cls = method_class(method)
    if cls.__module__.partition(".")[0] == ROOT_PACKAGE:
        return None
    if cls.__module__ == "__main__" or "." in cls.__qualname__:  # saving still works where the class is defined
        warnings.warn(f"method {method!r} ({cls.__module__}.{cls.__qualname__}) is not bundled into the checkpoint's "
                      "remote code: define its class at the top level of an importable module", stacklevel=3)
        return None
    return method, cls.__module__, cls.__qualname__


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(ROOT_PACKAGE)
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _bundle_dir() -> Path | None:
    """The directory of the bundle this module was loaded from, or None if it is the installed package."""
    return None if __name__.startswith(ROOT_PACKAGE + ".") else Path(__file__).resolve().parent


def write_remote_code(directory: str | Path) -> None:
    """Write the remote-code bundle into a `save_pretrained` directory and point config.json's auto_map at it."""
    directory = Path(directory)
    for old in directory.glob(f"{BUNDLE_PREFIX}*.py"):  # a module dropped from the package must not linger
        old.unlink()
    method = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("method")
    files = remote_code_files(method)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    _check_bundle(directory, files)
    update_json(directory / "config.json", auto_map=dict(AUTO_MAP))


def _check_bundle(directory: Path, files: dict[str, str]) -> None:
    """Every file the loader will try to copy (by its own regex) exists, and the closure covers the bundle."""
    from transformers.dynamic_module_utils import get_relative_import_files

    reached = {Path(f).name for f in get_relative_import_files(directory / ENTRY_FILE)} | {ENTRY_FILE}
    missing = sorted(name for name in reached if name not in files)
    unreached = sorted(name for name in files if name not in reached)
    if missing or unreached:
        raise RuntimeError(f"remote code bundle is inconsistent: loader would look for {missing}, never copy "
                           f"{unreached}")


def update_json(path: Path, **values: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(values)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- metadata
def complete_checkpoint(directory: str | Path, model, tokenizer, card: dict[str, Any] | None = None) -> None:
    """Finish a `save_pretrained` directory for Hugging Face users: special token ids in config.json and
    generation_config.json, a left-padding tokenizer (batched generation appends on the right), a model card.
    The ids are set on the model's configs in memory too; bos and pad fall back to eos, as generation needs them."""
    directory = Path(directory)
    eos = tokenizer.eos_token_id
    ids = {"bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
           "eos_token_id": eos,
           "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos}
    for key, value in ids.items():
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)
    update_json(directory / "config.json", **ids)
    gen_path = directory / "generation_config.json"
    if gen_path.is_file():
        update_json(gen_path, **ids)
    else:
        model.generation_config.save_pretrained(directory)
    tokenizer.padding_side = "left"
    # The model's position limit, so `truncation=True` protects users (a tokenizer trained on its own knows no
    # model and carries an effectively unlimited 1 << 30).
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(directory)
    # transformers 5 does not write padding_side unless the tokenizer was created with it; the class name is
    # the one that loads the same tokenizer.json in 4.x and 5.x (as `ponderlm tokenizer train` writes it).
    tok_config = directory / "tokenizer_config.json"
    if tok_config.is_file():
        extra = {"tokenizer_class": "PreTrainedTokenizerFast"} if (directory / "tokenizer.json").is_file() else {}
        update_json(tok_config, padding_side="left", model_max_length=model.config.max_position_embeddings, **extra)
    (directory / "README.md").write_text(model_card(model.config, card or {}), encoding="utf-8")


def model_card(config, info: dict[str, Any]) -> str:
    """A README.md for a checkpoint: method, K, its inference knobs (tau, alpha, ...), data, tokens trained,
    validation perplexity."""

    def fmt(value: Any, spec: str = "") -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "n/a"
        return format(value, spec) if spec else str(value)

    method, k = config.method, config.max_steps
    params = info.get("parameters")
    knobs = config.method_class.knobs()  # what the method declares: the inference knobs, with their saved values
    rows = [
        ("method", f"`{method}`"),
        ("K (max additional steps per token)", str(k)),
        *((f"{name} ({knob.help})", fmt(getattr(config, name), "g" if knob.type is float else "")) for name, knob
          in knobs.items()),
        ("backbone", f"{config.backbone}, {config.num_hidden_layers} layers, d={config.hidden_size}, "
                     f"{config.num_attention_heads} heads, vocab {config.vocab_size}"),
        ("parameters", f"{params:,}" if params else "n/a"),
        ("training data", fmt(info.get("data"))),
        ("continued from", fmt(info.get("init_from"))),
        ("optimizer steps", fmt(info.get("steps"), ",")),
        ("tokens trained", fmt(info.get("tokens_seen"), ",")),
        ("validation perplexity", fmt(info.get("val_ppl"), ".3f")
         + (f" on {info['val_conditions']}" if info.get("val_conditions") else "")),
        ("recipe", fmt(info.get("recipe")) if info.get("recipe") else "none (documented defaults + overrides; "
                                                                        "see the run's config.yaml)"),
        ("avg executed additional steps (validation)", fmt(info.get("avg_executed_steps"), ".3f")),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    knob_args = "".join(f"{n}={getattr(config, n)!r}, " for n in knobs if getattr(config, n) is not None)
    return f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
tags:
- ponderlm
- {method}
---

# {info.get("name") or f"ponderlm {method} model"}

A pondering language model trained with ponderlm (`{method}`): each token may run up to
K={k} additional latent steps, and decoding skips the steps the method prunes (real early exit).

| | |
|---|---|
{table}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

# trust_remote_code for both: AutoTokenizer reads config.json, whose "ponder" type comes with the checkpoint's code
tok = AutoTokenizer.from_pretrained("this/dir", trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained("this/dir", trust_remote_code=True)  # ponderlm not required
inputs = tok("The", return_tensors="pt")  # input_ids and attention_mask (pad is eos: it cannot be inferred)
out = model.generate(**inputs, max_new_tokens=32, {knob_args}return_dict_in_generate=True)
print(tok.decode(out.sequences[0]), out.executed_steps)
```

With ponderlm installed, `PonderForCausalLM.from_pretrained("this/dir")` loads the same weights, and
`ponderlm eval ppl --model this/dir` / `ponderlm generate --model this/dir --prompt ...` work on it.
The remote code (`modeling_ponder.py`, `ponderlm__*.py`) was generated from the ponderlm package that wrote
these weights.
"""
