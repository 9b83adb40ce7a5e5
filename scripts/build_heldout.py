"""Rebuild the bundled held-out text (`--data heldout`) from a pinned registry package.

    python scripts/build_heldout.py                  # download, build src/ponderlm/assets/heldout/
    python scripts/build_heldout.py --cache /tmp/c   # keep/reuse the downloaded archive

The held-out text must come from none of the bundled corpus's sources (Brown, Shakespeare, King James
Bible), so that perplexity on it measures transfer, not memorisation of the training distribution.
It is Lewis Carroll's "Alice's Adventures in Wonderland" (1865, public domain), Project Gutenberg's
"Millennium Fulcrum Edition 2.9" as carried by the Canterbury compression corpus (`alice29.txt`), which
the PyPI sdist of `Brotli` ships among its test data (tests/testdata/alice29.txt). The registry is the
only network this project's machines reach, which is why the text is taken from there.

Writes src/ponderlm/assets/heldout/{heldout.jsonl.xz, SOURCES.json, NOTICE}: one
{"id", "source", "text"} record per chapter, in book order. Rebuilding gives byte-identical files.
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
from pathlib import Path

from ponderlm.data.corpus import clean_text

ROOT = Path(__file__).resolve().parent.parent
HELDOUT_OUT = ROOT / "src" / "ponderlm" / "assets" / "heldout"

PACKAGE = ("Brotli", "1.1.0")
ARCHIVE = "Brotli-1.1.0.tar.gz"
MEMBER = "Brotli-1.1.0/tests/testdata/alice29.txt"
# Registry files for a given version never change; a different digest means a different file, so stop.
ARCHIVE_SHA256 = "81de08ac11bcb85841e440c13611c00b67d3bf82698314928d0b676362546724"
MEMBER_SHA256 = "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0"

_CHAPTER_RE = re.compile(r"(?m)^[ \t]*CHAPTER [IVXL]+[ \t]*$")
# Prose paragraphs are indented by at most two spaces; headings, verse and the Mouse's tail (a shaped
# poem) by more. Those keep their line breaks; prose is re-flowed.
_VERSE_INDENT = 3


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(cache: Path) -> Path:
    """Fetch the pinned sdist with pip (skipped when cached) and check its digest."""
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / ARCHIVE
    if not archive.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
             f"{PACKAGE[0]}=={PACKAGE[1]}", "-d", str(cache)],
            check=True,
        )
    digest = sha256(archive.read_bytes())
    if digest != ARCHIVE_SHA256:
        sys.exit(f"{archive.name}: sha256 {digest} does not match the pinned {ARCHIVE_SHA256}")
    return archive


def read_member(archive: Path) -> bytes:
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            sys.exit(f"{archive.name} has no {MEMBER}")
        data = member.read()
    if sha256(data) != MEMBER_SHA256:
        sys.exit(f"{MEMBER}: sha256 {sha256(data)} does not match the pinned {MEMBER_SHA256}")
    return data


def reflow(block: list[str]) -> str:
    """One paragraph of hard-wrapped prose as one line: a word broken at a line-end hyphen ("waistcoat-" /
    "pocket") is re-joined without a space; runs of spaces (two after a full stop in the source) become one."""
    out = ""
    for line in (line.strip() for line in block):
        if not out:
            out = line
        elif re.search(r"[A-Za-z]-$", out) and not out.endswith("--"):
            out += line
        else:
            out += " " + line
    return re.sub(r" {2,}", " ", out)


def format_chapter(text: str) -> str:
    """Paragraphs separated by one blank line; prose re-flowed, indented blocks (verse, headings) line by line."""
    paragraphs = []
    for raw in re.split(r"\n[ \t]*\n", text):
        lines = [line.rstrip() for line in raw.split("\n") if line.strip()]
        if not lines:
            continue
        if all(len(line) - len(line.lstrip(" ")) >= _VERSE_INDENT for line in lines):
            paragraphs.append("\n".join(re.sub(r" {2,}", " ", line.strip()) for line in lines))
        else:
            paragraphs.append(reflow(lines))
    return "\n\n".join(paragraphs)


def alice_documents(raw: bytes) -> list[dict]:
    """One document per chapter; the title page goes with chapter I (as a play's cast list goes with act 1)."""
    text, _ = clean_text(raw.decode("ascii"))
    starts = [m.start() for m in _CHAPTER_RE.finditer(text)]
    if len(starts) != 12:
        sys.exit(f"expected 12 chapters in {MEMBER}, found {len(starts)}")
    bounds = [0] + starts[1:] + [len(text)]
    docs = []
    for i in range(12):
        body = format_chapter(text[bounds[i]: bounds[i + 1]])
        docs.append({"id": f"alice/chapter{i + 1:02d}", "source": "alice", "text": body})
    return docs


NOTICE = """\
ponderlm held-out text: source and licence
==========================================

heldout.jsonl.xz is built by scripts/build_heldout.py from one registry package (exact version
and sha256 digests are in SOURCES.json). It is used only for evaluation (`--data heldout`); it is
from none of the bundled corpus's sources (Brown Corpus, Shakespeare, King James Bible).

Lewis Carroll, "Alice's Adventures in Wonderland" (1865), Project Gutenberg's "Millennium Fulcrum
Edition 2.9", the file alice29.txt of the Canterbury corpus for lossless compression (Ross Arnold
and Tim Bell, 1997), as shipped in the PyPI sdist {name} {version} (tests/testdata/alice29.txt).
The work is in the public domain. The Brotli package, by the Brotli Authors, is MIT licensed.
The file carries no Project Gutenberg header or licence, and no Project Gutenberg trademark is
used here.

Changes: newlines normalised; one document per chapter (the title page goes with chapter I);
prose paragraphs re-flowed onto one line (a word hyphenated at a line end re-joined, runs of
spaces made one); indented blocks (chapter headings, verse, the Mouse's tale) kept line by line
with their indentation removed. The text's own punctuation (`single quotes' opened with a
backtick, -- for dashes, CAPITALS for emphasis) is unchanged.
"""


def build(archive: Path) -> dict:
    raw = read_member(archive)
    docs = alice_documents(raw)
    for d in docs:
        d["text"].encode("ascii")  # the source is ASCII; anything else would mean a parsing error
    HELDOUT_OUT.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    data = lzma.compress(payload, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    (HELDOUT_OUT / "heldout.jsonl.xz").write_bytes(data)
    sources = {
        "packages": [{"source": "alice", "registry": "pypi", "name": PACKAGE[0], "version": PACKAGE[1],
                      "archive": archive.name, "sha256": sha256(archive.read_bytes()),
                      "member": MEMBER, "member_sha256": sha256(raw)}],
        "work": "Lewis Carroll, Alice's Adventures in Wonderland (1865); Project Gutenberg Millennium Fulcrum "
                "Edition 2.9 (Canterbury corpus alice29.txt)",
        "licence": "public domain (package: MIT)",
        "split": "val: every document (the text is for evaluation only)",
        "outputs": {"val": {"file": "heldout.jsonl.xz", "sha256": sha256(data), "compressed_bytes": len(data),
                            "documents": len(docs),
                            "text_bytes": sum(len(d["text"].encode("utf-8")) for d in docs)}},
    }
    (HELDOUT_OUT / "SOURCES.json").write_text(json.dumps(sources, indent=2) + "\n")
    (HELDOUT_OUT / "NOTICE").write_text(NOTICE.format(name=PACKAGE[0], version=PACKAGE[1]))
    return sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, help="directory for the downloaded archive (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = download(args.cache or Path(tmp))
        sources = build(archive)
    out = sources["outputs"]["val"]
    print(f"heldout: {out['documents']} documents, {out['text_bytes']:,} text bytes, "
          f"{out['compressed_bytes']:,} bytes xz -> {HELDOUT_OUT}")


if __name__ == "__main__":
    main()
