"""Run metrics: one JSON object per line in `<out>/metrics.jsonl`, mirrored to TensorBoard and optionally W&B.

Rows carry a `kind` ("train" or "eval") and the optimizer `step`. On resume, rows after the resumed
step (written by the interrupted run after its last checkpoint) are dropped so the file reads as one
uninterrupted run; TensorBoard gets the same treatment through `purge_step`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from ponderlm.errors import PonderError

METRICS_FILE = "metrics.jsonl"


def _parse_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics file. A last line that does not parse is what a kill or a full disk leaves in the
    middle of a write: it is dropped (with a warning) rather than making the whole file unreadable; a damaged
    line anywhere else is an error naming it."""
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if line.strip()]
    rows = []
    for i, (lineno, line) in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a metrics row")
        except ValueError:
            if i == len(lines) - 1:
                print(f"warning: {path}:{lineno} is a truncated metrics row (the run was killed or the disk filled "
                      "while writing it); ignoring it", file=sys.stderr)
                break
            raise PonderError(f"{path}:{lineno} is not a metrics row (damaged file); remove that line") from None
        rows.append(row)
    return rows


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file, optionally only those of one `kind`."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    return [r for r in _parse_rows(path) if kind is None or r.get("kind") == kind]


def _truncate_after(path: Path, step: int) -> None:
    """Keep the rows up to `step` (a resumed run writes the later ones again); repairs a truncated last row."""
    from ponderlm.train.rundir import write_text_atomic

    if not path.is_file():
        return
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in _parse_rows(path) if row["step"] <= step))


class MetricsLogger:
    """Append-only metrics sink. Construct it on rank 0 only (the distributed seam)."""

    def __init__(self, out_dir: Path, config: dict[str, Any], *, start_step: int = 0, tensorboard: bool = True,
                 wandb: bool = False, wandb_project: str = "ponderlm", run_name: str = "run") -> None:
        self.path = out_dir / METRICS_FILE
        if start_step > 0:
            _truncate_after(self.path, start_step)
        elif self.path.exists():
            self.path.unlink()
        # line-buffered: a killed run keeps its rows; O_NOFOLLOW: never append through a link (rundir.py)
        self._file = open(self.path, "a", buffering=1, opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW, 0o666))
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        self._wandb = None
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                raise PonderError("log.wandb=true needs the wandb package: pip install 'ponderlm[wandb]'") from None
            # A stable id from the run dir lets a resumed run continue the same W&B run.
            run_id = hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:12]
            self._wandb = wandb_lib.init(project=wandb_project, name=run_name, id=run_id, resume="allow",
                                         dir=str(out_dir), config=config)

    def log(self, row: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(row) + "\n")
        except OSError as exc:  # a full disk: one line; a partial row left behind is repaired on --resume
            raise PonderError(f"cannot write {self.path}: {exc.strerror or exc} (errno {exc.errno}); free space "
                              "and continue with --resume") from None
        step, kind = row["step"], row.get("kind", "train")
        scalars = {f"{kind}/{k}": v for k, v in row.items()
                   if k not in ("step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
