"""Offline lm-evaluation-harness tasks built from the bundled corpus's fixed validation split.

The task YAMLs next to this file are templates: `dataset_path: json` with `data_files` pointing at
`@DATA_DIR@`. `build_tasks()` writes the jsonl files and the filled-in YAMLs into a cache directory
(deterministically: same corpus file -> same bytes), and lm-eval is pointed there with
`TaskManager(include_path=...)`. Nothing touches the network.

- ponder_cloze: LAMBADA-style last-word prediction on passages of 40-120 words (acc, perplexity);
- ponder_nextsent: pick the true next sentence among 4 after two context sentences (acc, acc_norm);
- ponder_wikitext_style: rolling log-likelihood of whole documents (word/byte perplexity, bits/byte).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

from ponderlm.errors import PonderError

TEMPLATE_DIR = Path(__file__).resolve().parent
TASK_NAMES = ("ponder_cloze", "ponder_nextsent", "ponder_wikitext_style")
BUILDER_VERSION = 1  # bump when the construction below changes, so caches are rebuilt
SEED = 1234
MAX_ITEMS = 500

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"^[A-Za-z]{3,}$")


def _units(text: str) -> list[list[str]]:
    """Paragraphs as lists of sentences. Lines are units too (verse-per-line texts), spaces normalised."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", text):
        sentences = []
        for line in para.split("\n"):
            line = " ".join(line.split())
            sentences.extend(s for s in _SENTENCE_END.split(line) if s)
        if sentences:
            paragraphs.append(sentences)
    return paragraphs


def cloze_items(docs: list[str]) -> list[dict]:
    """Passages of whole sentences, 40-120 words, ending with an alphabetic word (final punctuation dropped)."""
    items = []
    for doc in docs:
        for para in _units(doc):
            words: list[str] = []
            for sentence in para:
                words.extend(sentence.split(" "))
                if len(words) > 120:
                    break
                if len(words) >= 40:
                    last = words[-1].rstrip(".!?;:,'\")")
                    if _WORD.match(last):
                        items.append({"text": " ".join(words[:-1] + [last])})
                        break
    return items[:MAX_ITEMS]


def nextsent_items(docs: list[str]) -> list[dict]:
    """Two context sentences, the true third one and three distractors from other documents (seeded)."""
    def usable(s: str) -> bool:
        return 5 <= len(s.split(" ")) <= 40

    pool = [(d, s) for d, doc in enumerate(docs) for para in _units(doc) for s in para if usable(s)]
    rng = random.Random(SEED)
    items = []
    for d, doc in enumerate(docs):
        for para in _units(doc):
            if len(para) < 3 or not usable(para[2]):
                continue
            others = [s for dd, s in pool if dd != d]
            if len(others) < 3:
                continue
            choices = [para[2], *rng.sample(others, 3)]
            rng.shuffle(choices)
            items.append({"context": f"{para[0]} {para[1]}", "choices": choices, "label": choices.index(para[2])})
    return items[:MAX_ITEMS]


def document_items(docs: list[str]) -> list[dict]:
    return [{"text": doc} for doc in docs if doc.strip()]


def build_tasks(cache_root: str | Path | None = None) -> Path:
    """Write the offline tasks (jsonl + YAML) into a cache directory and return it (include_path for lm-eval)."""
    from ponderlm.data.corpus import default_corpus_files, iter_default_corpus, sha256_file

    if cache_root is None:
        from ponderlm.paths import cache_dir

        cache_root = cache_dir() / "lm_eval_tasks"
    val_file = default_corpus_files()["val"]
    key = hashlib.sha256(f"{BUILDER_VERSION}:{sha256_file(val_file)}".encode()).hexdigest()[:16]
    out = Path(cache_root) / key
    if (out / "DONE").is_file():
        return out
    if out.exists():  # left over from an interrupted build (no DONE marker): rebuild
        shutil.rmtree(out, ignore_errors=True)
    templates = {name: TEMPLATE_DIR / f"{name}.yaml" for name in TASK_NAMES}
    missing = [str(p) for p in templates.values() if not p.is_file()]
    if missing:
        raise PonderError(f"task templates missing from the installation: {', '.join(missing)}")
    docs = [record["text"] for record in iter_default_corpus("val")]
    data = {"ponder_cloze": cloze_items(docs), "ponder_nextsent": nextsent_items(docs),
            "ponder_wikitext_style": document_items(docs)}
    Path(cache_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_root))
    try:
        for name, items in data.items():
            if not items:
                raise PonderError(f"the bundled validation text yielded no items for {name}")
            with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as f:
                for item in items:
                    f.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
            # The path is written as a JSON string, which is a valid YAML double-quoted scalar.
            text = templates[name].read_text().replace('"@DATA_DIR@/', json.dumps(str(out))[:-1] + "/")
            (tmp / f"{name}.yaml").write_text(text)
        (tmp / "DONE").write_text(json.dumps({name: len(items) for name, items in data.items()}) + "\n")
        try:
            os.replace(tmp, out)  # atomic publish; a concurrent builder that won the race leaves `out` complete
        except OSError:
            if not (out / "DONE").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


__all__ = ["TASK_NAMES", "build_tasks", "cloze_items", "document_items", "nextsent_items"]
