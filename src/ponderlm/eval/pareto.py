"""Quality vs compute: sweep each checkpoint's inference knob and its iso-FLOPs fixed-pruning controls.

Per checkpoint:
- adaptive methods trace a curve with the knob their config supports: PonderLM-3 sweeps the router
  bias alpha (and tau if several are given); AdaPonderLM and adaptive latent CoT sweep the halting
  threshold tau;
- fixed-depth methods (vanilla, pause, looped, ponderlm, ponderlm2) give one point;
- fixed-pruning controls (METHODS.md §9) of adaptive methods run the same checkpoint with depths drawn
  independently of content. By default their targets are the average steps measured at the adaptive
  points, so each control point sits at the same compute as a learned point (iso-FLOPs). Policies that
  draw the same depths (uniform and geometric at K = 1) are run once (`identical_policies`).
x = average executed additional steps per token, y = perplexity.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from ponderlm.errors import PonderError
from ponderlm.eval.perplexity import DecodeSettings, collect_token_stats, in_force
from ponderlm.methods.fixed_pruning import policy_probs

DEFAULT_ALPHAS = (-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0)
DEFAULT_TAUS = (1e-4, 0.05, 0.2, 0.4, 0.6, 0.8)
FIXED_POLICIES = ("uniform", "geometric")


@dataclass
class ParetoPoint:
    model: str
    method: str
    curve: str  # legend label: one curve per (model, policy)
    policy: str  # "learned" | "uniform" | "geometric" | "fixed" (a method without a depth choice)
    alpha: float | None
    tau: float | None
    depth_target: float | None
    avg_steps: float
    ppl: float
    loss: float
    flops_ratio: float | None
    tokens: int
    same_as: tuple[str, ...] = ()  # other fixed policies whose depths are these exactly (run once: K = 1)


def adaptive_grid(config, alphas: list[float] | None, taus: list[float] | None) -> list[DecodeSettings]:
    """The learned-depth settings to sweep for this method (empty list: nothing to sweep)."""
    cls = config.method_class
    if cls.uses_alpha:
        return [DecodeSettings(alpha=a, tau=t, depth_policy="learned")
                for t in (taus or [config.tau]) for a in (alphas or DEFAULT_ALPHAS)]
    if cls.adaptive:
        if alphas:
            print(f"note: --alpha ignored for {config.method!r} (no router bias); sweeping tau", file=sys.stderr)
        return [DecodeSettings(tau=t, depth_policy="learned") for t in (taus or DEFAULT_TAUS)]
    return []


def sweep_model(
    model, name: str, batches: list[torch.Tensor], *, alphas: list[float] | None = None,
    taus: list[float] | None = None, fixed: tuple[str, ...] = FIXED_POLICIES, targets: list[float] | None = None,
    jacobi_iters: int | None = None, progress: bool = True,
) -> list[ParetoPoint]:
    """All Pareto points of one checkpoint (see the module docstring)."""
    config, cls = model.config, model.config.method_class
    seq_len = int(batches[0].shape[1])
    K = config.max_steps
    points: list[ParetoPoint] = []

    def run(settings: DecodeSettings, curve: str, policy: str, desc: str) -> ParetoPoint:
        settings = replace(settings, jacobi_iters=jacobi_iters)
        stats = collect_token_stats(model, batches, settings, progress=progress, desc=desc)
        opts, ratio = in_force(model, settings, seq_len, stats.avg_steps)
        alpha, tau = opts["alpha"] if cls.uses_alpha else None, opts["tau"] if cls.adaptive else None
        return ParetoPoint(model=name, method=config.method, curve=curve, policy=policy, alpha=alpha, tau=tau,
                           depth_target=settings.depth_target, avg_steps=stats.avg_steps, ppl=stats.ppl,
                           loss=stats.loss, flops_ratio=ratio, tokens=int(stats.nll.size))

    grid = adaptive_grid(config, alphas, taus)
    if not grid:
        if fixed and targets:
            print(f"note: {name} ({config.method}) has no per-token depth; no fixed-pruning controls", file=sys.stderr)
        return [run(DecodeSettings(), curve_label(name, config.method, f"K={K}"), "fixed", f"{name}")]
    for s in grid:
        label = f"alpha={s.alpha:g}" if cls.uses_alpha else f"tau={s.tau:g}"
        points.append(run(s, curve_label(name, config.method), "learned", f"{name} {label}"))
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
            s = DecodeSettings(depth_policy=policy, depth_target=float(target))
            points.append(replace(run(s, curve, policy, f"{name} {policy} {target:.2f}"), same_as=same))
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
    lines = [f"{'curve':{width}}  {'policy':9}  {'alpha':>6}  {'tau':>7}  {'target':>6}  {'steps':>6}  "
             f"{'ppl':>9}  {'FLOPs':>6}"]
    for p in points:
        learned = p.policy == "learned"  # a fixed-pruning control ignores the alpha / tau still set on the config
        alpha, tau = (p.alpha, p.tau) if learned else (None, None)
        lines.append(f"{p.curve:{width}}  {p.policy:9}  {num(alpha, 'g'):>6}  {num(tau, 'g'):>7}  "
                     f"{num(p.depth_target, '.3f'):>6}  {p.avg_steps:6.3f}  {p.ppl:9.3f}  "
                     f"{num(p.flops_ratio, '.3f'):>6}")
    return "\n".join(lines)


def pareto_result(points: list[ParetoPoint], seq_len: int, sequences: int) -> dict[str, Any]:
    return {
        "x": "avg executed additional steps per token", "y": "perplexity",
        "seq_len": seq_len, "sequences": sequences,
        "points": [asdict(p) for p in points],
        "curves": sorted({p.curve for p in points}),
    }
