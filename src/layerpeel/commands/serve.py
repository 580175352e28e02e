"""`layerpeel serve RUN`: a live dashboard of a run, updated as its files grow."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layerpeel.errors import ConfigError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="serve a live dashboard of a run (127.0.0.1 by default)",
        description=(
            "Serve a page that shows the run's report and follows metrics.jsonl, monitor.jsonl "
            "and analysis/ as they grow, without reloading. Only reads the run folder."
        ),
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder")
    p.add_argument("--port", default="8765", help="TCP port (default 8765; 0: any free port)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    return p


def run(args: argparse.Namespace) -> int:
    from layerpeel.report.results import check_run_folder
    from layerpeel.report.server import Dashboard

    try:
        port = int(args.port)
    except ValueError:
        raise ConfigError(f"--port must be an integer, got {args.port!r}") from None
    check_run_folder(args.run)
    dash = Dashboard(args.run, host=args.host, port=port)
    print(f"serving {args.run} at {dash.url} (Ctrl-C to stop)", flush=True)
    try:
        dash.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        dash.server.server_close()
    return 0
