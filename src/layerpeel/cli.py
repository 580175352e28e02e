"""The `layerpeel` command: one sub-command per module in `layerpeel.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from layerpeel.errors import LayerpeelError

# Each module defines `add_parser(subparsers)` and `run(args) -> int`.
COMMANDS = ["train", "sample", "analyze", "sweep", "demo", "yes_demo", "report", "serve"]


def build_parser() -> argparse.ArgumentParser:
    from layerpeel import __version__

    parser = argparse.ArgumentParser(
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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
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
