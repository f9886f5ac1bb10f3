from __future__ import annotations

from pathlib import Path

import pytest

from hwnas.exceptions import DataError
from hwnas.supernet import DataSpec, load_bible, read_parallel_files, train_tokenizer
from hwnas.supernet._data import collate, encode_corpus, epoch_order, make_batches


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_parallel_files(tmp_path: Path) -> None:
    c = read_parallel_files(_write(tmp_path / "a.de", ["Hallo Welt", " Guten Tag "]),
                            _write(tmp_path / "a.en", ["Hello world", "Good day"]))
    assert c.source == ("Hallo Welt", "Guten Tag") and c.target == ("Hello world", "Good day")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'.*nope.de' does not exist"):
        read_parallel_files(tmp_path / "nope.de", _write(tmp_path / "a.en", ["x"]))


def test_mismatched_line_counts_name_both_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"a\.de' has 2 lines, '.*a\.en' has 1"):
        read_parallel_files(_write(tmp_path / "a.de", ["a", "b"]), _write(tmp_path / "a.en", ["x"]))


def test_empty_line_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="line 2 is empty"):
        read_parallel_files(_write(tmp_path / "a.de", ["a", "  ", "c"]), _write(tmp_path / "a.en", ["x", "y", "z"]))


def test_empty_and_binary_files(tmp_path: Path) -> None:
    (tmp_path / "e.de").write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_parallel_files(tmp_path / "e.de", _write(tmp_path / "a.en", ["x"]))
    (tmp_path / "b.de").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not UTF-8"):
        read_parallel_files(tmp_path / "b.de", _write(tmp_path / "a.en", ["x"]))


def test_bible_splits_by_book_and_language_pair() -> None:
    train, valid, test = (load_bible("de", "en", s) for s in ("train", "valid", "test"))
    assert train.source[0] == "Im Anfang schuf Gott die Himmel und die Erde."
    assert train.target[0] == "In the beginning God created the heaven and the earth."
    assert valid.target[0].startswith("Now it came to pass in the days when the judges ruled")  # Ruth 1:1
    assert test.target[0].startswith("Now it came to pass in the days of Ahasuerus")  # Esther 1:1
    assert len(train) > 29_000 and 300 < len(valid) < 500 and 300 < len(test) < 600
    # Ruth follows Judges in the canon: its first verse must not be in train
    assert valid.source[0] not in set(train.source)
    fr = load_bible("fr", "en.web", "valid")
    assert fr.name == "bible:fr.lsg-en.web:valid" and len(fr) == len(valid)
    assert fr.source[0] != valid.source[0]


def test_bible_bad_inputs() -> None:
    with pytest.raises(DataError, match="unknown Bible translation 'xx'"):
        load_bible("xx", "en")
    with pytest.raises(DataError, match="unknown split"):
        load_bible("de", "en", "dev")


@pytest.mark.parametrize("spec", ["bible", "bible:de", "bible:-en", "nope:de-en", "files:de-en"])
def test_bad_data_specs(spec: str) -> None:
    with pytest.raises(DataError, match="bad data spec"):
        DataSpec.parse(spec)


def test_data_spec_round_trip(tmp_path: Path) -> None:
    spec = DataSpec.parse(f"files:{tmp_path}:de-en")
    assert spec.directory == str(tmp_path) and DataSpec.parse(str(spec)) == spec
    bible = DataSpec.parse("bible:de-en")
    assert str(bible) == "bible:de.elb-en.kjv" and DataSpec.parse(str(bible)) == bible


def test_tokenizer_round_trips_text() -> None:
    corpus = load_bible("de", "en", "valid")
    tok = train_tokenizer(corpus, 800)
    assert tok.get_vocab_size() == 800
    assert [tok.token_to_id(t) for t in ("<pad>", "<s>", "</s>", "<unk>")] == [0, 1, 2, 3]
    for sentence in corpus.target[:20]:
        assert tok.decode(tok.encode(sentence).ids) == sentence


def test_batches_cover_every_pair_once_within_budget() -> None:
    corpus = load_bible("de", "en", "valid")
    data = encode_corpus(train_tokenizer(corpus, 600), corpus, max_len=60)
    assert data.dropped > 0 and len(data.source) + data.dropped == len(corpus)
    batches = make_batches(data, max_tokens=400)
    assert sorted(i for b in batches for i in b) == list(range(len(data.source)))
    for b in batches:
        src, tgt_in, tgt_out = collate(data, b)
        assert src.numel() <= 400 or len(b) == 1
        assert (tgt_in[:, 0] == 1).all() and tgt_in.shape == tgt_out.shape
    assert (epoch_order(10, 0, 1) == epoch_order(10, 0, 1)).all()
    assert not (epoch_order(50, 0, 1) == epoch_order(50, 0, 2)).all()
