"""Atomic, verifiable training checkpoints for exact resume.

Layout of `<out>/checkpoints/step_000123/`:

    config.json, model.safetensors   `save_pretrained` output: weights, loadable by `from_pretrained`
    optimizer.pt                     `optimizer.state_dict()`: tensors and numbers only, read back with
                                     `torch.load(weights_only=True)` (no arbitrary unpickling)
    rng.safetensors                  torch CPU (and CUDA) generator states
    trainer_state.json               step, tokens seen, data-loader position, python/numpy RNG, config hash
    manifest.json                    size + sha256 of every file above; written last = the "complete" marker

A checkpoint is assembled in a temp dir next to its final place, fsynced, then renamed in one step,
so a crash leaves either the previous checkpoint set or a `.tmp-*` dir that is ignored and cleaned.
The LR schedule is a pure function of the step (see `schedule.py`), so it needs no state of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file

from ponderlm.errors import PonderError

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CorruptCheckpoint(PonderError):
    """A checkpoint whose files do not match its manifest (truncated, flipped bits, missing): resume skips it."""


CRASH_ENV = "PONDERLM_CRASH_AT"


def crash_point(name: str) -> None:
    """Test hook: `PONDERLM_CRASH_AT=<name>` SIGKILLs this process here, at a point a timed kill could only
    hit by luck (`checkpoint:<step>` mid-write of that checkpoint, `final` before final/ is published)."""
    if os.environ.get(CRASH_ENV) == name:
        import signal

        print(f"{CRASH_ENV}={name}: killing this process (SIGKILL)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- RNG
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All RNG states: torch ones as tensors (for safetensors), python/numpy ones as JSON-able lists."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = state
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [version, list(mt), gauss], "numpy": [name, keys.tolist(), int(pos), int(has_gauss),
                                                              float(cached)]}
    return tensors, plain


def restore_rng(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[f"cuda_{i}"] for i in range(len(tensors)) if f"cuda_{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, mt, gauss = plain["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------------------------------------- files
def save_pretrained_quietly(model: Any, directory: Path) -> None:
    """`model.save_pretrained` as one safetensors file, without transformers' per-save progress bar."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(directory, max_shard_size="1000GB")  # one file: load_model reads model.safetensors
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a manifest) under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / MANIFEST).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(root: Path, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep_last: int) -> Path:
    """Write `root/step_XXXXXX/` atomically, then delete all but the newest `keep_last` checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_pretrained_quietly(model, tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng_tensors, rng_plain = capture_rng()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    (tmp / STATE).write_text(json.dumps({**state, "step": step, "rng": rng_plain}, indent=1))
    files = sorted(p for p in tmp.iterdir() if p.is_file())
    crash_point(f"checkpoint:{step}")  # every file but the manifest is written
    commit(tmp, final, step, {p.name: describe(p) for p in files}, keep_last)
    return final


def describe(path: Path) -> dict[str, Any]:
    """`path`'s manifest entry (size, sha256), fsynced first: the manifest only vouches for data on disk."""
    _fsync(path)
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def commit(tmp: Path, final: Path, step: int, files: dict[str, Any], keep_last: int) -> None:
    """Write the manifest (`files`: `describe` of every file in `tmp`) last, as the "complete" marker, rename `tmp`
    into place in one step, then delete all but the newest `keep_last` checkpoints."""
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": dict(sorted(files.items()))}, indent=1))
    for p in (tmp / MANIFEST, *(p for p in tmp.iterdir() if p.is_dir()), tmp):
        _fsync(p)
    if final.exists():  # same step saved twice (e.g. a signal right after a periodic save): keep the newer
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(final.parent)
    for _, old in list_checkpoints(final.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def verify_checkpoint(path: Path, identity_hash: str) -> dict[str, Any]:
    """Check every file against the manifest and the checkpoint's config hash; return trainer_state.

    Reads only: a bad checkpoint raises PonderError before anything in the run dir is touched.
    """
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise PonderError(f"checkpoint {path} is incomplete (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())["files"]
        checks = [(path / name, int(meta["bytes"]), str(meta["sha256"])) for name, meta in manifest.items()]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise CorruptCheckpoint(f"checkpoint {path} has an unreadable {MANIFEST}") from None
    for p, size, digest in checks:
        if not p.is_file():
            raise CorruptCheckpoint(f"checkpoint {path} is missing {p.name}")
        if p.stat().st_size != size or _sha256(p) != digest:
            raise CorruptCheckpoint(f"checkpoint file {p} is corrupt or truncated (checksum mismatch)")
    if STATE not in manifest:
        raise CorruptCheckpoint(f"checkpoint {path} has no {STATE} in its {MANIFEST}")
    try:
        state = json.loads((path / STATE).read_text())
        if not isinstance(state, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise CorruptCheckpoint(f"checkpoint {path} has an unreadable {STATE}") from None
    if state.get("identity_hash") != identity_hash:
        theirs = state.get("model_config", {})
        raise PonderError(f"checkpoint {path} belongs to a different model/data config "
                          f"(hash {state.get('identity_hash')} != {identity_hash}; its model: {theirs})")
    return state


def newest_valid_checkpoint(root: Path, identity_hash: str) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint that verifies, with its trainer_state. Corrupt newer ones are renamed to
    `step_XXXXXX.corrupt` (kept for inspection, no longer listed) with a warning; a foreign one is an error.
    Half-written `.tmp-*` checkpoint dirs left by a crash are removed first."""
    for p in root.glob(".tmp-step_*"):
        shutil.rmtree(p, ignore_errors=True)
    found = list_checkpoints(root)
    if not found:
        raise PonderError(f"--resume: no complete checkpoint in {root}")
    skipped: list[str] = []
    for _, path in reversed(found):
        try:
            state = verify_checkpoint(path, identity_hash)
        except CorruptCheckpoint as exc:
            skipped.append(str(exc))
            continue
        for (_, bad), why in zip(reversed(found), skipped):
            aside = bad.with_name(bad.name + ".corrupt")
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(bad, aside)
            print(f"warning: {why}; moved it to {aside.name} and resuming from {path.name}", file=sys.stderr)
        return path, state
    raise PonderError(f"--resume: every checkpoint in {root} is corrupt (newest: {skipped[0]}); delete "
                      f"{root} to start the run again from step 0")


def load_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load weights, optimizer and RNG states from a verified checkpoint into live objects."""
    # load_model understands the de-duplicated (tied) tensors that save_pretrained writes.
    load_model(model, str(path / "model.safetensors"), strict=True)
    try:
        optim_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise PonderError(f"refusing {path / 'optimizer.pt'}: it holds more than tensors and numbers, so "
                          "loading it could run code") from None
    optimizer.load_state_dict(optim_state)
    state = json.loads((path / STATE).read_text())
    restore_rng(load_file(str(path / "rng.safetensors")), state["rng"])
