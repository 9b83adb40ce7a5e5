"""Quality vs compute: sweep each checkpoint's inference knob and its iso-FLOPs fixed-pruning controls.

Per checkpoint:
- a method that declares a sweep axis (a knob declared with `sweep=`: PonderLM-3's router bias alpha,
  AdaPonderLM's and latent CoT's threshold tau) traces a curve over it (its declared points unless given),
  crossed with any other of its knobs given a list (e.g. several taus for PonderLM-3);
- the others (vanilla, pause, looped, ponderlm, ponderlm2) give one point;
- fixed-pruning controls (METHODS.md §9) of methods with a depth control run the same checkpoint with depths drawn
  independently of content. By default their targets are the average steps measured at the adaptive
  points, so each control point sits at the same compute as a learned point (iso-FLOPs). Policies that
  draw the same depths (uniform and geometric at K = 1) are run once (`identical_policies`).
x = average executed additional steps per token, y = perplexity.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from ponderlm.errors import PonderError
from ponderlm.eval.perplexity import collect_token_stats, flops_ratio, resolve
from ponderlm.methods.fixed_pruning import policy_probs
from ponderlm.methods.options import DecodeOptions, sweep_knobs

FIXED_POLICIES = ("uniform", "geometric")


@dataclass
class ParetoPoint:
    model: str
    method: str
    curve: str  # legend label: one curve per (model, policy)
    policy: str  # "learned" | "uniform" | "geometric" | "fixed" (a method without a depth choice)
    knobs: dict[str, Any]  # value of every swept knob (`sweep_knobs`) in force, None if the method has none
    depth_target: float | None  # a fixed-pruning control's target average steps
    avg_steps: float
    ppl: float
    loss: float
    flops_ratio: float | None
    tokens: int
    same_as: tuple[str, ...] = ()  # other fixed policies whose depths are these exactly (run once: K = 1)


def sweep_grid(config, sweeps: dict[str, list[Any]] | None) -> list[dict[str, Any]]:
    """The knob settings of the method's learned curve (empty: it declares no sweep axis): its sweep axis over the
    given values or its declared points, innermost, crossed with its other knobs given values in `sweeps`."""
    cls = config.method_class
    knobs = cls.knobs()
    axis = next((name for name, declared in knobs.items() if declared.sweep), None)
    given = {k: list(v) for k, v in (sweeps or {}).items() if v}
    if axis is None:
        return []
    for name in sorted(set(given) - set(knobs)):
        print(f"note: --{name.replace('_', '-')} ignored for {config.method!r} (not one of its knobs); "
              f"sweeping {axis}", file=sys.stderr)
    names = [*(k for k in knobs if k in given and k != axis), axis]
    learned = cls.fixed_depth_knobs("learned") or {}
    return [{**learned, **dict(zip(names, values))}
            for values in itertools.product(*(given.get(k) or knobs[k].sweep for k in names))]


def sweep_model(
    model, name: str, batches: list[torch.Tensor], *, sweeps: dict[str, list[Any]] | None = None,
    fixed: tuple[str, ...] = FIXED_POLICIES, targets: list[float] | None = None,
    options: DecodeOptions | None = None, progress: bool = True,
) -> list[ParetoPoint]:
    """All Pareto points of one checkpoint (see the module docstring); `options`: the knob values every point
    starts from (e.g. a Jacobi sweep count), None: the saved ones."""
    config, cls = model.config, model.config.method_class
    seq_len = int(batches[0].shape[1])
    K = config.max_steps
    points: list[ParetoPoint] = []
    shown = sweep_knobs()

    def run(knobs: dict[str, Any], curve: str, policy: str, desc: str, target: float | None = None) -> ParetoPoint:
        opts = resolve(model, options, **knobs)
        stats = collect_token_stats(model, batches, opts, progress=progress, desc=desc)
        return ParetoPoint(model=name, method=config.method, curve=curve, policy=policy,
                           knobs={k: opts.as_dict().get(k) for k in shown}, depth_target=target,
                           avg_steps=stats.avg_steps, ppl=stats.ppl, loss=stats.loss,
                           flops_ratio=flops_ratio(model.config, seq_len, stats.avg_steps), tokens=int(stats.nll.size))

    grid = sweep_grid(config, sweeps)
    for knobs in grid:
        label = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in knobs.items() if k in shown)
        points.append(run(knobs, curve_label(name, config.method), "learned", f"{name} {label}"))
    if not grid:
        points.append(run({}, curve_label(name, config.method, f"K={K}"), "fixed", f"{name}"))
    if not grid or cls.fixed_depth_knobs("learned") is None:
        if fixed and targets:
            print(f"note: {name} ({config.method}) has no per-token depth; no fixed-pruning controls", file=sys.stderr)
        return points
    goal = sorted(targets) if targets else iso_flops_targets([p.avg_steps for p in points], K)
    for target in goal:
        if not 0.0 <= target <= K:
            raise PonderError(f"--targets value {target} is outside [0, K={K}] for {name}")
    for policy, same in identical_policies(fixed, goal, K):
        curve = f"{name} {policy}"
        if same:
            curve = f"{name} {' = '.join((policy, *same))} (same depths at K={K})"
            print(f"note: {name}: at K={K} the {' and '.join((policy, *same))} policies draw the same depth for "
                  f"every token (one extra step, taken with probability = target); run once", file=sys.stderr)
        for target in goal:
            point = run(cls.fixed_depth_knobs(policy, float(target)), curve, policy, f"{name} {policy} {target:.2f}",
                        float(target))
            points.append(replace(point, same_as=same))
    return points


def identical_policies(policies: tuple[str, ...], targets: list[float], max_steps: int
                       ) -> list[tuple[str, tuple[str, ...]]]:
    """`policies` grouped as (policy to run, the others that coincide with it).

    Every fixed policy maps the same per-token uniform draw through its depth CDF, so two policies with the
    same depth distribution at every target give every token the same depth: identical points, one hiding
    the other on the plot, at twice the run time. At K = 1 uniform and geometric are both "one step with
    probability = target" and always coincide; at K > 1 they differ except at targets 0 and K."""
    groups: list[tuple[str, list[str]]] = []
    for policy in policies:
        for head, same in groups:
            if all(torch.allclose(policy_probs(head, t, max_steps), policy_probs(policy, t, max_steps), atol=1e-9)
                   for t in targets):
                same.append(policy)
                break
        else:
            groups.append((policy, []))
    return [(head, tuple(same)) for head, same in groups]


