"""Tiny models and padded batches shared by the method tests (imported as `helpers`; pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import torch

from ponderlm import PonderConfig, PonderForCausalLM

VOCAB = 61


def tiny_model(method: str = "vanilla", backbone: str = "llama", **overrides) -> PonderForCausalLM:
    """A 2-layer, d=32 model in eval mode, seeded. The init is larger than usual (0.2) so latent feedback,
    masks and gates change the logits visibly and a wrong implementation cannot pass by being near-zero."""
    config = dict(backbone=backbone, method=method, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64, initializer_range=0.2, init="hf")
    config.update(overrides)
    torch.manual_seed(0)
    return PonderForCausalLM(PonderConfig(**config)).eval()


def padded_batch(side: str, length: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of random ids; rows 1 and 2 carry 3 and 1 pads on `side` ("left", "right" or "none")."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, length), generator=g)
    mask = torch.ones_like(ids)
    if side == "left":
        mask[1, :3] = 0
        mask[2, :1] = 0
    elif side == "right":
        mask[1, -3:] = 0
        mask[2, -1:] = 0
    return ids, mask


# ------------------------------------------------------------------ trained checkpoints (evaluation tests)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128)


class single_thread:
    """Tiny models run fastest on one thread, and far faster than two when other jobs share the CPU."""

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.saved)


def tiny_checkpoint(root: Path, method: str = "ponderlm3", train_steps: int = 30) -> Path:
    """Build (once per `root`) a small trained checkpoint + tokenizer directory and return it."""
    from ponderlm.data.corpus import iter_default_corpus
    from ponderlm.data.tokenizer import load_tokenizer

    out = root / f"tiny-{method}"
    if (out / "config.json").is_file():
        return out
    tok = load_tokenizer("default")
    K = 0 if method == "vanilla" else 2
    # router_init="uniform": the router starts undecided, so thresholds give a spread of depths.
    extra = {"router_init": "uniform"} if method == "ponderlm3" else {}
    cfg = PonderConfig(method=method, vocab_size=len(tok), max_steps=K, **TINY, **extra)
    torch.manual_seed(0)
    model = PonderForCausalLM(cfg)
    if train_steps:
        text = "\n\n".join(r["text"] for _, r in zip(range(3), iter_default_corpus("train")))
        ids = torch.tensor(tok(text)["input_ids"][: 32 * 64]).view(-1, 32)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        model.train()
        with single_thread():
            for _ in range(train_steps):
                x = ids[torch.randint(0, ids.shape[0], (8,), generator=gen)]
                loss = model(input_ids=x, labels=x).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def page_text(page: str) -> str:
    """The text shown in a depth-view page: the token spans' contents, unescaped."""
    import html
    import re

    body = page.split('<div class="text">', 1)[1].rsplit("</div>", 1)[0]
    return html.unescape(re.sub(r"<[^>]+>", "", body))


@torch.no_grad()
def split_tau(model, input_ids: torch.Tensor) -> float:
    """A PonderLM-3 threshold that splits these tokens between depth K and less: the median of w_K.

    The tiny router is barely trained, so the default tau (1e-4) would run every token at full depth."""
    model.eval()
    hidden = model.method.jacobi(model.backbone, input_ids, torch.ones_like(input_ids), model.config.jacobi_iters_eval)
    _, w = model.method.route(hidden[:, :, 0])
    return float(w[..., -1].median())


def assert_every_parameter_has_finite_gradient(model: PonderForCausalLM) -> None:
    """After a backward: every parameter got a gradient, finite and not identically zero."""
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------ tiny training runs (trainer tests)
def tiny_run(out: Path, data_dir: Path, *overrides: str):
    """Run config of a 1-layer, d=32 PonderLM-2 (K=1) trained 2 steps on `data_dir`, evaluated and saved at
    the end; `overrides` are CLI-style `key=value` strings. Seconds per run on CPU."""
    from ponderlm.train import from_dict

    base = {
        "name": "tiny",
        "model": {"backbone": "llama", "method": "ponderlm2", "max_steps": 1, "hidden_size": 32,
                  "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64},
        "data": {"data_dir": str(data_dir), "seq_len": 32},
        "train": {"steps": 2, "batch_size": 2, "eval_every": 2, "eval_batches": 2, "out": str(out),
                  "sample_tokens": 0, "device": "cpu"},
        "log": {"tensorboard": False},
    }
    return from_dict(base, list(overrides))


def rehash_manifest(ckpt: Path) -> None:
    """Make a hand-edited checkpoint's manifest match its files again (crafted-checkpoint tests: what resume then
    finds wrong is the content, not a checksum)."""
    import hashlib
    import json

    manifest = json.loads((ckpt / "manifest.json").read_text())
    for name in manifest["files"]:
        blob = (ckpt / name).read_bytes()
        manifest["files"][name] = {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


# Prepended to a script run in a fresh interpreter: there `import ponderlm` raises, so a checkpoint must bring its own
# code (the remote-code bundle) and a snippet must not rely on the package being installed.
NO_PONDERLM = """import importlib.abc, sys


class NoPonderlm(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "ponderlm" or name.startswith("ponderlm."):
            raise ImportError(f"ponderlm is not installed here ({name})")


sys.meta_path.insert(0, NoPonderlm())
"""
