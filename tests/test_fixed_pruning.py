"""Fixed-pruning controls (METHODS.md §9): content-independent depths at a requested average."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ponderlm import PonderConfig, PonderForCausalLM
from ponderlm.inference import sequential_logits
from ponderlm.methods.base import padding_positions
from ponderlm.methods.fixed_pruning import STRATA, fixed_depths, hash_uniform, policy_probs, stratified_uniform
from ponderlm.registry import method_names

K = 3
TARGETS = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5)
ROWS, POSITIONS = 10, 1000  # 10k tokens


def policy(name: str, target: float, seed: int = 0) -> SimpleNamespace:
    return SimpleNamespace(depth_policy=name, depth_target=target, max_steps=K, depth_seed=seed)


def grid(rows: int = ROWS, positions: int = POSITIONS) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(rows)[:, None].expand(rows, positions)
    p = torch.arange(positions)[None].expand(rows, positions)
    return r, p


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


# --------------------------------------------------------------------------- 1. the requested average
@pytest.mark.parametrize("name", ["uniform", "geometric"])
def test_probabilities_have_the_requested_mean(name):
    for target in (0.0, *TARGETS, 2.9, 3.0):
        probs = policy_probs(name, target, K)
        assert probs.min() >= 0 and abs(float(probs.sum()) - 1) < 1e-9
        assert abs(float((probs * torch.arange(K + 1)).sum()) - target) < 1e-6, (name, target)


@pytest.mark.parametrize("name", ["uniform", "geometric"])
@pytest.mark.parametrize("seed", [0, 1])
def test_empirical_average_within_2_percent_over_10k_tokens(name, seed):
    rows, positions = grid()
    for target in TARGETS:
        depth = fixed_depths(policy(name, target, seed), rows, positions)
        assert depth.numel() == 10_000 and depth.min() >= 0 and depth.max() <= K
        mean = float(depth.double().mean())
        assert abs(mean / target - 1) < 0.02, (name, target, mean)
        # Can fail: a policy aimed 3% off the target is rejected by the same check.
        off = float(fixed_depths(policy(name, target * 1.03, seed), rows, positions).double().mean())
        assert abs(off / target - 1) > 0.02, (name, target, off)


@pytest.mark.parametrize("target", [0.5, 1.0, 1.5, 2.0])
def test_uniform_and_geometric_differ_in_distribution_not_in_mean(target):
    rows, positions = grid()
    hist = {}
    for name in ("uniform", "geometric"):
        depth = fixed_depths(policy(name, target), rows, positions)
        hist[name] = torch.bincount(depth.flatten(), minlength=K + 1).double() / depth.numel()
        assert abs(float(depth.double().mean()) / target - 1) < 0.02
        assert tv(hist[name], policy_probs(name, target, K)) < 0.02  # each follows its own law
    assert tv(policy_probs("uniform", target, K), policy_probs("geometric", target, K)) > 0.1
    assert tv(hist["uniform"], hist["geometric"]) > 0.1


def test_stratified_draws_are_uniform_and_fill_every_stratum():
    rows, positions = grid(4, 4 * STRATA)
    u = stratified_uniform(3, rows, positions)
    assert u.min() >= 0 and u.max() < 1
    # Every block of STRATA consecutive positions of a row takes each stratum exactly once ...
    strata = (u * STRATA).floor().long().reshape(4, 4, STRATA).sort(-1).values
    assert torch.equal(strata, torch.arange(STRATA).expand(4, 4, STRATA))
    # ... in a row- and block-specific order (not a fixed pattern).
    order = (u * STRATA).floor().long().reshape(16, STRATA)
    assert len({tuple(o.tolist()) for o in order}) == 16
    # Plain independent hashes give no such guarantee: the blocks are unbalanced.
    plain = (hash_uniform(3, rows, positions) * STRATA).floor().long().reshape(16, STRATA).sort(-1).values
    assert not torch.equal(plain, torch.arange(STRATA).expand(16, STRATA))


# --------------------------------------------------------------------------- 2. determinism and batch independence
@pytest.mark.parametrize("name", ["uniform", "geometric"])
def test_deterministic_under_seed_and_independent_of_batch_composition(name):
    rows, positions = grid(6, 300)
    full = fixed_depths(policy(name, 1.2, seed=5), rows, positions)
    assert torch.equal(full, fixed_depths(policy(name, 1.2, seed=5), rows, positions))
    assert (full != fixed_depths(policy(name, 1.2, seed=6), rows, positions)).float().mean() > 0.3
    # A sub-batch, a reordered batch or a single token sees the depths of the same (row, position).
    sub = fixed_depths(policy(name, 1.2, seed=5), rows[3:5, 100:170], positions[3:5, 100:170])
    assert torch.equal(sub, full[3:5, 100:170])
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    shuffled = fixed_depths(policy(name, 1.2, seed=5), rows[:, perm], positions[:, perm])
    assert torch.equal(shuffled, full[:, perm])
    one = fixed_depths(policy(name, 1.2, seed=5), torch.tensor([4]), torch.tensor([123]))
    assert int(one) == int(full[4, 123])
    assert fixed_depths(SimpleNamespace(depth_policy=None), rows, positions) is None


@pytest.mark.parametrize("method", method_names(adaptive=True))  # the controls apply to every adaptive method
@pytest.mark.parametrize("name", ["uniform", "geometric"])
def test_adaptive_methods_use_the_same_depths_in_both_paths(method, name):
    torch.manual_seed(0)
    model = PonderForCausalLM(PonderConfig(
        method=method, max_steps=K, vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, initializer_range=0.2, depth_policy=name, depth_target=1.4, depth_seed=2,
        jacobi_iters_eval=12)).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 61, (3, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: positions are padding-aware, so the real tokens keep their depths
    mask[2, -2:] = 0
    valid = mask.bool()
    rows = torch.arange(3)[:, None].expand_as(ids)
    expected = fixed_depths(model.config, rows, padding_positions(mask)).float() * valid
    parallel = model(ids, attention_mask=mask)
    _, steps = sequential_logits(model, ids, mask)
    assert torch.equal(parallel.executed_steps, expected)
    assert torch.equal(steps * valid, expected)
    # The same row with other batch-mates and without its padding gets the same depths.
    other = torch.randint(0, 61, (3, 5), generator=g)
    other[1] = ids[1, 3:]
    _, alone = sequential_logits(model, other)
    assert torch.equal(alone[1], expected[1, 3:])
