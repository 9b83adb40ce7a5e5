"""Training: run config, the loop, checkpoints and metrics.

    from ponderlm.train import load_config, train
    cfg = load_config(recipe="quickstart", overrides=["train.steps=200"])   # load_config() = the defaults
    result = train(cfg)            # result.out_dir, result.val_ppl, ...; train(cfg, resume=True) continues

Names are imported lazily so `ponderlm --help` does not pay for torch.
"""

from __future__ import annotations

from ponderlm.lazy import lazy_exports

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
__getattr__ = lazy_exports(__name__, _EXPORTS)
