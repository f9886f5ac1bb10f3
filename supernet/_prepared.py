"""Prepared data: a parallel corpus tokenized once into memory-mapped token files (fairseq's preprocessing).

`prepare_data` streams a corpus (a user's aligned files, or the Bible) through a joint BPE tokenizer into

    DIR/meta.json                 format, languages, origin, sizes and the SHA-256 of every token file
    DIR/tokenizer.json            the joint BPE tokenizer
    DIR/{split}.{src,tgt}.bin     token ids of every sentence, one after another (uint16, or uint32 above 65,535)
    DIR/{split}.{src,tgt}.idx     int64 offsets into .bin, one more than the sentences
    DIR/{valid,test}.{SRC,TGT}    the held-out text itself (references for BLEU)

Reading it (`PreparedData.open`) maps the files and checks their sizes and checksums: training starts in
seconds and holds only the batches it reads, whatever the corpus size. The directory appears whole or not at
all (written aside, then renamed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from hwnas.exceptions import DataError
from hwnas.supernet._data import SPECIAL_TOKENS, SPLITS, DataSpec, ParallelCorpus, train_tokenizer_from

FORMAT = "hwnas-prepared/1"
CHUNK_PAIRS = 20_000  # sentences encoded at once: bounds memory while preparing


def _iter_file_pairs(src: Path, tgt: Path) -> Iterator[tuple[str, str]]:
    """Aligned lines of two files, streamed; the same checks as `read_parallel_files`, one line at a time."""
    try:
        with src.open(encoding="utf-8", newline="\n") as fs, tgt.open(encoding="utf-8", newline="\n") as ft:
            line = 0
            while True:
                s, t = fs.readline(), ft.readline()
                if not s and not t:
                    return
                line += 1
                if not s or not t:
                    short = src if not s else tgt
                    raise DataError(f"line counts differ: '{short}' ends at line {line - 1}")
                for path, text in ((src, s), (tgt, t)):
                    if not text.strip():
                        raise DataError(f"data file '{path}' line {line} is empty (one sentence per line expected)")
                yield s.strip(), t.strip()
    except FileNotFoundError as e:
        raise DataError(f"data file '{e.filename}' does not exist") from e
    except UnicodeDecodeError as e:
        raise DataError(f"data file is not UTF-8 text (byte {e.start}): '{src}' or '{tgt}'") from e


def _pairs(spec: DataSpec, split: str) -> Callable[[], Iterator[tuple[str, str]]]:
    """A re-startable stream of a split's pairs (the tokenizer reads it once, the encoder once more)."""
    if spec.kind == "files":
        d = Path(spec.directory or ".")
        src, tgt = d / f"{split}.{spec.source}", d / f"{split}.{spec.target}"
        return lambda: _iter_file_pairs(src, tgt)
    if spec.kind == "prepared":
        raise DataError(f"'{spec}' is prepared already")
    corpus = spec.load(split)
    return lambda: zip(corpus.source, corpus.target, strict=True)


