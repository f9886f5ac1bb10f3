"""Prepared data: token files round-trip, corruption is caught, and training reads them like the text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hwnas.exceptions import DataError
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import DataSpec, PreparedData, TrainConfig, prepare_data, read_checkpoint, train_supernet
from hwnas.supernet._data import encode_corpus, train_tokenizer


@pytest.fixture(scope="module")
def prepared(bible_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    out = tmp_path_factory.mktemp("prepared") / "bible"
    return prepare_data(DataSpec.parse(f"files:{bible_dir}:de-en"), out, vocab_size=300)


def test_prepared_tokens_round_trip(prepared: PreparedData, bible_dir: Path) -> None:
    text = DataSpec.parse(f"files:{bible_dir}:de-en")
    tok = prepared.tokenizer()
    assert tok.to_str() == train_tokenizer(text.load("train"), 300).to_str()  # the same BPE, trained streaming
    for split in ("train", "valid", "test"):
        want = encode_corpus(tok, text.load(split))
        got = prepared.split(split)
        assert len(got) == len(want.source) == prepared.meta["splits"][split]["pairs"]
        for i in (0, 1, len(got) // 2, len(got) - 1):
            assert got.source[i].tolist() == list(want.source[i])
            assert got.target[i].tolist() == list(want.target[i])
        assert [a.tolist() for a in want.lengths()] == [a.tolist() for a in got.lengths()]
    assert prepared.meta["dtype"] == "uint16"
    valid = DataSpec.parse(f"prepared:{prepared.directory}").load("valid")  # the references stay text
    assert valid.source == text.load("valid").source
    with pytest.raises(DataError, match="token ids only"):
        DataSpec.parse(f"prepared:{prepared.directory}").load("train")


def test_training_on_prepared_data_equals_training_on_its_text(prepared: PreparedData, bible_dir: Path,
                                                                tiny_space: SearchSpace, tmp_path: Path) -> None:
    cfg = TrainConfig(steps=3, max_tokens=300, warmup_steps=1, vocab_size=300)
    a = train_supernet(space=tiny_space, data=DataSpec.parse(f"files:{bible_dir}:de-en"), out=tmp_path / "text",
                       config=cfg, progress=False)
    b = train_supernet(space=tiny_space, data=DataSpec.parse(f"prepared:{prepared.directory}"),
                       out=tmp_path / "prepared", config=cfg, progress=False)
    wa, wb = read_checkpoint(a.checkpoint)["model"], read_checkpoint(b.checkpoint)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert read_checkpoint(b.checkpoint)["data"] == f"prepared:{prepared.directory}"


def test_corrupt_or_missing_prepared_data_is_one_error(prepared: PreparedData, tmp_path: Path,
                                                       bible_dir: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(prepared.directory, broken)
    data = bytearray((broken / "train.tgt.bin").read_bytes())
    data[10] ^= 0xFF  # same size, one flipped byte
    (broken / "train.tgt.bin").write_bytes(bytes(data))
    with pytest.raises(DataError, match="train.tgt.bin is corrupt .its checksum"):
        PreparedData.open(broken)
    (broken / "train.src.idx").write_bytes(b"\0" * 8)
    with pytest.raises(DataError, match="train.src.idx is corrupt"):
        PreparedData.open(broken)
    with pytest.raises(DataError, match="does not exist"):
        DataSpec.parse(f"prepared:{tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match="exists already"):
        prepare_data(DataSpec.parse(f"files:{bible_dir}:de-en"), broken, vocab_size=300)
    # a bad corpus leaves no directory behind
    bad = tmp_path / "bad-files"
    bad.mkdir()
    (bad / "train.de").write_text("eins\nzwei\n")
    (bad / "train.en").write_text("one\n")
    with pytest.raises(DataError, match="line counts differ"):
        prepare_data(DataSpec.parse(f"files:{bad}:de-en"), tmp_path / "out", vocab_size=300)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_vocabulary_above_uint16_round_trips(tmp_path: Path) -> None:
    from hwnas.supernet._prepared import _Column, _TokenWriter

    w = _TokenWriter(tmp_path / "x.src.bin", np.dtype(np.uint32))
    w.add([[70_000, 1, 2], [], [99_999]])
    w.close()
    col = _Column(tmp_path / "x.src.bin", np.dtype(np.uint32))
    assert [col[i].tolist() for i in range(len(col))] == [[70_000, 1, 2], [], [99_999]]
