"""Atomic, verifiable training checkpoints for exact resume.

Layout of `<out>/checkpoints/step_000123/`:

    config.json, model.safetensors   `save_pretrained` output: weights, loadable by `from_pretrained`
    optimizer.pt                     `optimizer.state_dict()`: tensors and numbers only, read back with
                                     `torch.load(weights_only=True)` (no arbitrary unpickling)
    rng.safetensors                  torch CPU (and CUDA) generator states
    trainer_state.json               step, tokens seen, data-loader position, python/numpy RNG, config hash
    manifest.json                    size + sha256 of every file above; written last = the "complete" marker

A checkpoint is assembled in a temp dir next to its final place, fsynced, then renamed in one step,
so a crash leaves either the previous checkpoint set or a `.tmp-*` dir that is ignored and cleaned. A write
that fails (a full disk) removes the temp dir and is reported as the OS error in one line.
The LR schedule is a pure function of the step (see `schedule.py`), so it needs no state of its own.

Resume trusts nothing it reads: besides the checksums, every field is checked before anything is loaded into
the live run (trainer state types, RNG state sizes by restoring them into scratch generators, weight names,
shapes and dtypes against the run's model, optimizer state against its parameters). A checkpoint that fails
is treated like a corrupt one: set aside, and resume falls back to the next older one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file
from torch.distributed.checkpoint.api import CheckpointException

from ponderlm.errors import PonderError

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CorruptCheckpoint(PonderError):
    """A checkpoint whose files do not match its manifest (truncated, flipped bits, missing): resume skips it."""


CRASH_ENV = "PONDERLM_CRASH_AT"


def crash_point(name: str) -> None:
    """Test hook: `PONDERLM_CRASH_AT=<name>` SIGKILLs this process here, at a point a timed kill could only
    hit by luck (`checkpoint:<step>` mid-write of that checkpoint, `final` before final/ is published, `run-dir`
    before a new run directory is renamed into place, `write:<file>` before an atomic write's rename)."""
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


def check_rng(tensors: dict[str, torch.Tensor], plain: Any) -> None:
    """Raise ValueError unless every RNG state is one `restore_rng` can apply: each is restored into a scratch
    generator of its kind (the library's own check of sizes, types and ranges). CUDA states are compared with
    this machine's CUDA state size (restore_rng skips them where CUDA is absent)."""
    cpu = tensors.get("torch_cpu")
    if cpu is None:
        raise ValueError("no torch_cpu state")
    if cpu.dtype != torch.uint8 or cpu.shape != torch.get_rng_state().shape:
        raise ValueError(f"torch_cpu state is {cpu.dtype} {list(cpu.shape)}, not uint8 "
                         f"{list(torch.get_rng_state().shape)}")
    torch.Generator().set_state(cpu)
    cuda_shape = torch.cuda.get_rng_state().shape if torch.cuda.is_available() else None
    for name, t in tensors.items():
        if name == "torch_cpu":
            continue
        if not re.fullmatch(r"cuda_\d+", name) or t.dtype != torch.uint8 or t.dim() != 1 \
                or (cuda_shape is not None and t.shape != cuda_shape):
            raise ValueError(f"unexpected RNG state {name} ({t.dtype} {list(t.shape)})")
    if not isinstance(plain, dict):
        raise ValueError("python / numpy RNG states missing")
    try:
        version, mt, gauss = plain["python"]
        if not isinstance(mt, list) or not all(type(x) is int for x in mt):
            raise TypeError("python state words must be integers")
        random.Random().setstate((version, tuple(mt), gauss))
        name, keys, pos, has_gauss, cached = plain["numpy"]
        if not isinstance(keys, list) or not all(type(x) is int for x in keys):
            raise TypeError("numpy state words must be integers")
        if type(pos) is not int or type(has_gauss) is not int or not isinstance(cached, (int, float)):
            raise TypeError("numpy state position / gauss fields have the wrong types")
        np.random.RandomState().set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"python / numpy RNG state: {exc}") from None


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
        if m and not p.is_symlink() and (p / MANIFEST).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


