"""ponderlm: pretraining, evaluation and serving of pondering language models."""

from ponderlm.config import PonderConfig
from ponderlm.modeling import PonderForCausalLM

__version__ = "0.1.0"
__all__ = ["PonderConfig", "PonderForCausalLM", "__version__"]
