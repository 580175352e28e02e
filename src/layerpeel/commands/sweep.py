"""`layerpeel sweep RUN`: every saved checkpoint of a run analysed as Ray tasks, into its time series."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from layerpeel.distributed.sweep import SweepError, SweepOptions, sweep


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sweep",
        help="analyse every checkpoint of a run on Ray (local or a cluster) into RUN/monitor.jsonl",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder")
    d = SweepOptions()
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="a running Ray cluster (HOST:PORT, ray://HOST:PORT or auto); default: a local Ray "
        "started for this sweep",
    )
    p.add_argument("--cpus-per-task", type=float, default=d.cpus, help="CPUs each task asks for")
    p.add_argument("--gpus-per-task", type=float, default=d.gpus, help="GPUs each task asks for")
    p.add_argument("--memory-mb", type=float, help="memory each task asks for (MiB)")
    p.add_argument("--retries", type=int, default=d.retries, help="retries of a failed task")
    p.add_argument("--local-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no line per finished checkpoint")
    return p


def run(args: argparse.Namespace) -> int:
    options = SweepOptions(
        address=args.ray_address,
        cpus=args.cpus_per_task,
        gpus=args.gpus_per_task,
        memory_mb=args.memory_mb,
        retries=args.retries,
        local_cpus=args.local_cpus,
    )

    def progress(done: int, total: int, name: str, error: str | None) -> None:
        if not args.no_progress:
            state = f"failed: {error}" if error else "done"
            print(f"checkpoint {done}/{total} {name} {state}", file=sys.stderr)

    result = sweep(args.run, options=options, progress=progress)
    for event in result.events:
        layers = event["report"]["layers"]
        red = [f"block{r['block']:02d}/{r['part']}" for r in layers if r["verdict"] == "red"]
        print(f"step {event['step']}: red: {', '.join(red) if red else 'none'}")
    where = Path(args.run) / "monitor.jsonl"
    print(
        f"{len(result.events)} checkpoint(s) analysed into {where}"
        + (f" ({result.skipped} already there)" if result.skipped else "")
    )
    if result.failures:
        named = "; ".join(f"{Path(p).name}: {e}" for p, e in result.failures.items())
        raise SweepError(
            f"{len(result.failures)} checkpoint(s) failed ({named}); the others are kept"
        )
    return 0
