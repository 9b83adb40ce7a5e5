"""The reasoning testbed: `ponderlm data synth` generators, the answer-only loss mask, `ponderlm eval reasoning`.

Answers, depths and split structures are recomputed here from the token *strings* with independent code
(a dictionary walk), never with the generator's own helpers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ponderlm.cli import main
from ponderlm.data.loader import TokenLoader, iter_eval_batches
from ponderlm.data.synth import SynthOptions, generate_split, read_split, synthesize
from ponderlm.errors import PonderError
from ponderlm.eval.reasoning import reasoning_eval, score_answers, spearman

SMALL = dict(train=300, val=40, test=60)


def _words(data_dir: Path, split: str) -> list[list[str]]:
    """Examples of a written set as lists of token strings, decoded through the saved tokenizer's vocab."""
    vocab = json.loads((data_dir / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    inv = {i: w for w, i in vocab.items()}
    tokens = read_split(data_dir, split).tokens
    return [[inv[int(t)] for t in row] for row in tokens]


def _solve_hops(words: list[str]) -> tuple[dict[int, tuple[str, int]], tuple]:
    """{answer position: (answer, hops)} and the permutation, by walking the pair tokens."""
    sep = words.index("|")
    edges = dict(w.split(">") for w in words[:sep])
    out, i = {}, sep + 1
    while i < len(words) and words[i].startswith("h"):
        k, a = int(words[i][1:]), words[i + 1]
        for _ in range(k):
            a = edges[a]
        out[i + 2] = (a, k)
        i += 3
    return out, tuple(sorted(edges.items()))


def _solve_chains(words: list[str]) -> tuple[dict[int, tuple[str, int]], frozenset]:
    sep = words.index("|")
    assign = dict(w.split("=") for w in words[:sep])
    out, i = {}, sep + 1
    while i < len(words) and words[i] == "?":
        v, depth = words[i + 1], 1
        while not assign[v].startswith("c"):
            v, depth = assign[v], depth + 1
        out[i + 2] = (assign[v], depth)
        i += 3
    return out, frozenset(assign.items())


SOLVERS = {"hops": _solve_hops, "chains": _solve_chains}


@pytest.fixture(scope="module")
def hops_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "hops"
    synthesize(SynthOptions(task="hops", **SMALL), out, progress=False)
    return out


@pytest.fixture(scope="module")
def chains_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "chains"
    synthesize(SynthOptions(task="chains", hops=(1, 2, 3), **SMALL), out, progress=False)
    return out


@pytest.mark.parametrize("task", ["hops", "chains"])
def test_answers_difficulty_and_mask_recomputed_independently(task, hops_dir, chains_dir):
    data_dir = hops_dir if task == "hops" else chains_dir
    for split in ("train", "val", "test"):
        data = read_split(data_dir, split)
        for row, words in enumerate(_words(data_dir, split)):
            solved, _ = SOLVERS[task](words)
            assert set(np.flatnonzero(data.mask[row])) == set(solved)  # the mask is exactly the answer tokens
            for pos, (answer, depth) in solved.items():
                assert words[pos] == answer
                assert data.difficulty[row, pos] == depth
            assert (data.difficulty[row][~data.mask[row]] == 0).all()
            assert words[-1] == "<|endoftext|>"  # examples end with eos padding


def test_hops_permutation_is_one_cycle_and_hop_counts_are_exact(hops_dir):
    for words in _words(hops_dir, "test")[:30]:
        edges = dict(w.split(">") for w in words[: words.index("|")])
        start, seen = next(iter(edges)), []
        x = start
        for _ in range(len(edges)):
            seen.append(x)
            x = edges[x]
        assert x == start and len(set(seen)) == len(edges)  # a single n-cycle: p^j(q) != p^k(q) for j < k < n
        qs = [words[i + 1] for i, w in enumerate(words) if w.startswith("h") and w[1:].isdigit()]
        assert len(qs) == len(set(qs))  # distinct query symbols


@pytest.mark.parametrize("task", ["hops", "chains"])
def test_splits_never_share_a_structure(task, hops_dir, chains_dir):
    data_dir = hops_dir if task == "hops" else chains_dir
    structures = {s: {SOLVERS[task](w)[1] for w in _words(data_dir, s)} for s in ("train", "val", "test")}
    assert not structures["train"] & structures["val"]
    assert not structures["train"] & structures["test"]
    assert not structures["val"] & structures["test"]


def test_generators_are_deterministic_by_seed():
    o = SynthOptions(task="hops", seed=3, train=50, val=5, test=5).resolved()
    a, b = generate_split(o, "train", 50), generate_split(o, "train", 50)
    assert [e.tokens for e in a] == [e.tokens for e in b]
    other = generate_split(SynthOptions(task="hops", seed=4, train=50, val=5, test=5).resolved(), "train", 50)
    assert [e.tokens for e in a] != [e.tokens for e in other]


def test_synth_directory_is_byte_identical_for_the_same_seed(tmp_path):
    opts = SynthOptions(task="chains", hops=(1, 2), train=40, val=5, test=5, seed=7)
    synthesize(opts, tmp_path / "a", progress=False)
    synthesize(opts, tmp_path / "b", progress=False)
    for f in sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_file()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_hop_distribution_follows_weights():
    o = SynthOptions(task="hops", hops=(1, 3), hop_weights=(3, 1), train=400, val=5, test=5).resolved()
    hops = [d for e in generate_split(o, "train", 400) for _, d in e.answers]
    assert set(hops) == {1, 3}
    assert 0.70 < hops.count(1) / len(hops) < 0.80


def test_loader_labels_are_answers_only(hops_dir):
    loader = TokenLoader(hops_dir, "train", seq_len=64, batch_size=4, seed=0)  # two examples per window
    for _ in range(3):
        x, y = loader.next_labeled_batch()
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            for j, (t, lab) in enumerate(zip(row_x, row_y)):
                marker = j % 32 >= 2 and row_x[j - 2] in _marker_ids(hops_dir)
                assert (lab != -100) == marker and (lab == -100 or lab == t)
    batches = list(iter_eval_batches(hops_dir, "val", 32, 8, labels=True))
    assert all((yb[xb != yb] == -100).all() for xb, yb in batches)


def _marker_ids(data_dir: Path) -> set[int]:
    vocab = json.loads((data_dir / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    return {i for w, i in vocab.items() if w.startswith("h") and w[1:].isdigit()}


def test_loader_without_mask_is_unchanged(data_dir):
    a = TokenLoader(data_dir, "train", seq_len=16, batch_size=3, seed=1)
    b = TokenLoader(data_dir, "train", seq_len=16, batch_size=3, seed=1)
    for _ in range(3):
        x, y = a.next_labeled_batch()
        assert y is x
        assert torch.equal(x, b.next_batch())
    assert a.state_dict() == b.state_dict()
    assert all(isinstance(x, torch.Tensor) for x in iter_eval_batches(data_dir, "val", 16, 4))


def test_seq_len_must_cut_on_example_boundaries(hops_dir):
    with pytest.raises(PonderError, match="multiple of 32"):
        TokenLoader(hops_dir, "train", seq_len=48, batch_size=2)


def test_spearman_and_per_difficulty_scores_by_hand():
    correct = [1, 0, 1, 1, 0, 0]
    difficulty = [1, 1, 2, 2, 3, 3]
    steps = [0, 1, 1, 2, 3, 3]
    r = score_answers(np.array(correct), np.array(difficulty), np.array(steps), example=np.array([0, 0, 1, 1, 2, 2]))
    assert r["accuracy"] == pytest.approx(0.5)
    assert [(p["difficulty"], p["count"], p["accuracy"], p["avg_steps"]) for p in r["per_difficulty"]] == [
        (1, 2, 0.5, 0.5), (2, 2, 1.0, 1.5), (3, 2, 0.0, 3.0)]
    # average ranks: steps (1, 2.5, 2.5, 4, 5.5, 5.5), difficulty (1.5, 1.5, 3.5, 3.5, 5.5, 5.5)
    assert r["spearman_steps_difficulty"] == pytest.approx(15 / math.sqrt(16.5 * 16))
    assert r["examples_fully_solved"] == pytest.approx(1 / 3)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


class _HopsOracle(torch.nn.Module):
    """A stand-in model: predicts the true next token except after markers h3 / h4 (then a wrong symbol), and
    reports k executed steps at a query symbol preceded by marker hk (0 elsewhere)."""

    def __init__(self, data_dir: Path):
        super().__init__()
        from ponderlm import PonderConfig

        meta = json.loads((data_dir / "meta.json").read_text())
        self.config = PonderConfig(method="ponderlm3", max_steps=4, vocab_size=meta["vocab_size"], hidden_size=8,
                                   num_hidden_layers=1, num_attention_heads=1, max_position_embeddings=64)
        vocab = json.loads((data_dir / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
        self.hops = {vocab[f"h{k}"]: k for k in (1, 2, 3, 4)}
        self.data = read_split(data_dir, "test")
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, decode_options=None):  # the knob values the eval forward gets, unused here
        B, T = input_ids.shape
        rows = [int(np.flatnonzero((self.data.tokens == input_ids[b].numpy()).all(1))[0]) for b in range(B)]
        nxt = torch.from_numpy(self.data.tokens[rows]).roll(-1, dims=1)
        steps = torch.zeros(B, T)
        for b in range(B):
            for t in range(1, T):
                k = self.hops.get(int(input_ids[b, t - 1]), 0)
                steps[b, t] = k
                if k >= 3:
                    nxt[b, t] = (nxt[b, t] + 1) % self.config.vocab_size  # wrong on purpose
        logits = torch.nn.functional.one_hot(nxt, self.config.vocab_size).float()
        return type("Out", (), {"logits": logits, "executed_steps": steps})()


def test_eval_per_difficulty_matches_hand_count(hops_dir):
    model = _HopsOracle(hops_dir)
    r = reasoning_eval(model, hops_dir, batch_size=7, progress=False)
    counts = {k: 0 for k in (1, 2, 3, 4)}
    for words in _words(hops_dir, "test"):
        for _, k in _solve_hops(words)[0].values():
            counts[k] += 1
    assert {p["difficulty"]: (p["count"], p["accuracy"], p["avg_steps"]) for p in r["per_difficulty"]} == {
        1: (counts[1], 1.0, 1.0), 2: (counts[2], 1.0, 2.0), 3: (counts[3], 0.0, 3.0), 4: (counts[4], 0.0, 4.0)}
    assert r["accuracy"] == pytest.approx((counts[1] + counts[2]) / sum(counts.values()))
    assert r["spearman_steps_difficulty"] == pytest.approx(1.0)
    assert r["answers"] == sum(counts.values()) and r["examples"] == 60


def test_train_and_eval_reasoning_end_to_end(tmp_path, capsys, one_thread):
    data = tmp_path / "data"
    assert main(["data", "synth", "--task", "hops", "--symbols", "6", "--queries", "3", "--hops", "1,2,3",
                 "--train", "64", "--val", "16", "--test", "24", "--out", str(data), "--no-progress"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "model.method=ponderlm3", "model.max_steps=2", "model.hidden_size=16",
                 "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.max_position_embeddings=32",
                 "model.router_init=uniform", f"data.data_dir={data}", "data.seq_len=32", "train.steps=3",
                 "train.batch_size=4", "train.eval_every=3", "train.eval_batches=2", "train.sample_tokens=2",
                 "train.device=cpu", "log.tensorboard=false"]) == 0
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["eval", "reasoning", "--model", str(run), "--model", str(run), "--data", str(data), "--json",
                 "--out", str(out), "--no-progress"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["results"]) == 2
    r = payload["results"][0]
    assert r["method"] == "ponderlm3" and r["examples"] == 24 and r["answers"] == 72
    assert [p["difficulty"] for p in r["per_difficulty"]] == [1, 2, 3]
    assert sum(p["count"] for p in r["per_difficulty"]) == 72
    assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["avg_steps"] <= 2.0
    assert json.loads((out / "reasoning.json").read_text()) == payload
    assert (out / "reasoning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the fixed-pruning control runs the same checkpoint at a requested average depth
    assert main(["eval", "reasoning", "--model", str(run), "--data", str(data), "--depth-policy", "uniform",
                 "--depth-target", "1.0", "--json", "--out", str(out), "--no-progress"]) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert fixed["settings"]["depth_policy"] == "uniform" and abs(fixed["avg_steps"] - 1.0) < 0.15


@pytest.mark.parametrize("argv, message", [
    (["data", "synth", "--task", "hops", "--symbols", "4", "--queries", "3", "--hops", "1,4"], "below --symbols"),
    (["data", "synth", "--task", "hops", "--queries", "9"], "cannot exceed --symbols"),
    (["data", "synth", "--task", "hops", "--example-len", "16"], "too short"),
    (["data", "synth", "--task", "chains", "--hops", "0,2"], "distinct positive"),
    (["data", "synth", "--task", "hops", "--hop-weights", "1,2"], "needs 4"),
])
def test_bad_synth_options_are_one_line_errors(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_eval_reasoning_refuses_plain_data(data_dir, checkpoint, tmp_path, capsys):
    assert main(["eval", "reasoning", "--model", str(checkpoint), "--data", str(data_dir), "--out",
                 str(tmp_path), "--no-progress"]) == 2
    assert "not a `ponderlm data synth` directory" in capsys.readouterr().err


def test_trainer_losses_cover_answers_only(hops_dir, one_thread):
    """The training batch's loss and the trainer's validation loss are the mean CE over answer tokens only."""
    import contextlib

    from ponderlm import PonderConfig, PonderForCausalLM
    from ponderlm.train.config import RunConfig
    from ponderlm.train.trainer import evaluate

    torch.manual_seed(0)
    model = PonderForCausalLM(PonderConfig(method="vanilla", vocab_size=79, hidden_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, max_position_embeddings=64))
    x, y = TokenLoader(hops_dir, "train", seq_len=32, batch_size=4).next_labeled_batch()
    logp = torch.log_softmax(model(input_ids=x).logits.float(), -1)
    answers = [(b, j) for b in range(4) for j in range(2, 32) if int(x[b, j - 2]) in _marker_ids(hops_dir)]
    manual = -torch.stack([logp[b, j - 1, x[b, j]] for b, j in answers]).mean()
    assert model(input_ids=x, labels=y).lm_loss.item() == pytest.approx(manual.item(), rel=1e-5)

    cfg = RunConfig()
    cfg.data.seq_len, cfg.train.batch_size, cfg.train.eval_batches = 32, 8, 2
    ev = evaluate(model, hops_dir, cfg, torch.device("cpu"), contextlib.nullcontext)
    data = read_split(hops_dir, "val", max_examples=16)
    logp = torch.log_softmax(model(input_ids=torch.from_numpy(data.tokens)).logits.float(), -1)
    ex, pos = np.nonzero(data.mask)
    manual = -logp[torch.from_numpy(ex), torch.from_numpy(pos - 1), torch.from_numpy(data.tokens[ex, pos])].mean()
    assert ev["val_tokens"] == len(ex) and ev["val_loss"] == pytest.approx(manual.item(), rel=1e-5)