class _RecordingWriter:
    """A file object for `torch.save` that keeps the OSError of a failed write: torch's zip writer replaces it
    with "enforce fail at inline_container.cc ... unexpected pos", losing the errno (ENOSPC) the user needs."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.f.flush()


def torch_save(obj: Any, path: Path) -> None:
    """`torch.save` whose write failures surface as the OSError that caused them."""
    with open(path, "wb") as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def _os_error(exc: BaseException) -> OSError | None:
    """The OS error behind a failed write, from Python, torch (via torch_save) or safetensors ("(os error 28)")."""
    if isinstance(exc, OSError):
        return exc
    failures = getattr(exc, "failures", None)  # torch.distributed.checkpoint's CheckpointException, per rank
    if isinstance(failures, dict):
        for failure in failures.values():
            inner = failure[0] if isinstance(failure, tuple) else failure
            found = _os_error(inner) if isinstance(inner, BaseException) else None
            if found is not None:
                return found
    m = re.search(r"\(os error (\d+)\)", str(exc)) if isinstance(exc, SafetensorError) else None
    return OSError(int(m.group(1)), os.strerror(int(m.group(1)))) if m else None


def _nearly_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path).free < (1 << 20)
    except OSError:
        return False


@contextlib.contextmanager
def writing(what: str, tmp: Path) -> Iterator[None]:
    """Around the writes into the temp dir `tmp`: on any failure `tmp` is removed (a partial checkpoint must not
    keep filling the disk), and an OS error (no space, quota, I/O error) becomes one line naming it."""
    try:
        yield
    except BaseException as exc:
        os_error = _os_error(exc)
        if os_error is None and isinstance(exc, (RuntimeError, CheckpointException)) and _nearly_full(tmp.parent):
            # torch's zip writer inside torch.distributed.checkpoint drops the errno ("unexpected pos"); a
            # filesystem with (almost) no space left, measured before the partial files are removed, is the cause
            os_error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        shutil.rmtree(tmp, ignore_errors=True)
        if os_error is None:
            raise
        raise PonderError(f"cannot write {what}: {os_error.strerror or os_error} (errno {os_error.errno}); the "
                          "partial files were removed; free space and continue with --resume") from None


def save_checkpoint(root: Path, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep_last: int) -> Path:
    """Write `root/step_XXXXXX/` atomically, then delete all but the newest `keep_last` checkpoints."""
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    with writing(f"checkpoint {final}", tmp):
        root.mkdir(parents=True, exist_ok=True)
        if tmp.is_symlink():
            tmp.unlink()
        elif tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_pretrained_quietly(model, tmp)
        torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
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
    if final.is_symlink():
        final.unlink()
    elif final.exists():  # same step saved twice (e.g. a signal right after a periodic save): keep the newer
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(final.parent)
    for _, old in list_checkpoints(final.parent)[:-keep_last]:
        if not old.is_symlink():  # rotation deletes only what it wrote, never a link's target
            shutil.rmtree(old, ignore_errors=True)


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}
_ADAM_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


@dataclass(frozen=True)
class StateTemplate:
    """What a checkpoint of this run must hold, taken from the live model and optimizer before anything is loaded:
    every state-dict tensor's shape and dtype, the names that share one tensor (save_pretrained writes one of each
    tied group), and per optimizer group its parameters' shapes and dtypes and its hyper-parameters."""

    tensors: dict[str, tuple[tuple[int, ...], torch.dtype]]
    tied: tuple[frozenset[str], ...]
    groups: tuple[tuple[tuple[tuple[int, ...], torch.dtype], ...], ...]
    hyper: tuple[dict[str, Any], ...]

    @classmethod
    def of(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> StateTemplate:
        tensors = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict(keep_vars=True).items()}
        names: dict[int, list[str]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), []).append(name)
        groups = tuple(tuple((tuple(q.shape), q.dtype) for q in g["params"]) for g in optimizer.param_groups)
        hyper = tuple({k: v for k, v in g.items() if k != "params"} for g in optimizer.state_dict()["param_groups"])
        return cls(tensors, tuple(frozenset(n) for n in names.values() if len(n) > 1), groups, hyper)


