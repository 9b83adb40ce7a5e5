"""Run lm-evaluation-harness on a ponderlm checkpoint through its Python API, at a chosen tau / alpha.

The model is handed to `HFLM` as an object (it is a Hugging Face `PreTrainedModel` registered with
Auto*), so log-likelihood tasks call our parallel eval forward, which for PonderLM-3 is the
thresholded evaluation that agrees with decoding. Generation tasks go through `model.generate`
(real early exit) with lm-eval's stop strings. tau / alpha are set on the model config for the whole
run. Task names starting with `ponder_` are the offline tasks of `ponderlm.eval.tasks`; any other name
is passed to lm-eval unchanged (hub tasks, for online users).

lm-eval is an optional dependency: `pip install 'ponderlm[eval]'` (lm-eval with its `hf` extra).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ponderlm.errors import PonderError
from ponderlm.eval.perplexity import AS_SAVED, DecodeSettings, applied
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


def _ponder_lm_class():
    """`HFLM` with generation routed to our `generate` (HF-only stopping criteria are not accepted there)."""
    from lm_eval.models.huggingface import HFLM

    class PonderHFLM(HFLM):
        def _model_generate(self, context, max_length: int, stop: list[str], **kwargs: Any):
            attention_mask = kwargs.pop("attention_mask", None)
            kwargs.pop("use_cache", None)
            temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
            do_sample = kwargs.pop("do_sample", None)
            do_sample = temperature > 0 if do_sample is None else bool(do_sample)
            gen = {"max_new_tokens": max(int(max_length) - context.shape[1], 1), "do_sample": do_sample,
                   "pad_token_id": self.tokenizer.pad_token_id, **kwargs}
            if do_sample and temperature > 0:
                gen["temperature"] = temperature
            return self.model.generate(context, attention_mask=attention_mask, stop_strings=list(stop or []) or None,
                                       tokenizer=self.tokenizer, **gen)

    return PonderHFLM


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    settings: DecodeSettings = AS_SAVED,
    limit: float | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 1000,
    cache_root: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on lm-eval `tasks`; returns lm-eval's results dict (JSON-serialisable parts)."""
    lm_eval = require_lm_eval()
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise PonderError("no tasks given (e.g. --tasks ponder_cloze,ponder_nextsent)")
    unknown = [t for t in tasks if t.startswith("ponder_") and t not in TASK_NAMES]
    if unknown:
        raise PonderError(f"unknown offline task(s) {', '.join(unknown)}; offline tasks are {', '.join(TASK_NAMES)}")
    offline_only = all(t in TASK_NAMES for t in tasks)
    include = str(build_tasks(cache_root)) if any(t in TASK_NAMES for t in tasks) else None
    # Indexing lm-eval's thousands of built-in task files takes seconds; skip it when only ours are asked for.
    manager = TaskManager(include_path=include, include_defaults=not offline_only)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        raise PonderError(f"lm-eval does not know task(s) {', '.join(missing)}")
    lm = _ponder_lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, backend="causal",
                            max_length=model.config.max_position_embeddings)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    model.eval()
    with applied(model, settings):
        results = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
            bootstrap_iters=bootstrap_iters, log_samples=False,
        )
        effective = {"tau": model.config.tau, "alpha": model.config.alpha,
                     "depth_policy": model.config.depth_policy, "depth_target": model.config.depth_target}
    if results is None:  # non-zero ranks under torchrun
        return {}
    out = {key: results[key] for key in ("results", "versions", "n-shot", "higher_is_better", "n-samples")
           if key in results}
    out["ponderlm"] = {"method": model.config.method, "max_steps": model.config.max_steps, **effective,
                       "limit": limit, "batch_size": batch_size}
    return json.loads(json.dumps(out, default=str))  # drop numpy scalars and other non-JSON values


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