class _TokenWriter:
    """Appends token-id sentences to a .bin file and keeps their offsets, hashing as it writes."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, dtype
        self.file = path.open("wb")
        self.sha = hashlib.sha256()
        self.offsets = [0]

    def add(self, sentences: list[list[int]]) -> None:
        if not sentences:
            return
        flat = np.fromiter((i for s in sentences for i in s), self.dtype)
        data = flat.tobytes()
        self.file.write(data)
        self.sha.update(data)
        lengths = np.fromiter(map(len, sentences), np.int64, len(sentences))
        self.offsets.extend((self.offsets[-1] + np.cumsum(lengths)).tolist())

    def close(self) -> dict[str, Any]:
        self.file.close()
        idx = np.asarray(self.offsets, np.int64).tobytes()
        idx_path = self.path.with_suffix(".idx")
        idx_path.write_bytes(idx)
        return {self.path.name: {"bytes": self.path.stat().st_size, "sha256": self.sha.hexdigest()},
                idx_path.name: {"bytes": len(idx), "sha256": hashlib.sha256(idx).hexdigest()}}


def prepare_data(spec: DataSpec, out: Path, *, vocab_size: int, splits: tuple[str, ...] = SPLITS,
                 on_progress: Callable[[str, int], None] | None = None) -> PreparedData:
    """Tokenize `spec` into `out` (which must not exist yet); returns it opened.

    The tokenizer is trained on the training split (source and target together, streamed). Splits other
    than train are optional for a files corpus: those missing are left out.
    """
    out = Path(out)
    if out.exists():
        raise DataError(f"'{out}' exists already: prepared data is written to a new directory")
    present = [s for s in splits if s == "train" or spec.kind != "files"
               or (Path(spec.directory or ".") / f"{s}.{spec.source}").exists()]
    streams = {s: _pairs(spec, s) for s in present}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        def sentences() -> Iterator[str]:
            for s, t in streams["train"]():
                yield s
                yield t

        tok = train_tokenizer_from(sentences(), vocab_size)
        (tmp / "tokenizer.json").write_text(tok.to_str())
        dtype = np.dtype(np.uint16 if tok.get_vocab_size() <= 65_536 else np.uint32)
        eos = SPECIAL_TOKENS.index("</s>")
        meta: dict[str, Any] = {"format": FORMAT, "source": spec.source, "target": spec.target, "origin": str(spec),
                                "vocab_size": tok.get_vocab_size(), "dtype": dtype.name, "splits": {}, "files": {}}
        for split in present:
            writers = {side: _TokenWriter(tmp / f"{split}.{side}.bin", dtype) for side in ("src", "tgt")}
            text = None if split == "train" else (
                (tmp / f"{split}.{spec.source}").open("w", encoding="utf-8"),
                (tmp / f"{split}.{spec.target}").open("w", encoding="utf-8"))
            pairs = 0
            chunk: list[tuple[str, str]] = []

            def flush(chunk: list[tuple[str, str]]) -> None:
                writers["src"].add([e.ids + [eos] for e in tok.encode_batch([c[0] for c in chunk])])
                writers["tgt"].add([e.ids for e in tok.encode_batch([c[1] for c in chunk])])

            for pair in streams[split]():
                chunk.append(pair)
                if text is not None:
                    text[0].write(pair[0] + "\n")
                    text[1].write(pair[1] + "\n")
                if len(chunk) == CHUNK_PAIRS:
                    flush(chunk)
                    pairs += len(chunk)
                    chunk = []
                    if on_progress is not None:
                        on_progress(split, pairs)
            flush(chunk)
            pairs += len(chunk)
            if on_progress is not None:
                on_progress(split, pairs)
            if text is not None:
                text[0].close()
                text[1].close()
            if pairs == 0:
                raise DataError(f"the {split} split of '{spec}' is empty")
            meta["splits"][split] = {"pairs": pairs}
            for w in writers.values():
                meta["files"].update(w.close())
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp made it private; the data set is shared like any directory
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PreparedData.open(out, verify=False)  # its checksums were computed from the bytes just written


class _Column:
    """One side of a split: sentence `i` is a view into the memory-mapped token file."""

    def __init__(self, bin_path: Path, dtype: np.dtype):
        self.offsets = np.fromfile(bin_path.with_suffix(".idx"), np.int64)
        self.tokens = (np.memmap(bin_path, dtype, mode="r") if bin_path.stat().st_size
                       else np.zeros(0, dtype))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclasses.dataclass(frozen=True)
class PreparedSplit:
    """Token-id pairs of one split, memory-mapped (the `TokenPairs` that batching reads)."""

    source: _Column
    target: _Column

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        return self.source.lengths(), self.target.lengths()

    def __len__(self) -> int:
        return len(self.source)


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """An opened, verified prepared data directory."""

    directory: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, directory: str | Path, *, verify: bool = True) -> PreparedData:
        d = Path(directory)
        try:
            meta = json.loads((d / "meta.json").read_text())
        except FileNotFoundError:
            raise DataError(f"prepared data '{d}' does not exist (no meta.json; run hwnas data prepare)") from None
        except (OSError, ValueError) as e:
            raise DataError(f"prepared data '{d}': meta.json is unreadable ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"prepared data '{d}': meta.json is not {FORMAT}")
        if verify:
            for name, want in meta["files"].items():
                _verify(d, name, want)
        return cls(d, meta)

    @property
    def source_lang(self) -> str:
        return str(self.meta["source"])

    @property
    def target_lang(self) -> str:
        return str(self.meta["target"])

    @property
    def tokenizer_json(self) -> str:
        return (self.directory / "tokenizer.json").read_text()

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_str(self.tokenizer_json)

    def split(self, split: str) -> PreparedSplit:
        if split not in self.meta["splits"]:
            raise DataError(f"prepared data '{self.directory}' has no {split} split "
                            f"(it has: {', '.join(self.meta['splits'])})")
        dtype = np.dtype(self.meta["dtype"])
        return PreparedSplit(_Column(self.directory / f"{split}.src.bin", dtype),
                             _Column(self.directory / f"{split}.tgt.bin", dtype))

    def text(self, split: str) -> ParallelCorpus:
        from hwnas.supernet._data import read_parallel_files

        if split == "train":
            raise DataError(f"prepared data '{self.directory}' keeps its training split as token ids only")
        if split not in self.meta["splits"]:
            raise DataError(f"prepared data '{self.directory}' has no {split} split")
        corpus = read_parallel_files(self.directory / f"{split}.{self.source_lang}",
                                     self.directory / f"{split}.{self.target_lang}")
        return ParallelCorpus(f"prepared:{self.directory}:{split}", corpus.source, corpus.target)


def _verify(d: Path, name: str, want: dict[str, Any]) -> None:
    path = d / name
    if not path.is_file():
        raise DataError(f"prepared data '{d}': {name} is missing")
    if path.stat().st_size != want["bytes"]:
        raise DataError(f"prepared data '{d}': {name} is corrupt ({path.stat().st_size} bytes, "
                        f"meta.json says {want['bytes']}); prepare it again")
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            sha.update(block)
    if sha.hexdigest() != want["sha256"]:
        raise DataError(f"prepared data '{d}': {name} is corrupt (its checksum differs from meta.json); "
                        f"prepare it again")
