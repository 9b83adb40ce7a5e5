"""`ponderlm eval ppl`, `ponderlm pareto`, `ponderlm analyze difficulty|alpha|gates|jacobi`, `ponderlm lm-eval`.

Thin: parse, load, call the typed functions in `ponderlm.eval`, write JSON (+ PNG), print where.
Heavy imports happen inside the handlers so `ponderlm --help` stays fast.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

from ponderlm.commands.knobs import float_list, knob_flags, knob_values
from ponderlm.errors import PonderError
from ponderlm.paths import check_writable

# ------------------------------------------------------------------ argument helpers

def _model_arg(p: argparse.ArgumentParser, multiple: bool = False) -> None:
    p.add_argument("--model", action="append" if multiple else "store", required=True, metavar="DIR",
                   help="a saved model directory, or a run directory (its final/ is used)"
                        + ("; repeatable" if multiple else ""))
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def _data_args(p: argparse.ArgumentParser, max_batches: int | None, seq_len: int | None = None) -> None:
    p.add_argument("--data", default="default", metavar="PATH",
                   help="'default' (bundled corpus, fixed split, tokenized with the model's tokenizer), "
                        "'heldout' (bundled held-out text from none of the corpus's sources, scored whole), a "
                        "`ponderlm data prepare` directory, or text/jsonl files (default: default)")
    p.add_argument("--split", default="val", help="split of --data to score (default: val)")
    p.add_argument("--seq-len", type=int, default=seq_len, metavar="N",
                   help="window length (default: min(256, max_position_embeddings))" if seq_len is None
                   else f"window length (default {seq_len})")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="windows per forward (default 8)")
    p.add_argument("--max-batches", type=int, default=max_batches, metavar="N",
                   help=f"score at most N batches (default: {'all' if max_batches is None else max_batches})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def _analysis_parser(sub: argparse._SubParsersAction, name: str, func, help: str, description: str | None = None,
                     max_batches: int = 16, seq_len: int | None = None, late_arguments: Any = knob_flags
                     ) -> argparse.ArgumentParser:
    """`ponderlm analyze NAME`: one --model, held-out data, --out results/NAME, the knob flags (`late_arguments`)."""
    p = sub.add_parser(name, help=help, description=description)
    _model_arg(p)
    _data_args(p, max_batches, seq_len)
    p.add_argument("--out", default=f"results/{name}", metavar="DIR",
                   help=f"output directory for the JSON and plot (default results/{name})")
    p.set_defaults(func=func, late_arguments=late_arguments)
    return p


def _load(args: argparse.Namespace, path: str | None = None) -> tuple[Any, Any, list]:
    """(model, tokenizer, evaluation batches) for one --model."""
    from ponderlm.eval.perplexity import eval_batches, load_model

    if getattr(args, "out", None):  # before loading and computing: an unwritable --out fails in a second
        check_writable(args.out, "--out", directory=True)
    knob_values(args)  # every knob value checked before the model loads
    if args.seq_len is not None and args.seq_len < 2:  # 0 must not quietly mean the default
        raise PonderError(f"--seq-len must be >= 2 (a window predicts its tokens after the first), got {args.seq_len}")
    model, tokenizer = load_model(path or args.model, args.device)
    seq_len = args.seq_len or min(256, model.config.max_position_embeddings)
    if seq_len > model.config.max_position_embeddings:
        raise PonderError(f"--seq-len {seq_len} exceeds the model's max_position_embeddings "
                          f"({model.config.max_position_embeddings})")
    batches = eval_batches(args.data, tokenizer, split=args.split, seq_len=seq_len, batch_size=args.batch_size,
                           max_batches=args.max_batches)
    return model, tokenizer, batches


def _names(paths: list[str]) -> list[str]:
    """A label per --model for plots: the run directory's name rather than 'final', with `#i` added when an
    earlier model has the same one."""
    from ponderlm.loading import resolve_model_dir

    names: list[str] = []
    for i, path in enumerate(paths):
        model_dir = resolve_model_dir(path)
        name = model_dir.parent.name if model_dir.name == "final" else model_dir.name
        names.append(f"{name}#{i + 1}" if name in names else name)
    return names


def _write_json(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


# ------------------------------------------------------------------ registration
def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("eval", help="evaluate a checkpoint (perplexity)")
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
    p = ev_sub.add_parser("ppl", help="perplexity, avg executed steps and FLOPs ratio on held-out text",
                          description="Perplexity with the parallel eval forward (for PonderLM-3 the thresholded "
                                      "Jacobi evaluation that agrees with decoding), average executed additional "
                                      "steps per token and forward FLOPs relative to vanilla at those steps.")
    _model_arg(p)
    _data_args(p, max_batches=None)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_ppl, late_arguments=knob_flags)

    p = ev_sub.add_parser("reasoning", help="answer accuracy and executed steps vs true difficulty (data synth sets)",
                          description="Score a model on a `ponderlm data synth` split: answer accuracy overall and per "
                                      "true difficulty, mean executed additional steps per difficulty and the Spearman "
                                      "correlation between executed steps and difficulty. Writes reasoning.json and "
                                      "reasoning.png (accuracy and steps vs difficulty, one line per --model).")
    _model_arg(p, multiple=True)
    p.add_argument("--data", required=True, metavar="DIR", help="a `ponderlm data synth` directory")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to score (default test)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="examples per forward (default 64)")
    p.add_argument("--max-examples", type=int, metavar="N", help="score at most N examples (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON (one object; {'results': [...]} for several models)")
    p.add_argument("--out", default="results/reasoning", metavar="DIR",
                   help="where reasoning.json and reasoning.png go (default results/reasoning)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.set_defaults(func=cmd_reasoning, late_arguments=knob_flags)

    p = subparsers.add_parser("pareto", help="perplexity vs executed steps: adaptive sweeps + fixed-pruning controls",
                              description="Sweep each model's declared sweep knob (PonderLM-3: alpha; AdaPonderLM, "
                                          "latent CoT: tau), crossed with any other of its knobs given a list, and "
                                          "run the fixed-pruning controls at the same average steps (iso-FLOPs). "
                                          "Writes pareto.json and pareto.png.")
    _model_arg(p, multiple=True)
    _data_args(p, max_batches=16)
    p.add_argument("--fixed", default="uniform,geometric", metavar="LIST",
                   help="fixed-pruning policies to add, or 'none' (default uniform,geometric)")
    p.add_argument("--targets", type=float_list, metavar="LIST",
                   help="average steps of the fixed-pruning points (default: those measured at the adaptive points)")
    p.add_argument("--out", default="results/pareto", metavar="DIR", help="output directory (default results/pareto)")
    p.set_defaults(func=cmd_pareto, late_arguments=functools.partial(knob_flags, sweeps=True))

    an = subparsers.add_parser("analyze", help="where pondering compute goes: difficulty, alpha, gates, jacobi")
    an_sub = an.add_subparsers(dest="analyze_command", metavar="ANALYSIS", required=True)
    p = _analysis_parser(an_sub, "difficulty", cmd_difficulty,
                         help="CE gain per difficulty bucket vs steps; difficulty vs learned steps",
                         description="Difficulty = NLL with 0 additional steps. Plots (a) the CE gain per difficulty "
                                     "bucket at each forced number of steps and (b) mean learned steps per bucket.")
    p.add_argument("--buckets", type=int, default=5, metavar="N", help="difficulty quantile buckets (default 5)")

    p = _analysis_parser(an_sub, "alpha", cmd_alpha,
                         help="alpha sweep: Δloss vs induced steps on easy and hard tokens (PonderLM-3)",
                         description="Split tokens into easy / hard halves by 0-step NLL, sweep the router bias alpha "
                                     "and plot each half's loss change relative to alpha = 0 against its avg steps.",
                         late_arguments=functools.partial(knob_flags, skip=("alpha",)))
    p.add_argument("--alpha", type=float_list, default=[-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0], metavar="LIST",
                   help="alphas (0 is always added; default -4,-2,-1,0,1,2,4)")

    p = _analysis_parser(an_sub, "gates", cmd_gates,
                         help="NLL by executed steps and most / least pondered tokens (halting methods)")
    p.add_argument("--top", type=int, default=20, metavar="N", help="tokens listed at each end (default 20)")
    p.add_argument("--min-count", type=int, default=5, metavar="N", help="min occurrences of a listed token")

    p = _analysis_parser(an_sub, "jacobi", cmd_jacobi,
                         help="Jacobi convergence: RMSE to the sequential solution per sweep",
                         description="RMSE of the slot hidden states of the parallel Jacobi solve to token-by-token "
                                     "decoding after each sweep (ponderlm2, ponderlm3).",
                         max_batches=1, seq_len=64, late_arguments=None)
    p.add_argument("--sweeps", type=int, default=8, metavar="N", help="Jacobi sweeps to trace (default 8)")
    p.add_argument("--num-seqs", type=int, default=2, metavar="N", help="sequences to trace (default 2)")

    p = subparsers.add_parser("lm-eval", help="lm-evaluation-harness tasks at chosen knob values (tau, alpha, ...)",
                              description="Run lm-evaluation-harness (pip install 'ponderlm[eval]'). Offline tasks "
                                          "built from the bundled validation text: ponder_cloze, ponder_nextsent, "
                                          "ponder_wikitext_style; your own tasks as task YAML paths or names "
                                          "found under --include_path; other names go to lm-eval unchanged. "
                                          "Flags use lm-eval's spellings (--include_path, --output_path, "
                                          "--log_samples, --batch_size, --num_fewshot, --bootstrap_iters); the "
                                          "dashed forms work too.")
    _model_arg(p)
    p.add_argument("--tasks", required=True, metavar="LIST",
                   help="comma-separated task names or task YAML paths (e.g. ponder_cloze,my_tasks/qa.yaml)")
    p.add_argument("--include_path", "--include-path", dest="include_path", action="append", default=[],
                   metavar="DIR", help="a directory of your own lm-eval task YAMLs (repeatable)")
    p.add_argument("--limit", type=float, metavar="N", help="at most N examples per task (a fraction if < 1)")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=8, metavar="B",
                   help="requests per forward (default 8)")
    p.add_argument("--num_fewshot", "--num-fewshot", dest="num_fewshot", type=int, metavar="N",
                   help="few-shot examples per prompt (default: the task's)")
    p.add_argument("--bootstrap_iters", "--bootstrap-iters", dest="bootstrap_iters", type=int, default=1000,
                   metavar="N", help="bootstrap resamples for stderr of non-mean metrics (0 = skip; default 1000)")
    p.add_argument("--output_path", "-o", "--output-path", "--output", dest="output_path", metavar="PATH",
                   help="results JSON: a .json file, or a directory that gets <model>/results_<time>.json as with "
                        "lm-eval")
    p.add_argument("--log_samples", "-s", "--log-samples", dest="log_samples", action="store_true",
                   help="also write each task's scored documents to samples_<task>_<time>.jsonl beside the results "
                        "(needs --output_path)")
    p.set_defaults(func=cmd_lm_eval, late_arguments=knob_flags)


# ------------------------------------------------------------------ handlers
def cmd_ppl(args: argparse.Namespace) -> int:
    from ponderlm.data.loader import describe_windows
    from ponderlm.eval.perplexity import perplexity
    from ponderlm.methods.options import DecodeOptions

    model, _, batches = _load(args)
    result = perplexity(model, batches, progress=not args.no_progress, **knob_values(args))
    knobs = DecodeOptions(model.config.method, tuple(result.settings.items())).describe()
    # A perplexity means nothing without its windows: another split, window or token count gives another number.
    conditions = {"data": args.data, "split": args.split, "seq_len": result.seq_len, "batch_size": args.batch_size,
                  "batches": len(batches), "windows": result.sequences, "tokens": result.tokens,
                  "description": f"{args.data}:{args.split}, the "
                                 f"{describe_windows(len(batches), args.batch_size, result.seq_len, result.tokens)}"
                                 + (f", {knobs}" if knobs else "")}
    if args.json:
        print(json.dumps({**result.as_dict(), "conditions": conditions}))
        return 0
    ratio = "n/a" if result.flops_ratio is None else f"{result.flops_ratio:.3f}x vanilla"
    print(f"{result.method} (K={result.max_steps}) on {conditions['description']}")
    print(f"perplexity {result.ppl:.3f} (loss {result.loss:.4f})")
    print(f"avg executed steps {result.avg_steps:.3f} of K={result.max_steps}")
    print(f"forward FLOPs {ratio}")
    return 0


def cmd_reasoning(args: argparse.Namespace) -> int:
    from ponderlm.eval.perplexity import load_model
    from ponderlm.eval.reasoning import plot_reasoning, reasoning_eval

    if args.max_examples is not None and args.max_examples < 1:
        raise PonderError(f"--max-examples must be at least 1, got {args.max_examples}")
    knobs = knob_values(args)
    results = []
    for path, name in zip(args.model, _names(args.model)):
        model, tokenizer = load_model(path, args.device)
        result = reasoning_eval(model, args.data, split=args.split, batch_size=args.batch_size,
                                max_examples=args.max_examples, progress=not args.no_progress, tokenizer=tokenizer,
                                **knobs)
        results.append({"name": name, "model": str(path), "data": str(args.data), **result})
        del model
    out = Path(args.out)
    payload = results[0] if len(results) == 1 else {"results": results}
    json_path = _write_json(payload, out / "reasoning.json")
    png = plot_reasoning(results, out / "reasoning.png")
    if args.json:
        print(json.dumps(payload))
        return 0
    for r in results:
        rho = r["spearman_steps_difficulty"]
        print(f"{r['name']}: {r['method']} (K={r['max_steps']}) on {r['task']}:{r['split']}, {r['answers']:,} answers "
              f"in {r['examples']:,} examples")
        print(f"  accuracy {r['accuracy']:.4f}, examples fully solved {r['examples_fully_solved']:.4f}, "
              f"avg executed steps {r['avg_steps']:.3f} (at queries {r['avg_steps_answers']:.3f})")
        for p in r["per_difficulty"]:
            print(f"  difficulty {p['difficulty']}: accuracy {p['accuracy']:.4f}  steps {p['avg_steps']:.3f}  "
                  f"({p['count']} answers)")
        print(f"  Spearman(steps, difficulty) {'n/a (constant steps)' if rho is None else f'{rho:.3f}'}")
    print(f"wrote {json_path} and {png}")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from ponderlm.eval.pareto import FIXED_POLICIES, pareto_result, pareto_table, sweep_model
    from ponderlm.eval.perplexity import resolve
    from ponderlm.eval.plots import plot_pareto

    fixed = () if args.fixed.strip().lower() == "none" else tuple(x.strip() for x in args.fixed.split(",") if x.strip())
    bad = [p for p in fixed if p not in FIXED_POLICIES]
    if bad:
        raise PonderError(f"unknown --fixed policy {', '.join(bad)}; choose from {', '.join(FIXED_POLICIES)} or none")
    points, seq_len, sequences = [], 0, 0
    knobs = knob_values(args)
    sweeps = {k: v for k, v in knobs.items() if isinstance(v, list)}
    for path, name in zip(args.model, _names(args.model)):
        model, _, batches = _load(args, path)
        seq_len, sequences = int(batches[0].shape[1]), sum(int(b.shape[0]) for b in batches)
        options = resolve(model, **{k: v for k, v in knobs.items() if k not in sweeps})
        points += sweep_model(model, name, batches, sweeps=sweeps, fixed=fixed, targets=args.targets,
                              options=options, progress=not args.no_progress)
        del model
    print(pareto_table(points))  # the result: stdout, apart from the progress bars and notes on stderr
    return _finish(pareto_result(points, seq_len, sequences), Path(args.out), "pareto",
                   lambda r, path: plot_pareto(r["points"], path))


def cmd_difficulty(args: argparse.Namespace) -> int:
    from ponderlm.eval.analysis import difficulty_analysis
    from ponderlm.eval.plots import plot_difficulty

    model, _, batches = _load(args)
    result = difficulty_analysis(model, batches, num_buckets=args.buckets, progress=not args.no_progress,
                                 **knob_values(args))
    # What the figure's title names: the model and the text it was measured on (n is result["tokens"]).
    result = {"model": _names([args.model])[0], "data": f"{args.data}:{args.split}", **result}
    return _finish(result, Path(args.out), "difficulty", plot_difficulty)


def cmd_alpha(args: argparse.Namespace) -> int:
    from ponderlm.eval.analysis import knob_analysis
    from ponderlm.eval.plots import plot_alpha

    model, _, batches = _load(args)
    result = knob_analysis(model, batches, "alpha", args.alpha, progress=not args.no_progress, **knob_values(args))
    return _finish(result, Path(args.out), "alpha", plot_alpha)


def cmd_gates(args: argparse.Namespace) -> int:
    from ponderlm.eval.analysis import gates_analysis
    from ponderlm.eval.plots import plot_gates

    model, tokenizer, batches = _load(args)
    result, nll_by_steps = gates_analysis(model, tokenizer, batches, top=args.top, min_count=args.min_count,
                                          progress=not args.no_progress, **knob_values(args))
    return _finish(result, Path(args.out), "gates", lambda r, path: plot_gates(nll_by_steps, r, path))


def cmd_jacobi(args: argparse.Namespace) -> int:
    from ponderlm.eval.analysis import jacobi_analysis
    from ponderlm.eval.plots import plot_jacobi

    args.batch_size = max(args.num_seqs, 1)
    model, _, batches = _load(args)
    result = jacobi_analysis(model, batches[0][: args.num_seqs], args.sweeps)
    return _finish(result, Path(args.out), "jacobi", plot_jacobi)


def _finish(result: dict[str, Any], out: Path, name: str, plot) -> int:
    json_path = _write_json(result, out / f"{name}.json")
    png = plot(result, out / f"{name}.png")
    print(f"wrote {json_path} and {png}")
    return 0


def cmd_lm_eval(args: argparse.Namespace) -> int:
    from ponderlm.eval.lm_eval_adapter import require_lm_eval, results_table, run_lm_eval, write_outputs
    from ponderlm.eval.perplexity import load_model

    if args.log_samples and not args.output_path:  # lm-eval refuses this too: the samples would go nowhere
        raise PonderError("--log_samples writes files next to the results: give --output_path too")
    require_lm_eval()  # before loading the model: one line telling how to install
    if args.output_path:
        check_writable(args.output_path, "--output_path", directory=not args.output_path.endswith(".json"))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    knobs = knob_values(args)
    model, tokenizer = load_model(args.model, args.device)
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    results = run_lm_eval(model, tokenizer, tasks, limit=limit, batch_size=args.batch_size,
                          num_fewshot=args.num_fewshot, bootstrap_iters=args.bootstrap_iters,
                          include_paths=args.include_path, log_samples=args.log_samples, **knobs)
    print(results_table(results))
    if args.output_path:
        print(f"wrote {', '.join(str(f) for f in write_outputs(results, args.output_path, args.model))}")
    return 0
