"""Reading text into documents: the bundled corpus and user files (text, jsonl, parquet, directories).

Everything here streams: a source yields one document at a time, so corpora larger than RAM work.
A *document* is the unit that gets an end-of-text token and that the validation split is cut by:

- bundled corpus ("default"): one JSON line of `train.jsonl.xz` / `val.jsonl.xz` (fixed split);
- `.txt` / `.md` / other text files: a block of lines separated by one or more blank lines;
- `.jsonl` files: one line, its `text` field (or the `text_column` given);
- `.parquet` files: one row, its `text` column (or the `text_column` given; needs pyarrow);
- a directory written by `datasets`' `save_to_disk` (a Dataset or a DatasetDict): one row of its text column;
- directories: the supported files inside, recursively, in sorted path order;
- a Hugging Face `datasets` name (when online): one row of its `text` column.

Files may be compressed (`.gz`, `.xz`). Text is cleaned the same way everywhere (`clean_text`).
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import lzma
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ponderlm.errors import PonderError

CORPUS_DIR = Path(__file__).resolve().parent.parent / "assets" / "corpus"
DEFAULT_NAME = "default"
# A text from none of the corpus's sources, for evaluation only (`--data heldout`; docs/DATA.md).
HELDOUT_DIR = Path(__file__).resolve().parent.parent / "assets" / "heldout"
HELDOUT_NAME = "heldout"

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}
COMPRESSION_SUFFIXES = {".gz", ".xz"}
DOCUMENT_SUFFIXES = TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES

# Control characters we drop: C0 except tab and newline (\r is normalised before), DEL, C1, and the BOM.
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")
# More than this fraction of invalid UTF-8 or control characters and a file is refused as binary.
BINARY_THRESHOLD = 0.01
_BLOCK = 1 << 20


def clean_text(text: str) -> tuple[str, int]:
    """Normalise newlines to \\n and drop control characters. Returns (text, number of characters dropped)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    cleaned, dropped = _CONTROL_RE.subn("", text)
    return cleaned, dropped


@dataclass
class FileStats:
    """What reading one file found; collected on the counting pass and written into meta.json."""

    path: str
    bytes: int = 0
    sha256: str = ""
    documents: int = 0
    invalid_utf8: int = 0  # replacement characters inserted for undecodable bytes
    control_chars: int = 0  # control characters dropped by clean_text
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("path", "bytes", "sha256", "documents", "invalid_utf8", "control_chars")}


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".xz":
        return lzma.open(path, "rb")
    return open(path, "rb")


def _base_suffix(path: Path) -> str:
    """`data.jsonl.xz` -> `.jsonl`; `notes.txt` -> `.txt`."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _check_binary(stats: FileStats) -> None:
    bad = stats.invalid_utf8 + stats.control_chars
    if stats.bytes and bad > BINARY_THRESHOLD * stats.bytes:
        raise PonderError(
            f"{stats.path} looks binary, not UTF-8 text: {bad} of {stats.bytes:,} bytes "
            f"({100 * bad / stats.bytes:.1f}%) are invalid UTF-8 or control characters (limit 1%); give text, "
            "jsonl or parquet files"
        )


def _iter_lines(path: Path, stats: FileStats | None) -> Iterator[str]:
    """Decoded lines without their line ending. Undecodable bytes become U+FFFD (counted in stats)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    rest = ""
    with _open_binary(path) as f:
        while True:
            block = f.read(_BLOCK)
            final = not block
            text = decoder.decode(block, final=final)
            if stats is not None:
                stats.bytes += len(block)
                stats._hash.update(block)
                # U+FFFD that was already in the file is text, not an error.
                stats.invalid_utf8 += max(0, text.count("\ufffd") - block.count(b"\xef\xbf\xbd"))
                stats.control_chars += len(_CONTROL_RE.findall(text))
                # Check early so a large binary file without newlines is refused before it fills memory.
                if stats.bytes >= _BLOCK or final:
                    _check_binary(stats)
            text = rest + text
            lines = text.split("\n")
            rest = lines.pop()
            for line in lines:
                yield line.removesuffix("\r")
            if final:
                break
    if rest:
        yield rest


def iter_file_documents(path: Path, stats: FileStats | None = None, text_column: str = "text") -> Iterator[str]:
    """Yield the cleaned, non-empty documents of one file (see the module docstring for the rules)."""
    kind = _base_suffix(path)
    if kind in PARQUET_SUFFIXES:
        docs: Iterable[str] = _iter_parquet(path, stats, text_column)
    elif kind in JSONL_SUFFIXES:
        docs = _iter_jsonl(path, stats, text_column)
    else:
        docs = _iter_paragraphs(path, stats)
    for text in docs:
        text, _ = clean_text(text)
        if text.strip():
            if stats is not None:
                stats.documents += 1
            yield text
    if stats is not None:
        stats.sha256 = stats._hash.hexdigest()


