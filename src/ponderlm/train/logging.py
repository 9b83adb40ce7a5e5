"""Run metrics: one JSON object per line in `<out>/metrics.jsonl`, mirrored to TensorBoard and optionally W&B.

Rows carry a `kind` ("train" or "eval") and the optimizer `step`. On resume, rows after the resumed
step (written by the interrupted run after its last checkpoint) are dropped so the file reads as one
uninterrupted run; TensorBoard gets the same treatment through `purge_step`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ponderlm.errors import PonderError

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file, optionally only those of one `kind`."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]


def _truncate_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


class MetricsLogger:
    """Append-only metrics sink. Construct it on rank 0 only (the distributed seam)."""

    def __init__(self, out_dir: Path, config: dict[str, Any], *, start_step: int = 0, tensorboard: bool = True,
                 wandb: bool = False, wandb_project: str = "ponderlm", run_name: str = "run") -> None:
        self.path = out_dir / METRICS_FILE
        if start_step > 0:
            _truncate_after(self.path, start_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", buffering=1)  # line-buffered: a killed run keeps its rows
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
        self._file.write(json.dumps(row) + "\n")
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
