"""The `layerpeel` command: one sub-command per module in `layerpeel.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from layerpeel.errors import LayerpeelError

# Each module defines `add_parser(subparsers)` and `run(args) -> int`.
COMMANDS = ["train", "sample", "analyze", "sweep", "demo", "yes_demo", "report", "serve"]


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as one line like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"layerpeel: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from layerpeel import __version__

    parser = Parser(
        prog="layerpeel",
        description="Find under-optimized layers of transformer language models, in loss units.",
    )
    parser.add_argument("--version", action="version", version=f"layerpeel {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"layerpeel.commands.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage mistake (already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # a log line never lands on a progress bar's line
            return int(args._run(args) or 0)
    except LayerpeelError as exc:
        print(f"layerpeel: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the system refused (full disk, permissions)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"layerpeel: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("layerpeel: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