def _iter_paragraphs(path: Path, stats: FileStats | None) -> Iterator[str]:
    block: list[str] = []
    for line in _iter_lines(path, stats):
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _iter_jsonl(path: Path, stats: FileStats | None, text_column: str = "text") -> Iterator[str]:
    for lineno, line in enumerate(_iter_lines(path, stats), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PonderError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_column), str):
            fields = (f" (fields: {', '.join(record)}; choose one with --text-column)"
                      if isinstance(record, dict) else "")
            raise PonderError(f"{path}:{lineno}: expected a JSON object with a string field {text_column!r}{fields}")
        yield record[text_column]


def _iter_parquet(path: Path, stats: FileStats | None, text_column: str = "text") -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PonderError(f"reading {path} needs pyarrow: pip install 'ponderlm[data]'") from None
    if stats is not None:
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                stats.bytes += len(block)
                stats._hash.update(block)
    pf = pq.ParquetFile(path)
    if text_column not in pf.schema_arrow.names:
        raise PonderError(f"{path}: no {text_column!r} column (columns: {', '.join(pf.schema_arrow.names)}; "
                          "choose one with --text-column)")
    for batch in pf.iter_batches(columns=[text_column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text


def list_files(root: Path) -> list[Path]:
    """Supported files under a directory, sorted by relative path so the order never depends on the filesystem."""
    files = [p for p in root.rglob("*")
             if p.is_file() and not p.name.startswith(".") and _base_suffix(p) in DOCUMENT_SUFFIXES]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


# --- the bundled corpus ---------------------------------------------------------------------------


def default_corpus_files() -> dict[str, Path]:
    files = {split: CORPUS_DIR / f"{split}.jsonl.xz" for split in ("train", "val")}
    for path in files.values():
        if not path.is_file():
            raise PonderError(f"bundled corpus file missing: {path} (rebuild with scripts/build_corpus.py)")
    return files


def iter_default_corpus(split: str = "train") -> Iterator[dict]:
    """Records {"id", "source", "text"} of the bundled corpus, in file order."""
    if split not in ("train", "val"):
        raise PonderError(f"bundled corpus split must be 'train' or 'val', got {split!r}")
    with lzma.open(default_corpus_files()[split], "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def heldout_file() -> Path:
    path = HELDOUT_DIR / "heldout.jsonl.xz"
    if not path.is_file():
        raise PonderError(f"bundled held-out text missing: {path} (rebuild with scripts/build_heldout.py)")
    return path


def iter_heldout() -> Iterator[dict]:
    """Records {"id", "source", "text"} of the bundled held-out text (one per chapter, in book order).

    It is scored whole: it has no train split, because nothing may ever be trained on it."""
    with lzma.open(heldout_file(), "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


# --- inputs: what the user passed, resolved into sources of documents -------------------------------

_DATASET_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


@dataclass
class Source:
    """One input: the bundled corpus, local files, in-memory texts, or a `datasets` dataset."""

    spec: str
    kind: str  # "default" | "files" | "texts" | "dataset"
    files: list[Path] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    dataset: object = None  # datasets.DatasetDict (or {"train": Dataset}), set for kind == "dataset"
    fixed_split: bool = False  # documents come with their own train/val split
    text_column: str = "text"  # the field / column holding the text (jsonl, parquet, datasets)

    def documents(self, stats: list[FileStats] | None = None) -> Iterator[tuple[str | None, str]]:
        """Yield (split, text); split is None when the source has no split of its own.

        When `stats` is a list, one FileStats per file read is appended to it (the counting pass)."""
        if self.kind == "default":
            for split in ("train", "val"):
                for record in iter_default_corpus(split):
                    yield split, record["text"]
        elif self.kind == "files":
            for path in self.files:
                file_stats = None
                if stats is not None:
                    file_stats = FileStats(path=str(path))
                    stats.append(file_stats)
                for text in iter_file_documents(path, file_stats, self.text_column):
                    yield None, text
        elif self.kind == "texts":
            for text in self.texts:
                text, _ = clean_text(text)
                if text.strip():
                    yield None, text
        else:
            yield from self._dataset_documents()

    def _dataset_documents(self) -> Iterator[tuple[str | None, str]]:
        splits = [("train", "train"), ("validation", "val")] if self.fixed_split else [("train", None)]
        for hf_split, split in splits:
            ds = self.dataset[hf_split]
            column = self.text_column
            if column not in ds.column_names:
                raise PonderError(f"dataset {self.spec}: no {column!r} column (columns: {', '.join(ds.column_names)};"
                                  " choose one with --text-column)")
            for start in range(0, len(ds), 1024):
                for text in ds[start : start + 1024][column]:
                    text, _ = clean_text(text or "")
                    if text.strip():
                        yield split, text

    def describe(self) -> dict:
        info: dict = {"input": self.spec, "kind": self.kind}
        if self.kind == "default":
            files = default_corpus_files()
            info["files"] = {split: {"path": p.name, "sha256": sha256_file(p)} for split, p in files.items()}
        elif self.kind == "texts":
            info["documents"] = len(self.texts)
        elif self.kind == "dataset":
            info["fingerprints"] = {name: getattr(ds, "_fingerprint", None) for name, ds in self.dataset.items()}
        if self.text_column != "text":  # part of what made the tokens (meta.json, data cache identity)
            info["text_column"] = self.text_column
        return info


def resolve_inputs(inputs: str | Path | Iterable[str | Path], allow_texts: bool = False,
                   text_column: str = "text") -> list[Source]:
    """Turn user inputs into sources, failing early with a clear message for anything missing.

    An input is `"default"` (the bundled corpus), an existing file or directory, or else a Hugging Face
    dataset name (`name` or `name:config`, loaded with `datasets` when installed and online). With
    `allow_texts`, a string containing whitespace that is not an existing path is taken as raw text. A
    directory written by `datasets`' `save_to_disk` is loaded as that dataset. `text_column` names the
    field / column holding the text in jsonl, parquet and dataset inputs."""
    if not text_column:
        raise PonderError("--text-column must not be empty")
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    sources, texts = [], []
    for item in inputs:
        spec = str(item)
        path = Path(spec).expanduser()
        if isinstance(item, str) and spec == DEFAULT_NAME:
            sources.append(Source(spec, "default", fixed_split=True))
        elif path.is_dir() and _is_saved_dataset(path):
            sources.append(_load_dataset(spec, saved=path))
        elif path.is_dir():
            files = list_files(path)
            if not files:
                raise PonderError(f"no .txt/.md/.jsonl/.parquet files found in directory {spec}")
            sources.append(Source(spec, "files", files=files))
        elif path.is_file():
            sources.append(Source(spec, "files", files=[path]))
        elif allow_texts and isinstance(item, str) and any(c.isspace() for c in spec):
            texts.append(spec)
        elif isinstance(item, str) and _DATASET_RE.match(spec) and not _looks_like_path(spec):
            sources.append(_load_dataset(spec))
        else:
            raise PonderError(f"input not found: {spec} (no such file or directory)")
    if texts:
        sources.append(Source(f"<{len(texts)} texts>", "texts", texts=texts))
    if not sources:
        raise PonderError("no inputs given")
    for source in sources:
        source.text_column = text_column
    return sources


def _is_saved_dataset(path: Path) -> bool:
    """A `save_to_disk` directory: a DatasetDict (dataset_dict.json) or a Dataset (state.json + dataset_info.json)."""
    return (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file()
                                                      and (path / "dataset_info.json").is_file())


def _looks_like_path(spec: str) -> bool:
    known = DOCUMENT_SUFFIXES | COMPRESSION_SUFFIXES
    return spec.startswith((".", "~")) or Path(spec).suffix.lower() in known or spec.count("/") > 1


def _load_dataset(spec: str, saved: Path | None = None) -> Source:
    """A Hugging Face `datasets` input: the `save_to_disk` directory `saved`, or else the dataset `name[:config]`."""
    what = f"the saved dataset {spec}" if saved else f"dataset {spec!r}"
    try:
        import datasets
    except ImportError:
        reading = (f"{spec} is a saved `datasets` directory; reading it" if saved else
                   f"input not found: {spec} is not a file or directory, and loading it as a Hugging Face dataset")
        raise PonderError(f"{reading} needs the datasets package: pip install 'ponderlm[data]'") from None
    name, _, config = spec.partition(":")
    try:
        ds = datasets.load_from_disk(str(saved)) if saved else datasets.load_dataset(name, config or None)
    except Exception as exc:  # corrupt, partial or incompatible directory; offline, unknown or gated name: user-facing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PonderError(f"could not load {what}{'' if saved else ' (not a local path; offline?)'}: {first}") from None
    if isinstance(ds, datasets.Dataset):  # one split: documents are held out by val_fraction like files
        ds = {"train": ds}
    if "train" not in ds:
        raise PonderError(f"{what} has no 'train' split (splits: {', '.join(ds)})")
    return Source(spec, "dataset", dataset=ds, fixed_split="validation" in ds)
