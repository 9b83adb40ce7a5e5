"""Run lm-evaluation-harness on a ponderlm checkpoint through its Python API, at chosen knob values (tau, alpha, ...).

The model is handed to `HFLM` as an object (it is a Hugging Face `PreTrainedModel` registered with
Auto*), so log-likelihood tasks call our parallel eval forward, which for PonderLM-3 is the
thresholded evaluation that agrees with decoding. Generation tasks (`generate_until`) go through
`model.generate` (real early exit) with lm-eval's own stopping criteria. lm-eval calls both without our
options, so the knob values are set on the model config for the whole run (and restored after). Task names
starting with `ponder_` are the offline tasks of `ponderlm.eval.tasks`; a `.yaml` path or a name found under
`include_paths` is the user's own task; any other name is passed to lm-eval unchanged (hub tasks, for online
users).

lm-eval is an optional dependency: `pip install 'ponderlm[eval]'` (lm-eval with its `hf` extra).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from ponderlm.errors import PonderError
from ponderlm.eval.perplexity import resolve
from ponderlm.eval.tasks import TASK_NAMES, build_tasks

INSTALL_HINT = "lm-eval is not installed; install it with: pip install 'ponderlm[eval]'  (or pip install 'lm-eval[hf]')"


def require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise PonderError(INSTALL_HINT) from None
    try:
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (its backend needs accelerate: lm-eval[hf])
    except ImportError as exc:
        raise PonderError(f"lm-eval's Hugging Face backend cannot be imported (missing {exc.name or exc}); install "
                          "it with: pip install 'ponderlm[eval]'  (or pip install 'lm-eval[hf]')") from None
    return lm_eval


def resolve_tasks(tasks: list[str], include_paths: list[str] | tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Task names, and the directories lm-eval must index: a task given as a YAML file path becomes the
    task (or group) it defines, and its directory joins the include paths (so its `include:`s resolve)."""
    names, dirs = [], []
    for path in include_paths:
        if not Path(path).is_dir():
            raise PonderError(f"--include_path {path}: not a directory")
        dirs.append(str(Path(path).resolve()))
    for task in tasks:
        if task.endswith((".yaml", ".yml")):
            path = Path(task)
            if not path.is_file():
                raise PonderError(f"task file {task} does not exist")
            try:
                config = _read_task_yaml(path)
            except (OSError, ValueError) as exc:  # unreadable, or a YAML syntax error
                raise PonderError(f"cannot read task file {task}: {exc}") from None
            name = config.get("task") or config.get("group") if isinstance(config, dict) else None
            if not isinstance(name, str):
                raise PonderError(f"task file {task} defines no `task:` (or `group:`) name")
            names.append(name)
            dirs.append(str(path.resolve().parent))
        else:
            names.append(task)
    return names, list(dict.fromkeys(dirs))


def _read_task_yaml(path: Path) -> Any:
    """A task YAML as plain data, lm-eval's `!function` tags left unresolved (only the task's name is needed)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # noqa: S506  (SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    options: Any = None,
    limit: float | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 1000,
    include_paths: list[str] | tuple[str, ...] = (),
    log_samples: bool = False,
    **knobs: Any,
) -> dict[str, Any]:
    """Evaluate `model` on lm-eval `tasks` (names, or paths of task YAML files; `include_paths`: directories of
    the user's own task YAMLs) under `options` (a `DecodeOptions`, None: the saved) with `knobs`; returns lm-eval's
    results dict (JSON-serialisable parts), with lm-eval's per-document `samples` (task -> list) when `log_samples`."""
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise PonderError("no tasks given (e.g. --tasks ponder_cloze,ponder_nextsent)")
    tasks, user_dirs = resolve_tasks(tasks, include_paths)
    unknown = [t for t in tasks if t.startswith("ponder_") and t not in TASK_NAMES]
    if unknown and not user_dirs:
        raise PonderError(f"unknown offline task(s) {', '.join(unknown)}; offline tasks are {', '.join(TASK_NAMES)}")
    include = ([str(build_tasks())] if any(t in TASK_NAMES for t in tasks) else []) + user_dirs
    # Indexing lm-eval's thousands of built-in task files takes seconds: skip it when every task is ours or in
    # the include paths.
    manager = TaskManager(include_path=include or None, include_defaults=False)
    if any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=include or None, include_defaults=True)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        raise PonderError(f"lm-eval does not know task(s) {', '.join(missing)}"
                          + ("" if user_dirs else " (your own task YAMLs: --include_path DIR or a .yaml path)"))
    # lm-eval's own Hugging Face model class, unchanged: log-likelihoods through our parallel forward, and
    # generate_until through `generate` with lm-eval's stopping criteria (real early exit).
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, backend="causal",
              max_length=model.config.max_position_embeddings)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    model.eval()
    effective = resolve(model, options, **knobs).as_dict()
    saved = {key: getattr(model.config, key) for key in effective}
    try:
        for key, value in effective.items():
            setattr(model.config, key, value)
        results = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
            bootstrap_iters=bootstrap_iters, log_samples=log_samples,
        )
    finally:
        for key, value in saved.items():
            setattr(model.config, key, value)
    if results is None:  # non-zero ranks under torchrun
        return {}
    keys = ("results", "versions", "n-shot", "higher_is_better", "n-samples") + (("samples",) if log_samples else ())
    out = {key: results[key] for key in keys if key in results}
    out["ponderlm"] = {"method": model.config.method, "max_steps": model.config.max_steps, **effective,
                       "limit": limit, "batch_size": batch_size}
    return json.loads(json.dumps(out, default=str))  # drop numpy scalars and other non-JSON values


def write_outputs(results: dict[str, Any], output_path: str | Path, model: str) -> list[Path]:
    """Write `results` where lm-eval's `--output_path` would, and return the files written.

    A path ending in .json is the results file itself (unlike lm-eval, which adds a timestamp to its name, so
    a script can read back the file it named); any other path is a directory that gets
    `<model, sanitised>/results_<time>.json`, as lm-eval lays it out. With `samples` in `results` (from
    `--log_samples`), each task's documents go to `samples_<task>_<time>.jsonl` beside the results file, one JSON
    object per line, and are left out of the results file, as in lm-eval."""
    results = dict(results)
    samples = results.pop("samples", None) or {}
    date_id = datetime.now().isoformat().replace(":", "-")  # lm-eval's file-name timestamp
    path = Path(output_path)
    if path.suffix == ".json":
        target = path
    else:  # lm-eval's model_name_sanitized: a local model path becomes one folder name
        target = path / re.sub(r"[\"<>:/|\\?*\[\]]+", "__", str(model)) / f"results_{date_id}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    written = [target]
    for task, docs in samples.items():
        file = target.parent / f"samples_{task}_{date_id}.jsonl"
        file.write_text("".join(json.dumps(doc, ensure_ascii=False, default=str) + "\n" for doc in docs),
                        encoding="utf-8")
        written.append(file)
    return written


def results_table(results: dict[str, Any]) -> str:
    """Task / metric / value lines (lm-eval's own table when available)."""
    try:
        from lm_eval.utils import make_table

        return make_table(results)
    except Exception:  # an older lm-eval without make_table, or a results dict it cannot render
        lines = []
        for task, metrics in results.get("results", {}).items():
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and "stderr" not in name:
                    lines.append(f"{task:24s} {name:28s} {value:.4f}")
        return "\n".join(lines)
