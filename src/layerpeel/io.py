"""Atomic file writes: a reader never sees a half-written file, a crash never loses the old one."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layerpeel.errors import OutputError

log = logging.getLogger(__name__)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (threads may be writing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and flush it, so a killed run leaves at most one torn line.

    A torn last line left by an earlier writer is dropped first, so the new line starts on a
    line of its own instead of being glued to the torn one (which would lose both).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(path)
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()


def drop_torn_tail(path: Path) -> bool:
    """Cut a JSONL file after its last newline (a killed writer's torn line); True if it did."""
    try:
        with open(path, "rb+") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end == 0:
                return False
            fh.seek(end - 1)
            if fh.read(1) == b"\n":
                return False
            # read back from the end in blocks until the last newline
            pos, keep = end, 0
            while pos > 0:
                start = max(0, pos - (1 << 16))
                fh.seek(start)
                block = fh.read(pos - start)
                i = block.rfind(b"\n")
                if i >= 0:
                    keep = start + i + 1
                    break
                pos = start
            fh.truncate(keep)
    except FileNotFoundError:
        return False
    log.warning(
        "%s ended in a torn line (%d bytes, a writer was killed); dropped it", path, end - keep
    )
    return True


def _check_folder(folder: Path, what: str, path: Path) -> None:
    """`folder` is, or could be made as, a writable folder: its closest existing ancestor is one."""
    base = Path(os.path.abspath(folder))
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise OutputError(f"cannot write {what} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} {path}: the folder {base} is not writable")


def check_output_file(path: Path, what: str) -> None:
    """Refuse, before any work, a file that cannot be written: a folder, or in no writable folder.

    `what` names the output in the message (an option such as "--json").
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    _check_folder(Path(os.path.abspath(path)).parent, what, path)


def check_output_dir(path: Path, what: str) -> None:
    """Refuse, before any work, a folder that cannot be written into: a file, or not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder")
    _check_folder(path, what, path)


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