def _inside(name: Any) -> bool:
    """A manifest entry names a file inside its checkpoint: relative, no `..`, nothing odd."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or "\0" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _count(value: Any, low: int = 0) -> int:
    if type(value) is not int or value < low:  # bool is an int subclass; a JSON true is not a count
        raise ValueError(f"{value!r} is not an integer >= {low}")
    return value


def _check_state(state: dict[str, Any], step: int) -> None:
    """Every trainer_state field the trainer reads, with its type and range."""
    if _count(state.get("step"), 1) != step:
        raise ValueError(f"step {state.get('step')!r} is not the directory's step {step}")
    _count(state.get("tokens_seen"))
    loader = state.get("loader")
    if not isinstance(loader, dict):
        raise ValueError("loader is not a mapping")
    for key, low in (("seed", 0), ("epoch", 0), ("position", 0), ("seq_len", 1), ("num_windows", 1)):
        try:
            _count(loader.get(key), low)
        except ValueError as exc:
            raise ValueError(f"loader.{key}: {exc}") from None
    if loader["position"] >= loader["num_windows"]:
        raise ValueError(f"loader.position {loader['position']} is past num_windows {loader['num_windows']}")


def _check_weights(path: Path, template: StateTemplate) -> None:
    """The safetensors header against the run's model: names, shapes, dtypes (read without loading the data)."""
    with safe_open(str(path), framework="pt") as f:
        saved = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    for name in sorted(saved):
        if name not in template.tensors:
            raise ValueError(f"unexpected tensor {name}")
        shape, dtype = template.tensors[name]
        if saved[name][0] != shape:
            raise ValueError(f"{name} is {list(saved[name][0])}, the model needs {list(shape)}")
        if saved[name][1] != _SAFETENSORS_DTYPES.get(dtype):
            raise ValueError(f"{name} is {saved[name][1]}, the model needs {dtype}")
    tied = {n: group for group in template.tied for n in group}
    for name in sorted(template.tensors):
        if name not in saved and not (tied.get(name, frozenset()) & saved.keys()):
            raise ValueError(f"missing tensor {name}")


def _check_optimizer(path: Path, template: StateTemplate) -> None:
    """optimizer.pt against the run's optimizer: groups, parameter indices, hyper-parameter types, state shapes."""
    try:  # mmap: only the structure is looked at here, the tensors are read again when loading
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise PonderError(f"refusing {path}: it holds more than tensors and numbers, so loading it could run "
                          "code") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("param_groups"), list) or len(saved["param_groups"]) != len(template.groups):
        raise ValueError(f"not the state of this run's optimizer ({len(template.groups)} parameter groups)")
    expected: dict[int, tuple[tuple[int, ...], torch.dtype]] = {}
    for i, (group, shapes, hyper) in enumerate(zip(saved["param_groups"], template.groups, template.hyper)):
        first = len(expected)
        if not isinstance(group, dict) or group.get("params") != list(range(first, first + len(shapes))):
            raise ValueError(f"parameter group {i} does not list this model's {len(shapes)} parameters")
        for key, value in hyper.items():  # the saved hyper-parameters replace the live ones on load
            # a key the saved group lacks (written by an older torch) is filled in by the optimizer itself
            if key in group and isinstance(value, (int, float, tuple, list)) and not isinstance(value, bool):
                numbers = value if isinstance(value, (tuple, list)) else (value,)
                got = group.get(key)
                got_numbers = got if isinstance(got, (tuple, list)) else (got,)
                if len(got_numbers) != len(numbers) or not all(
                        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                        for x in got_numbers):
                    raise ValueError(f"parameter group {i}: {key} is {got!r}")
        expected.update({first + j: shape for j, shape in enumerate(shapes)})
    for index, entry in saved["state"].items():
        if index not in expected or not isinstance(entry, dict):
            raise ValueError(f"state for parameter {index!r}, which this model does not have")
        shape, dtype = expected[index]
        for key, value in entry.items():
            if key == "step":
                if not (isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()
                        and math.isfinite(float(value)) and float(value) >= 0):
                    raise ValueError(f"parameter {index}: step is {value!r}")
            elif key in _ADAM_STATE:
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or value.dtype != dtype:
                    got = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
                    raise ValueError(f"parameter {index}: {key} is {got}, the parameter is {dtype} {list(shape)}")
            else:
                raise ValueError(f"parameter {index}: unknown optimizer state {key!r}")


