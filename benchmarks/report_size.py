"""Size of the HTML report and how fast it opens in headless Chromium, from demo size to 500 x 48.

    python benchmarks/report_size.py [--run RUN ...] [--repeats 3]

Builds run folders whose analysis files have the exact shape `layerpeel analyze` writes
(`PeelReport.to_dict()`: P1 rows for block / attn / mlp, the full P2 ladder, the P3 cascade with
its subsets) and a metrics.jsonl like the trainer's, with made-up values (the size and speed of
a view do not depend on the values): the demo's shape (4 blocks, checkpoints every 250 of 1500
steps, a loss line every 10 steps) and a large one (48 blocks, 500 checkpoints). `--run` adds
real run folders. For each it prints the time to read the run and write the report, the file's
size, and in headless Chromium (median of --repeats fresh pages): the time from navigation start
to the page drawn, to switching the heatmap to another part, and to sorting the table.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from layerpeel.peel.cascade import anchor_subsets
from layerpeel.peel.report import PeelReport
from layerpeel.peel.rows import Cascade, GapRow, LadderRow
from layerpeel.peel.scoring import Thresholds
from layerpeel.report.chromium import CHROMIUM_ARGS, find_chromium
from layerpeel.report.html import write_report
from layerpeel.yes.bounds import verdict


def synthetic_run(
    root: Path, n_blocks: int, steps: list[int], log_every: int, seed: int = 0
) -> Path:
    """A run folder with one analysis file per step in the shape `layerpeel analyze` writes."""
    rng = random.Random(seed)
    run = root / f"synthetic-{n_blocks}x{len(steps)}"
    (run / "analysis").mkdir(parents=True)
    thresholds = Thresholds()
    with open(run / "metrics.jsonl", "w") as fh:
        for step in range(log_every, steps[-1] + 1, log_every):
            loss = 1.5 + 4.0 / (1 + step / 200) + rng.gauss(0, 0.02)
            fh.write(
                json.dumps({"step": step, "train_loss": loss, "lr": 3e-3, "tokens_per_s": 2e4})
                + "\n"
            )
    subsets = anchor_subsets(n_blocks, None if n_blocks <= 8 else 2)
    for step in steps:
        ce = 1.5 + 4.0 / (1 + step / 200)
        layers = []
        for b in range(n_blocks):
            for part in ("block", "attn", "mlp"):
                gap = rng.gauss(0.01, 0.012)
                lo, hi = gap - abs(rng.gauss(0.006, 0.002)), gap + abs(rng.gauss(0.006, 0.002))
                layers.append(
                    {
                        "bound": "P1", "block": b, "part": part, "gap": gap, "ci_low": lo,
                        "ci_high": hi, "verdict": thresholds.verdict(gap, lo), "ce_trained": ce,
                        "ce_reference": ce - gap, "solver": "closed", "eta": rng.random(), "moved": part,
                        "quant": None, "time_s": rng.random(),
                    }
                )  # fmt: skip
        ladder = [
            {"from_block": i, "to_block": j, "ce": ce + 0.05 * (j - i) + rng.random() * 0.02,
             "ce_trained": ce, "time_s": rng.random()}
            for i in range(n_blocks)
            for j in range(i, n_blocks)
        ]  # fmt: skip
        rows = [
            {
                "anchors": list(s),
                "ce": ce + 0.3 - 0.02 * len(s) + rng.random() * 0.05,
                "time_s": 0.1,
            }
            for s in subsets
        ]
        yes = [
            min(r["ce"] for r in rows if len(r["anchors"]) == k)
            for k in range(max(len(s) for s in subsets) + 1)
        ]
        yes = [min(yes[: k + 1]) for k in range(len(yes))]
        cascade = {
            "yes0": yes[0], "yes": yes[1:], "best_anchors": [[] for _ in yes], "ce_trained": ce,
            "verdict": verdict(ce, yes[0], yes[-1]), "final_target": "preimage", "final_alpha": 0.0,
            "subsets": rows,
        }  # fmt: skip
        report = PeelReport(
            layers=[GapRow.from_dict(r) for r in layers],
            ladder=[LadderRow.from_dict(r) for r in ladder],
            cascade=Cascade.from_dict(cascade),
            config={"solver": "closed"},
            monitoring={
                "sha256": "0" * 64,
                "tokens": 65536,
                "fit_sequences": 256,
                "held_sequences": 256,
                "seq_len": 128,
            },
            model={"class": "GPT", "blocks": n_blocks, "quant": None, "params": 0, "step": step},
            timings={"capture": 1.0, "p1": 10.0, "p2": 5.0, "p3": 5.0},
            version="bench",
        )
        (run / "analysis" / f"step-{step:06d}.json").write_text(json.dumps(report.to_dict()))
    return run


def open_times(browser, path: Path, repeats: int) -> tuple[float, float, float]:
    """Median ms: navigation start -> drawn; heatmap part switch; table sort (each a fresh page)."""
    drawn, switch, sort = [], [], []
    for _ in range(repeats):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-rendered]")
        drawn.append(
            page.evaluate("performance.getEntriesByName('layerpeel-rendered')[0].startTime")
        )
        timed = """sel => { const t = performance.now(); document.querySelector(sel).click();
                    document.body.offsetHeight; return performance.now() - t; }"""
        if page.query_selector("#heatmap button[data-part=mlp]"):
            switch.append(page.evaluate(timed, "#heatmap button[data-part=mlp]"))
        if page.query_selector("#layer-table th[data-key=gap]"):
            sort.append(page.evaluate(timed, "#layer-table th[data-key=gap]"))
        page.close()
        if errors:
            sys.exit(f"page errors in {path}: {errors}")
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    return med(drawn), med(switch), med(sort)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run", type=Path, action="append", default=[], help="also measure this run folder"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--large-checkpoints", type=int, default=500)
    ap.add_argument("--large-blocks", type=int, default=48)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    exe = find_chromium()
    if exe is None:
        sys.exit("needs Chromium (apt-get install chromium, or set LAYERPEEL_CHROMIUM)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        cases = [
            ("demo shape (synthetic)", synthetic_run(root, 4, list(range(250, 1501, 250)), 10)),
            (
                f"{args.large_checkpoints} ckpts x {args.large_blocks} blocks (synthetic)",
                synthetic_run(
                    root,
                    args.large_blocks,
                    [100 * (i + 1) for i in range(args.large_checkpoints)],
                    10,
                ),
            ),
        ] + [(f"real: {r}", r) for r in args.run]
        print(f"(built the synthetic runs in {time.perf_counter() - t0:.1f} s)")
        header = f"{'run':<40} {'analyses':>8} {'input MB':>9} {'write s':>8} {'HTML MB':>8} {'open ms':>8} {'part ms':>8} {'sort ms':>8}"
        print(header)
        print("-" * len(header))
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
            for name, run in cases:
                inputs = sum(
                    p.stat().st_size
                    for p in run.rglob("*")
                    if p.is_file() and p.suffix in (".json", ".jsonl")
                )
                t0 = time.perf_counter()
                path, res = write_report(run, root / f"{len(name)}-{run.name}.html")
                write_s = time.perf_counter() - t0
                size = path.stat().st_size
                opened, switch, sort = open_times(browser, path, args.repeats)
                print(
                    f"{name:<40} {len(res.analyses):>8} {inputs / 2**20:>9.2f} {write_s:>8.2f} "
                    f"{size / 2**20:>8.2f} {opened:>8.0f} {switch:>8.0f} {sort:>8.0f}"
                )
            browser.close()


if __name__ == "__main__":
    main()
