"""Evaluation and analysis: perplexity at chosen knob values (`DecodeOptions`), Pareto sweeps, difficulty /
knob (alpha) / gate / Jacobi analyses, plots and lm-evaluation-harness. See docs/EVALUATION.md.

Imports are lazy so `ponderlm --help` does not load torch.
"""

from __future__ import annotations

from ponderlm.lazy import lazy_exports

_EXPORTS = {
    "DecodeOptions": "ponderlm.methods.options",
    "PerplexityResult": "ponderlm.eval.perplexity",
    "TokenStats": "ponderlm.eval.perplexity",
    "collect_token_stats": "ponderlm.eval.perplexity",
    "eval_batches": "ponderlm.eval.perplexity",
    "flops_ratio": "ponderlm.eval.perplexity",
    "load_model": "ponderlm.eval.perplexity",
    "perplexity": "ponderlm.eval.perplexity",
    "ParetoPoint": "ponderlm.eval.pareto",
    "sweep_model": "ponderlm.eval.pareto",
    "knob_analysis": "ponderlm.eval.analysis",
    "difficulty_analysis": "ponderlm.eval.analysis",
    "gates_analysis": "ponderlm.eval.analysis",
    "jacobi_analysis": "ponderlm.eval.analysis",
    "run_lm_eval": "ponderlm.eval.lm_eval_adapter",
    "build_tasks": "ponderlm.eval.tasks",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
