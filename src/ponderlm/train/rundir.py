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

A new run directory appears complete: the lock and `config.yaml` are written into a staging directory beside
it that is renamed into place, so a kill at any moment leaves either no directory or one that a rerun and
`--resume` both restart. A restarted run rewrites `config.yaml` before it removes anything, so the lock never
exists without it.

Nothing is written or deleted through a symbolic link: a run directory holding a link (the lock, config.yaml,
metrics.jsonl, checkpoints/, tb/, final/ or anything inside them) is refused with one line naming it, since
following it would write or delete files outside the directory. Files are created with `O_NOFOLLOW` /
`O_EXCL` as well, for a link planted after the check.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ponderlm.errors import PonderError
from ponderlm.train import checkpoint as ckpt

LOCK = ".ponderlm.lock"
FINAL = "final"
# What a run writes before its first checkpoint; removed when such a run starts again from step 0.
_RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "tb", "checkpoints")
_STAGING_PREFIXES = (".tmp-final-", ".old-final-")
# Directories a run owns: links are looked for inside them too (any other directory is the user's, left alone).
_RUN_DIRS = ("checkpoints", "tb", FINAL)
# Temp files of atomic writes (write_text_atomic) that a kill can leave behind.
_TMP_FILES = tuple(f".{name}.tmp-" for name in ("config.yaml", "summary.json", "metrics.jsonl"))


def find_link(out: Path) -> str | None:
    """The first symbolic link among `out`'s entries and inside the directories a run owns, relative to `out`."""
    for entry in sorted(out.iterdir()):
        if entry.is_symlink():
            return entry.name
        if entry.is_dir() and (entry.name in _RUN_DIRS or entry.name.startswith(_STAGING_PREFIXES)):
            for root, dirs, files in os.walk(entry):  # os.walk does not descend into linked directories
                for name in sorted(dirs + files):
                    if os.path.islink(os.path.join(root, name)):
                        return os.path.relpath(os.path.join(root, name), out)
    return None


def refuse_links(out: Path) -> None:
    """One line naming the first link: writing or deleting through it would reach outside the run directory."""
    link = find_link(out)
    if link is not None:
        raise PonderError(f"run directory {out} holds a symbolic link ({link} -> {os.readlink(out / link)}); "
                          "ponderlm never writes or deletes through links: remove it or choose another --out")


def _open_nofollow(path: Path, flags: int, mode: int = 0o666) -> int:
    """`os.open` that never follows a link at `path` (ELOOP becomes a one-line error naming it)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PonderError(f"{path} is a symbolic link; ponderlm never writes through links: remove it") from None
        raise


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
        f = os.fdopen(_open_nofollow(out / LOCK, os.O_RDONLY), "rb")
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
    if out.is_dir():
        refuse_links(out)
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

    def acquire(self, out: Path, write_config: Callable[[Path], None]) -> None:
        """Lock `out`. A new (or empty) `out` is created with its lock and `write_config(dir)`'s config.yaml in one
        rename, so no kill leaves a locked directory without the config a `--resume` needs."""
        if not (out.is_dir() and any(out.iterdir())):
            try:
                if self._create(out, write_config):
                    return
            except OSError as exc:
                # An empty --out made for us in a directory we may not write (a scheduler's scratch dir): the
                # stage cannot go beside it, so lock inside it; claim() writes config.yaml right after the lock.
                if not (out.is_dir() and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
                    raise PonderError(f"cannot write to output directory {out}: {exc.strerror or exc}") from None
        try:
            f = os.fdopen(_open_nofollow(out / LOCK, os.O_RDWR | os.O_CREAT), "r+")
        except OSError as exc:  # no truncation: a process that loses the race reads the holder's pid
            raise PonderError(f"cannot write to output directory {out}: {exc.strerror or exc}") from None
        self._lock(out, f)

    def _lock(self, out: Path, f: IO[str]) -> None:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise _in_use_error(out) from None
        f.truncate(0)
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        f.flush()
        self._file = f

    def _create(self, out: Path, write_config: Callable[[Path], None]) -> bool:
        """Stage lock + config beside `out` and rename the stage onto it; False if another run got there first."""
        target = out.resolve()  # a linked --out: stage beside the directory it names, and keep the link
        target.parent.mkdir(parents=True, exist_ok=True)
        _clean_dead_stages(target)
        stage = target.parent / f".{target.name}.tmp-{os.getpid()}"
        if stage.is_dir() and not stage.is_symlink():  # left by an earlier process with this pid
            shutil.rmtree(stage)
        stage.mkdir()
        f = os.fdopen(_open_nofollow(stage / LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL), "r+")
        try:
            self._lock(out, f)
            write_config(stage)
            ckpt._fsync(stage)
            ckpt.crash_point("run-dir")  # test hook: killed with the staged directory complete, not yet renamed
            os.rename(stage, target)  # onto a missing or empty directory; fails if another run filled it
        except OSError as exc:
            self.release()
            shutil.rmtree(stage, ignore_errors=True)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            raise
        except BaseException:
            self.release()
            shutil.rmtree(stage, ignore_errors=True)
            raise
        ckpt._fsync(target.parent)
        return True

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _clean_dead_stages(target: Path) -> None:
    """Remove staging directories of `target` left by a process killed while creating it (their lock is free)."""
    for stage in target.parent.glob(f".{target.name}.tmp-*"):
        if stage.is_symlink() or not stage.is_dir():
            continue
        try:
            fd = _open_nofollow(stage / LOCK, os.O_RDONLY)
        except (OSError, PonderError):
            fd = None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its creator is alive
        finally:
            if fd is not None:
                os.close(fd)
        shutil.rmtree(stage, ignore_errors=True)


def claim(out: Path, resume: bool, write_config: Callable[[Path], None]) -> bool:
    """Under the lock: re-check `out` and decide. True = resume from a checkpoint; False = start at step 0
    (after clearing what an earlier attempt left before its first checkpoint). Starting at step 0 writes this
    run's config.yaml (`write_config(out)`) first, so the directory stays resumable at every moment."""
    refuse_links(out)
    if resume and ckpt.list_checkpoints(out / "checkpoints"):
        clean_staging(out)
        return True
    if not resume:
        _refuse_finished(out)
    # config.yaml alone is how a new run directory appears (RunLock.acquire), not the sign of an earlier attempt
    if resume or any(n in _RUN_FILES and n != "config.yaml" for n in _entries(out)):
        print(f"warning: {out} holds a run that stopped before its first complete checkpoint; starting it "
              "again from step 0", file=sys.stderr)
    write_config(out)
    for name in _RUN_FILES:
        path = out / name
        if name == "config.yaml":
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    clean_staging(out)
    return False


def clean_staging(out: Path) -> None:
    """Remove half-written `final/` staging dirs and atomic-write temp files left by a killed process."""
    for p in out.iterdir():
        if p.is_symlink():
            continue
        if p.name.startswith(_STAGING_PREFIXES) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and p.name.startswith(_TMP_FILES):
            p.unlink()


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
    """Write via a temp file + rename: readers see the old or the new content, never a truncated file. The temp
    file is created exclusively and without following links, and the rename replaces a link at `path` itself,
    so the write never lands outside `path`'s directory. A failed write (a full disk) removes the temp file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():  # left by a killed process with this pid (unlink never follows a link)
        tmp.unlink()
    try:
        with os.fdopen(_open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        ckpt.crash_point(f"write:{path.name}")  # test hook: killed with the temp file written, not yet renamed
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
