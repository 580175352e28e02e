"""The `layerpeel` command: one sub-command per module in `layerpeel.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from layerpeel.errors import LayerpeelError

# Each module defines `add_parser(subparsers)` and `run(args) -> int`.
COMMANDS = ["train", "sample", "analyze", "sweep", "demo", "yes_demo", "report", "serve"]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # the user's own choice of torch threads

log = logging.getLogger(__name__)


def fit_threads() -> int | None:
    """Torch threads for the machine's load: its CPUs less the busy ones, unless the user chose.

    Torch uses every CPU by default; when other processes keep some of them busy its threads wait
    on each other and throughput collapses. With no thread count in the environment (`THREAD_VARS`)
    this sets max(1, CPUs - round(1-minute load average)), at most the CPUs, logs it and returns
    it; None when the user chose or the load is unknown.
    """
    if any(os.environ.get(v) for v in THREAD_VARS):
        return None
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this platform
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    threads = min(cpus, max(1, cpus - round(load)))
    import torch

    torch.set_num_threads(threads)
    log.info(
        "%d torch thread(s): %d CPU(s), load average %.1f (set OMP_NUM_THREADS to choose)",
        threads,
        cpus,
        load,
    )
    return threads


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
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    threads = torch.get_num_threads()
    fit_threads()
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
    finally:
        torch.set_num_threads(threads)  # main() called in-process leaves torch as it found it


if __name__ == "__main__":
    sys.exit(main())
