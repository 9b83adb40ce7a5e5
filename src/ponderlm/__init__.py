"""ponderlm: pretraining, evaluation and serving of pondering language models.

The root is light: `import ponderlm` loads neither torch nor transformers, so `ponderlm --help` starts in
well under a second. Its public names are loaded on first use (PEP 562), so
`from ponderlm import PonderConfig, PonderForCausalLM` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ponderlm import registry
from ponderlm.lazy import lazy_exports
from ponderlm.version import __version__

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time `__getattr__` imports these on demand
    from ponderlm import flops
    from ponderlm.config import PonderConfig
    from ponderlm.modeling import PonderForCausalLM

_EXPORTS = {
    "PonderConfig": "ponderlm.config",
    "PonderForCausalLM": "ponderlm.modeling",
    "flops": "",  # compute ledger module: flops.flops(config, seq_len), flops.ComputeLedger
}
__all__ = ["PonderConfig", "PonderForCausalLM", "__version__", "flops"]


def _fill_registry() -> None:
    # The built-in methods register themselves when `ponderlm.methods` is imported. The registry is a leaf
    # module and may not import it, so the package root (top layer) tells it where they live; the registry
    # imports them the first time anyone reads it, not at `import ponderlm` (that would load torch).
    importlib.import_module("ponderlm.methods")
    registry.load_plugins()  # then third-party methods (entry points); the registry rejects a name taken twice


registry.add_loader(_fill_registry)
__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