def _check_rng_files(path: Path) -> None:
    """Every RNG file pair of the checkpoint (one for a single-file checkpoint, one per rank for DCP)."""
    if (path / "rng.safetensors").is_file() or not (path / "rng").is_dir():
        state = json.loads((path / STATE).read_text())
        check_rng(load_file(str(path / "rng.safetensors")), state.get("rng"))
        return
    pairs = sorted((path / "rng").glob("rank_*.safetensors"))
    if not pairs:
        raise ValueError("no RNG states")
    for tensors in pairs:
        check_rng(load_file(str(tensors)), json.loads(tensors.with_suffix(".json").read_text()))


def verify_checkpoint(path: Path, identity_hash: str, template: StateTemplate | None = None) -> dict[str, Any]:
    """Check every file against the manifest, the checkpoint's config hash and every field resume reads (with
    `template`, the weights and optimizer state against the run's model); return trainer_state.

    Reads only: a bad checkpoint raises PonderError before anything in the run dir is touched.
    """
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise PonderError(f"checkpoint {path} is incomplete (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())["files"]
        checks = [(name, int(meta["bytes"]), str(meta["sha256"])) for name, meta in manifest.items()]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise CorruptCheckpoint(f"checkpoint {path} has an unreadable {MANIFEST}") from None
    for name, size, digest in checks:
        if not _inside(name):  # never hash (or later load) a file named from outside the checkpoint
            raise CorruptCheckpoint(f"checkpoint {path} has a {MANIFEST} naming {name!r}, outside the checkpoint")
        p = path / name
        if p.is_symlink() or not p.is_file():
            raise CorruptCheckpoint(f"checkpoint {path} is missing {name}" if not p.is_symlink()
                                    else f"checkpoint file {p} is a symbolic link")
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
    if not isinstance(state.get("identity_hash"), str):
        raise CorruptCheckpoint(f"checkpoint {path} has an invalid {STATE} (no config hash)")
    if state["identity_hash"] != identity_hash:
        theirs = state.get("model_config", {})
        raise PonderError(f"checkpoint {path} belongs to a different model/data config "
                          f"(hash {state.get('identity_hash')} != {identity_hash}; its model: {theirs})")
    step = int(_STEP_DIR.match(path.name).group(1)) if _STEP_DIR.match(path.name) else -1
    what = STATE
    try:
        _check_state(state, step)
        what = "RNG state"
        _check_rng_files(path)
        if template is not None and (path / "model.safetensors").is_file():
            what = "model.safetensors"
            _check_weights(path / "model.safetensors", template)
            what = "optimizer.pt"
            _check_optimizer(path / "optimizer.pt", template)
    except (ValueError, TypeError, KeyError, OSError, RuntimeError, SafetensorError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CorruptCheckpoint(f"checkpoint {path} holds an invalid {what} ({detail})") from None
    return state


def newest_valid_checkpoint(root: Path, identity_hash: str,
                            template: StateTemplate | None = None) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint that verifies (`verify_checkpoint`), with its trainer_state. Corrupt or invalid newer
    ones are renamed to `step_XXXXXX.corrupt` (kept for inspection, no longer listed) with a warning; a foreign one
    is an error. Half-written `.tmp-*` checkpoint dirs left by a crash are removed first."""
    for p in root.glob(".tmp-step_*"):
        if not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
    found = list_checkpoints(root)
    if not found:
        raise PonderError(f"--resume: no complete checkpoint in {root}")
    skipped: list[str] = []
    for _, path in reversed(found):
        try:
            state = verify_checkpoint(path, identity_hash, template)
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
    try:
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
    except (RuntimeError, ValueError, KeyError, TypeError, SafetensorError) as exc:  # verify_checkpoint checks all
        # of this first; a checkpoint changed since then (or one verified without a template) still gets one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PonderError(f"cannot resume from {path}: {first}") from None
