import numpy as np
import pytest

from layerpeel.data import (
    BPETokenizer,
    ByteTokenizer,
    SequenceDataset,
    builtin_corpus_files,
    get_tokenizer,
    load_text,
    prepare_tokens,
    read_tokens,
    split_sequences,
    write_tokens,
)
from layerpeel.errors import DataError


def test_byte_tokenizer_round_trip_non_ascii():
    tok = ByteTokenizer()
    text = "Thou art more lovely — and more temperate ✓"
    ids = tok.encode(text)
    assert ids.max() < 256 and len(ids) == len(text.encode())
    assert tok.decode(ids) == text


def test_gpt2_bpe_matches_known_ids():
    tok = BPETokenizer()
    assert tok.vocab_size == 50257
    assert tok.encode("Hello world").tolist() == [15496, 995]
    text = "To be, or not to be: that is the question."
    assert tok.decode(tok.encode(text)) == text


def test_builtin_corpus():
    files = builtin_corpus_files()
    assert files and not any(p.name.endswith("_gut_f.txt") for p in files)
    text = load_text(None)
    assert len(text) > 4_000_000
    assert "To be, or not to be" in text


def test_folder_and_file_sources(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "b" / "c.txt").write_text("second")
    (tmp_path / "skip.md").write_text("no")
    assert load_text(tmp_path) == "first\n\nsecond"
    assert load_text(tmp_path / "a.txt") == "first"


@pytest.mark.parametrize("kind", ["missing", "empty", "emptydir"])
def test_bad_sources_are_data_errors(tmp_path, kind):
    path = tmp_path / "x.txt"
    if kind == "empty":
        path.write_text("   \n")
    if kind == "emptydir":
        path = tmp_path / "d"
        path.mkdir()
    with pytest.raises(DataError):
        load_text(path)


def test_unknown_tokenizer():
    with pytest.raises(DataError, match="bytes"):
        get_tokenizer("sentencepiece")


def test_token_file_round_trip_and_truncation(tmp_path):
    ids = np.arange(1000) % 300
    write_tokens(tmp_path / "t.bin", ids, "bytes")
    assert np.array_equal(read_tokens(tmp_path / "t.bin"), ids)
    data = (tmp_path / "t.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_tokens(tmp_path / "t.bin")


def test_prepare_tokens_caches(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("abc" * 100)
    first = prepare_tokens(src, ByteTokenizer(), tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.bin"))) == 1
    again = prepare_tokens(src, ByteTokenizer(), tmp_path / "cache")
    assert np.array_equal(first, again)


def test_sequence_dataset_windows_and_shift():
    ds = SequenceDataset(np.arange(100), seq_len=9)
    assert len(ds) == 10
    x, y = ds.batch([0, 3])
    assert x.shape == (2, 9) and x[1, 0].item() == 30
    assert (y[:, :-1] == x[:, 1:]).all() and y[1, -1].item() == 39
    with pytest.raises(DataError, match="fewer than one sequence"):
        SequenceDataset(np.arange(5), seq_len=9)


def test_split_is_deterministic_disjoint_and_complete():
    tr, va = split_sequences(1000, 0.1, seed=3)
    tr2, va2 = split_sequences(1000, 0.1, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert len(va) == 100 and not set(tr) & set(va)
    assert sorted(set(tr) | set(va)) == list(range(1000))
    _, va3 = split_sequences(1000, 0.1, seed=4)
    assert not np.array_equal(va, va3)
    with pytest.raises(DataError):
        split_sequences(1)
