"""Data: the bundled corpus, tokenizers, token shards and the training loader.

Imports are lazy so `import ponderlm.data` stays light (torch loads only with the loader).
"""

from __future__ import annotations

from ponderlm.lazy import lazy_exports

_EXPORTS = {
    "train_tokenizer": "ponderlm.data.tokenizer",
    "load_tokenizer": "ponderlm.data.tokenizer",
    "DEFAULT_TOKENIZER_DIR": "ponderlm.data.tokenizer",
    "prepare_data": "ponderlm.data.prepare",
    "TokenLoader": "ponderlm.data.loader",
    "iter_eval_batches": "ponderlm.data.loader",
    "unigram_perplexity": "ponderlm.data.loader",
    "read_meta": "ponderlm.data.loader",
    "iter_default_corpus": "ponderlm.data.corpus",
    "CORPUS_DIR": "ponderlm.data.corpus",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