def curve_label(name: str, method: str, extra: str = "") -> str:
    """`name (method, extra)`, leaving out the method when the model's name already says it (a run directory
    named after its method would otherwise read "ponderlm3 (ponderlm3)")."""
    parts = [p for p in ("" if method in name else method, extra) if p]
    return f"{name} ({', '.join(parts)})" if parts else name


def iso_flops_targets(avg_steps: list[float], max_steps: int, decimals: int = 4) -> list[float]:
    """Distinct measured averages of the learned points, clipped to [0, K], ascending."""
    return sorted({round(min(max(x, 0.0), float(max_steps)), decimals) for x in avg_steps})


def pareto_table(points: list[ParetoPoint]) -> str:
    """One line per point, what produced it and what it measured (the command prints it to stdout)."""
    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    width = max([len("curve"), *(len(p.curve) for p in points)])
    knobs = [k for k in dict.fromkeys(k for p in points for k in p.knobs) if any(p.knobs[k] is not None
                                                                                 for p in points)]
    lines = [f"{'curve':{width}}  {'policy':9}  {''.join(f'{k:>7}  ' for k in knobs)}{'target':>6}  {'steps':>6}  "
             f"{'ppl':>9}  {'FLOPs':>6}"]
    for p in points:
        learned = p.policy == "learned"  # a fixed-pruning control ignores the knob values still set on the config
        values = "".join(f"{num(p.knobs[k] if learned else None, 'g'):>7}  " for k in knobs)
        lines.append(f"{p.curve:{width}}  {p.policy:9}  {values}{num(p.depth_target, '.3f'):>6}  "
                     f"{p.avg_steps:6.3f}  {p.ppl:9.3f}  {num(p.flops_ratio, '.3f'):>6}")
    return "\n".join(lines)


def point_dict(point: ParetoPoint) -> dict[str, Any]:
    """A point as pareto.json holds it: its fields, with the knob values flat after `policy`."""
    out = {}
    for key, value in asdict(point).items():
        out.update(value if key == "knobs" else {key: value})
    return out


def pareto_result(points: list[ParetoPoint], seq_len: int, sequences: int) -> dict[str, Any]:
    return {
        "x": "avg executed additional steps per token", "y": "perplexity",
        "seq_len": seq_len, "sequences": sequences,
        "points": [point_dict(p) for p in points],
        "curves": sorted({p.curve for p in points}),
    }
