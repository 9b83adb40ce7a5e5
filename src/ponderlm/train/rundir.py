"""The run-directory protocol: create, lock, restart, publish, so no point of a run leaves a stuck directory.

A run directory is recognised by its lock file `.ponderlm.lock` (or, for runs made before it existed, by a
`checkpoints/` directory). The states and what `ponderlm train --out DIR` does with each:

    DIR absent or empty              create it (nearest existing ancestor must be writable)
    DIR holds other files            refuse: never mix a run into (or delete) files ponderlm did not write
    run, another process holds lock  refuse: one `ponderlm train` per run directory (fcntl.flock)
    run, no complete checkpoint      the run died before its first checkpoint: start again from step 0 with a
                                     warning (with or without --resume); its config.yaml, metrics.jsonl, tb/
                                     and half-written checkpoints are removed, anything else is kept
    run with a complete checkpoint   fresh run: refuse (pass --resume); --resume: continue from the newest
                                     valid checkpoint

Checks run twice: once read-only before any work (so bad input writes nothing), and again under the lock
(another process may have started or finished in between). The lock is an OS lock on an open file, so a
killed process (kill -9 included) releases it and a stale lock file never blocks a rerun.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import IO

from ponderlm.errors import PonderError
from ponderlm.train import checkpoint as ckpt

LOCK = ".ponderlm.lock"
FINAL = "final"
# What a run writes before its first checkpoint; removed when such a run starts again from step 0.
_RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "tb", "checkpoints")
_STAGING_PREFIXES = (".tmp-final-", ".old-final-")


def is_run_dir(out: Path) -> bool:
    return (out / LOCK).is_file() or (out / "checkpoints").is_dir()


def _entries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def _holder(out: Path) -> str:
    """Who holds the lock, from what the holder wrote into the lock file (best effort)."""
    try:
        info = json.loads((out / LOCK).read_text())
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _in_use_error(out: Path) -> PonderError:
    return PonderError(f"{out} is in use by another `ponderlm train` ({_holder(out)}); wait for it to finish "
                       "or choose another --out")


def _refuse_if_locked(out: Path) -> None:
    """Try the lock without keeping it (read-only check before any work)."""
    try:
        f = open(out / LOCK, "rb")
    except OSError:
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use_error(out) from None
        fcntl.flock(f, fcntl.LOCK_UN)


def check_out_dir(out: Path, resume: bool) -> None:
    """Refuse unusable run dirs up front, before any work or writes (read-only)."""
    if out.exists() and not out.is_dir():
        raise PonderError(f"--out {out} is a file, not a directory; choose a directory")
    if resume:
        if not out.is_dir():
            raise PonderError(f"--resume: {out} does not exist; start the run without --resume")
        if not is_run_dir(out):
            raise PonderError(f"--resume: {out} is not a ponderlm run directory (no {LOCK} or checkpoints/)")
        _refuse_if_locked(out)
        return
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise PonderError(f"cannot write to output directory {out}: it is not writable")
        if not _entries(out):
            return
        if not is_run_dir(out):
            names = _entries(out)
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise PonderError(f"--out {out} already holds files that are not a ponderlm run ({shown}); choose a "
                              "new or empty directory")
        _refuse_if_locked(out)
        _refuse_finished(out)
        return
    parent = out
    while not parent.exists():  # nearest existing ancestor decides whether we can create `out`
        parent = parent.parent
    if not parent.is_dir():
        raise PonderError(f"cannot write to output directory {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PonderError(f"cannot write to output directory {out}: {parent} is not writable")


def _refuse_finished(out: Path) -> None:
    """A fresh run into a run dir that got as far as a checkpoint (or final/) would destroy that work."""
    found = ckpt.list_checkpoints(out / "checkpoints")
    if found:
        raise PonderError(f"{out} already holds a run (checkpoint at step {found[-1][0]}); pass --resume to "
                          "continue it or choose another --out")
    if (out / FINAL).exists():
        raise PonderError(f"{out} already holds a finished run ({FINAL}/); choose another --out")


class RunLock:
    """An exclusive `fcntl.flock` on `<out>/.ponderlm.lock`, held for the whole run by the main process."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None

    def acquire(self, out: Path) -> None:
        try:
            out.mkdir(parents=True, exist_ok=True)
            f = open(out / LOCK, "a+")  # no truncation: a process that loses the race reads the holder's pid
        except OSError as exc:
            raise PonderError(f"cannot write to output directory {out}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise _in_use_error(out) from None
        f.truncate(0)
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def claim(out: Path, resume: bool) -> bool:
    """Under the lock: re-check `out` and decide. True = resume from a checkpoint; False = start at step 0
    (after clearing what an earlier attempt left before its first checkpoint)."""
    if resume and ckpt.list_checkpoints(out / "checkpoints"):
        clean_staging(out)
        return True
    if not resume:
        _refuse_finished(out)
    if resume or any(n in _RUN_FILES for n in _entries(out)):
        print(f"warning: {out} holds a run that stopped before its first complete checkpoint; starting it "
              "again from step 0", file=sys.stderr)
        for name in _RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    clean_staging(out)
    return False


def clean_staging(out: Path) -> None:
    """Remove half-written `final/` staging dirs left by a killed export."""
    for p in out.iterdir():
        if p.name.startswith(_STAGING_PREFIXES) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def staging_dir(out: Path) -> Path:
    return out / f".tmp-final-{os.getpid()}"


def publish_dir(staging: Path, final: Path) -> None:
    """Move a completed directory into place. With a previous `final` (a resumed run trained further) the old
    one is renamed aside first, so a crash in between leaves the old copy or no `final/`, never a mix; the
    checkpoints can always export it again (`--resume`)."""
    for p in staging.rglob("*"):
        if p.is_file():
            ckpt._fsync(p)
    ckpt._fsync(staging)
    ckpt.crash_point("final")
    old = None
    if final.exists():
        old = final.parent / f".old-final-{os.getpid()}"
        os.replace(final, old)
    os.replace(staging, final)
    ckpt._fsync(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temp file + rename: readers see the old or the new content, never a truncated file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    ckpt._fsync(tmp)
    os.replace(tmp, path)
