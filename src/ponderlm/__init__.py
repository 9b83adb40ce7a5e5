"""ponderlm: pretraining, evaluation and serving of pondering language models."""

from ponderlm import flops  # compute ledger module: flops.flops(config, seq_len), flops.ComputeLedger
from ponderlm.config import PonderConfig
from ponderlm.modeling import PonderForCausalLM
from ponderlm.version import __version__

__all__ = ["PonderConfig", "PonderForCausalLM", "__version__", "flops"]
