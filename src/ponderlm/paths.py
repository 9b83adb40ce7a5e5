"""Output-path checks done before any computing, so an unwritable path fails in a second, not after an hour."""

from __future__ import annotations

import os
from pathlib import Path

from ponderlm.errors import PonderError


def check_writable(path: str | Path, flag: str, *, directory: bool) -> Path:
    """Raise a one-line PonderError unless `path` (a file, or a directory when `directory`) can be written.

    Nothing is created: a missing directory counts as writable when its nearest existing ancestor is a
    writable directory (the command creates it when it has something to write)."""
    path = Path(path).expanduser()
    if path.exists():
        if directory and not path.is_dir():
            raise PonderError(f"{flag} {path} is a file, not a directory; choose a directory")
        if not directory and path.is_dir():
            raise PonderError(f"{flag} {path} is a directory; give a file name")
        if not os.access(path, os.W_OK | (os.X_OK if directory else 0)):
            raise PonderError(f"{flag} {path} is not writable; choose another path")
        return path
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PonderError(f"cannot write {flag} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PonderError(f"cannot write {flag} {path}: {parent} is not writable; choose another path")
    return path


def cache_dir() -> Path:
    """Root of ponderlm's caches: $PONDERLM_CACHE, else $XDG_CACHE_HOME/ponderlm, else ~/.cache/ponderlm."""
    if os.environ.get("PONDERLM_CACHE"):
        return Path(os.environ["PONDERLM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ponderlm"
