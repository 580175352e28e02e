"""Corpora, tokenizers, token files, fixed-length windows and the train / validation split."""

from layerpeel.data.corpus import builtin_corpus, builtin_corpus_files, load_text
from layerpeel.data.sequences import SequenceDataset, sequence_hash, split_sequences
from layerpeel.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    get_tokenizer,
    load_tokenizer,
    save_tokenizer,
)
from layerpeel.data.tokens import TokenFile, prepare_tokens, read_tokens, write_tokens

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "SequenceDataset",
    "TokenFile",
    "Tokenizer",
    "builtin_corpus",
    "builtin_corpus_files",
    "get_tokenizer",
    "load_text",
    "load_tokenizer",
    "prepare_tokens",
    "read_tokens",
    "save_tokenizer",
    "sequence_hash",
    "split_sequences",
    "write_tokens",
]
