"""ponderlm: pretraining, evaluation and serving of pondering language models."""

from ponderlm.config import PonderConfig

__version__ = "0.1.0"
__all__ = ["PonderConfig", "__version__"]
