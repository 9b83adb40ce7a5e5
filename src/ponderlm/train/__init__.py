"""Training: run config, the loop, checkpoints and metrics.

    from ponderlm.train import load_config, train
    cfg = load_config(recipe="quickstart", overrides=["train.steps=200"])   # load_config() = the defaults
    result = train(cfg)            # result.out_dir, result.val_ppl, ...; train(cfg, resume=True) continues

Names are imported lazily so `ponderlm --help` does not pay for torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "RunConfig": "ponderlm.train.config",
    "load_config": "ponderlm.train.config",
    "from_dict": "ponderlm.train.config",
    "preset_names": "ponderlm.train.config",
    "train": "ponderlm.train.trainer",
    "TrainResult": "ponderlm.train.trainer",
    "read_metrics": "ponderlm.train.logging",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ponderlm.train' has no attribute {name!r}")
