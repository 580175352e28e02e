"""`layerpeel analyze RUN_OR_CHECKPOINT`: P1 layer gaps, P2 ladder and P3 cascade of one checkpoint."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from layerpeel.errors import ConfigError, LayerpeelError
from layerpeel.io import check_output_dir, check_output_file, file_sha256
from layerpeel.peel.analysis import (
    DEFAULT_TOKENS,
    PeelConfig,
    load_target,
    monitoring_from_run,
    peel,
)
from layerpeel.peel.config import add_arguments, from_args
from layerpeel.peel.evidence import loss_trend
from layerpeel.peel.report import PeelReport
from layerpeel.peel.rows import GapRow
from layerpeel.peel.verdict import Answer, WholeVerdict
from layerpeel.peel.world import one_line

HF_SEQ_LEN = 256  # default monitoring sequence length of a Hugging Face model

# Colour always comes with a word and a symbol, for readers who cannot tell red from green.
MARKS = {"green": ("+", "32"), "yellow": ("!", "33"), "red": ("x", "31")}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "analyze",
        help="find under-optimized layers of a run's checkpoint (P1 gaps, P2 ladder, P3 cascade)",
    )
    p.add_argument(
        "target",
        type=Path,
        nargs="?",
        metavar="RUN_OR_CHECKPOINT",
        help="run folder or checkpoint JSON",
    )
    p.add_argument(
        "--hf",
        type=Path,
        metavar="DIR",
        help="a local Hugging Face model folder (safetensors) or GGUF file, instead of a run",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        help=f"monitoring sequence length with --hf (default {HF_SEQ_LEN}, or the model's context "
        "when shorter)",
    )
    p.add_argument(
        "--data", help="text file or folder for the monitoring set (default: the run's corpus)"
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=DEFAULT_TOKENS,
        help="monitoring tokens (half fit, half held out)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report JSON here")
    p.add_argument(
        "--device",
        metavar="DEV",
        help="where the analysis runs, e.g. cpu, cuda, cuda:1 (default: the model's device)",
    )
    add_arguments(p)  # one flag per PeelConfig setting
    p.add_argument(
        "--fail-on",
        choices=["red", "yellow"],
        help="exit 1 if any layer gets this verdict or worse",
    )
    p.add_argument(
        "--all-checkpoints",
        action="store_true",
        help="analyse every saved checkpoint of the run into RUN/monitor.jsonl (the monitor's "
        "time series, with the run's monitor preset; see docs/monitor.md)",
    )
    p.add_argument(
        "--shard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="spread the analysis over the ranks of torchrun (default: when started by torchrun "
        "with more than one process; see docs/scaling.md)",
    )
    p.add_argument(
        "--backend", choices=["gloo", "nccl"], help="process group backend (default: nccl on GPU)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument(
        "--no-color", action="store_true", help="no colour in the table (also: NO_COLOR)"
    )
    return p


def verdict_text(verdict: str, color: bool) -> str:
    mark, code = MARKS.get(verdict, ("?", "0"))
    word = f"{mark} {verdict}"
    return f"\033[{code}m{word:<8}\033[0m" if color else f"{word:<8}"


def print_report(report: PeelReport, out: TextIO, color: bool) -> None:
    """The P1 table (largest gap first within each block), the ladder and the cascade."""
    q = report.model.get("quant")
    head = f"{'block':>5}  {'part':<5}  {'gap':>8}  {'95% interval':>19}  {'verdict':<8}  {'CE ref':>7}  {'CE trained':>10}"
    if q:
        head += f"  {'optim':>7}  {'quant':>7}"
    head += f"  {'work':>8}  {'/median':>7}  {'influence':>9}  {'time':>6}"
    print(
        f"P1 layer gaps (nats/token, held-out; red when the interval clears {report.config.get('red')}"
        " or the block is idle; work = CE without the block - CE with it, /median = over the other"
        " blocks' median work; influence = 1 - cos of the block's input and output residual):",
        file=out,
    )
    print(head, file=out)
    for r in report.layers:
        line = (
            f"{r.block:>5}  {r.part:<5}  {r.gap:>+8.4f}  [{r.ci_low:>+8.4f}, {r.ci_high:>+8.4f}]"
            f"  {verdict_text(r.verdict, color)}  {r.ce_reference:>7.4f}  {r.ce_trained:>10.4f}"
        )
        if q:
            line += f"  {r.opt_part or 0.0:>+7.4f}  {r.quant_part or 0.0:>+7.4f}"
        work = r.work
        line += f"  {work:>+8.4f}" if work is not None else f"  {'':>8}"
        ratio = r.work_ratio
        line += f"  {ratio:>7.2f}" if ratio is not None else f"  {'':>7}"
        line += f"  {r.influence:>9.3f}" if r.influence is not None else f"  {'':>9}"
        line += f"  {r.time_s:>5.1f}s" + ("  idle" if r.idle else "")
        print(line, file=out)
    if report.ladder:
        n = int(report.model.get("blocks", 0))
        print(
            "\nP2 ladder: CE when block l alone is peeled onto G_j (rows l, columns j):", file=out
        )
        print("      " + "".join(f"{'j=' + str(j):>9}" for j in range(n)), file=out)
        cells = {(r.from_block, r.to_block): r.ce for r in report.ladder}
        for i in range(n):
            row = "".join(
                f"{cells[(i, j)]:>9.4f}" if (i, j) in cells else " " * 9 for j in range(n)
            )
            print(f"  l={i:<2}{row}", file=out)
    c = report.cascade
    if c:
        ks = ", ".join(f"YES-{k + 1} {v:.4f}" for k, v in enumerate(c.yes))
        print(
            f"\nP3 cascade: CE trained {c.ce_trained:.4f}; YES-0 {c.yes0:.4f}; {ks}"
            f" -> {verdict_text(c.verdict, color).strip()} (final target alpha {c.final_alpha})",
            file=out,
        )
    print_verdict(report, out, color)


def print_verdict(report: PeelReport, out: TextIO, color: bool) -> None:
    """The summary under the tables: red rows, idle blocks, then the whole-model verdict."""
    reds = [r for r in report.layers if r.verdict == "red"]
    idle = [r for r in reds if r.idle]
    if reds:
        worst = max(reds, key=lambda r: r.gap)
        print(
            f"\n{len(reds)} red row(s); largest gap: block {worst.block} {worst.part} "
            f"({worst.gap:+.4f} nats/token).",
            file=out,
        )
        for r in idle:
            print(
                f"block {r.block} is idle: removing it costs {r.work:+.4f} nats/token "
                f"[{r.work_ci_low:+.4f}, {r.work_ci_high:+.4f}], far less than the other "
                "blocks' work.",
                file=out,
            )
    whole = report.whole()
    if not reds:
        behind = ", ".join(str(b) for b in whole.behind)
        plural = "s" if len(whole.behind) > 1 else ""
        print(
            f"\nno red row; the verdict below names block{plural} {behind} behind."
            if whole.behind
            else "\nno red layer.",
            file=out,
        )
    order = report.in_order()
    top = order[0] if order else None
    if top is not None and first_to_look_at(top, whole):
        why = f"gap {top.gap:+.4f}"
        if top.work_ratio is not None:
            why += f", work {top.work_ratio:.2f} of the other blocks' median"
        print(
            f"first to look at: block {top.block} {top.part} ({top.verdict}; {why}).",
            file=out,
        )
    for r in report.layers:
        if r.explained_by is not None:
            print(
                f"block {r.block} {r.part}: gap {r.gap:+.4f}, {r.gap_given_first:+.4f} "
                f"with block {r.explained_by}'s reference in place: explained by it (yellow).",
                file=out,
            )
    print(f"\n{whole.question}", file=out)
    print(f"{verdict_text(whole.colour, color).strip()}: {whole.sentence}", file=out)


def first_to_look_at(top: GapRow, whole: WholeVerdict) -> bool:
    """Whether the summary names the report's first row as the one to look at.

    A block behind, always. Another red or yellow row only when the whole model is not still
    training: while it is, every block can still gain and P1's gaps do not say which gains most
    (docs/validation.md), so no one block is to blame and the verdict says so.
    """
    if top.block in whole.behind:
        return True
    return top.verdict != "green" and Answer.STILL_TRAINING not in whole.answers


def _use_color(args: argparse.Namespace) -> bool:
    return not args.no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()


def run_hf(args: argparse.Namespace, cfg: PeelConfig, sharded: bool = False) -> int:
    """`analyze --hf DIR`: a Hugging Face model from disk, its own tokenizer, the report to --json."""
    from layerpeel.arch.loading import context_length, hf_monitoring_set, load_hf, vocabulary_size

    if args.target is not None:
        raise ConfigError("give either RUN_OR_CHECKPOINT or --hf DIR, not both")
    if args.json is not None:
        check_output_file(args.json, "--json")
    if args.seq_len is not None and args.seq_len < 1:
        raise ConfigError(f"--seq-len must be at least 1, got {args.seq_len}")
    model, tokenizer = load_hf(args.hf)
    model = to_device(model, args.device)
    context = context_length(model)
    seq_len = args.seq_len or min(HF_SEQ_LEN, context or HF_SEQ_LEN)
    if context is not None and seq_len > context:
        raise ConfigError(f"--seq-len {seq_len} is longer than the model's context ({context})")
    mset = hf_monitoring_set(tokenizer, args.data, args.tokens, seq_len, vocabulary_size(model))
    report = peel(model, mset, cfg, progress=not args.no_progress, sharded=sharded)
    report.model["source"] = str(args.hf)
    if not _writer(sharded):
        return _exit_code(args, report)
    if args.json is not None:
        report.save(args.json)
    print_report(report, sys.stdout, _use_color(args))
    if args.json is not None:
        print(f"\nreport: {args.json}")
    return _exit_code(args, report)


def to_device(model: Any, device: str | None) -> Any:
    """The model on `device` (None: where it is); a device this machine lacks is a `ConfigError`."""
    if device is None:
        return model
    return model.to(check_device(device))


def check_device(device: str) -> Any:
    """`device` as a torch device, or a `ConfigError` when this machine lacks it."""
    import torch

    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)  # fails at once for a device type this machine lacks
    except (RuntimeError, AssertionError) as exc:
        raise ConfigError(f"--device {device}: not usable here ({one_line(exc)})") from None
    return dev


def _exit_code(args: argparse.Namespace, report: PeelReport) -> int:
    if args.fail_on:
        bad = {"red"} if args.fail_on == "red" else {"red", "yellow"}
        if report.whole().colour in bad or any(r.verdict in bad for r in report.layers):
            return 1
    return 0


def run(args: argparse.Namespace) -> int:
    from layerpeel.distributed.launch import launched, process_group

    shard = launched() if args.shard is None else args.shard
    if not shard:
        return _run(args, sharded=False)
    if args.all_checkpoints:
        raise ConfigError("--all-checkpoints is not sharded; use `layerpeel sweep RUN`")
    with process_group(args.backend):
        return _run(args, sharded=True)


def _writer(sharded: bool) -> bool:
    """Rank 0 writes and prints; the other ranks of a sharded analysis only compute."""
    import torch.distributed as dist

    return not sharded or dist.get_rank() == 0


def _run(args: argparse.Namespace, sharded: bool) -> int:
    if args.all_checkpoints:
        return _all_checkpoints(args)
    cfg = from_args(args)
    if args.hf is not None:
        return run_hf(args, cfg, sharded)
    if args.target is None:
        raise ConfigError("give a run folder or checkpoint, or --hf DIR")
    target = load_target(args.target)
    target.model = to_device(target.model, args.device)
    if target.run is None:
        raise ConfigError(
            f"{args.target} is not in a run folder, so its tokenizer is unknown; "
            "analyse a checkpoint inside its run folder"
        )
    # every output is checked before the analysis runs, so a bad path costs nothing
    outputs = [target.run.path / "analysis" / f"step-{(target.step or 0):06d}.json"]
    check_output_dir(outputs[0].parent, "the run's analysis folder")
    if args.json is not None:
        check_output_file(args.json, "--json")
        outputs.append(args.json)
    mset = monitoring_from_run(target.run, args.data, args.tokens)
    weights = file_sha256(target.weights)
    report = None if sharded else _reusable(outputs[0], weights, cfg, mset)
    fresh = report is None
    if report is not None:
        print(f"{outputs[0]} holds this checkpoint's analysis with these settings: reused\n")
    else:
        trend = loss_trend(target.run.loss_history(), target.step)
        report = peel(
            target.model, mset, cfg, progress=not args.no_progress, sharded=sharded, trend=trend
        )
        report.model["step"] = target.step
        report.model["source"] = target.source
        report.model["weights_sha256"] = weights
    if not _writer(sharded):
        return _exit_code(args, report)
    for path in outputs if fresh else outputs[1:]:
        report.save(path)
    print_report(report, sys.stdout, _use_color(args))
    print("\nreport: " + ", ".join(str(p) for p in outputs))
    return _exit_code(args, report)


def _reusable(path: Path, weights: str, cfg: PeelConfig, mset: Any) -> PeelReport | None:
    """The analysis saved at `path` if it was made of these weights, settings and monitoring set.

    Its key is the sha256 of the checkpoint's weights file, the settings and the monitoring
    set's hash, all recorded in the report: anything else changed means computing anew.
    """
    import json

    if not path.is_file():
        return None
    try:
        old = PeelReport.load(path)
    except LayerpeelError:
        return None
    settings = json.loads(json.dumps(cfg.to_dict()))
    same = (
        old.model.get("weights_sha256") == weights
        and old.config == settings
        and old.monitoring.get("sha256") == mset.digest()
        and old.verdict is not None  # written before the whole-model verdict: judge anew
    )
    return old if same else None


def _all_checkpoints(args: argparse.Namespace) -> int:
    """Fill RUN/monitor.jsonl from the run's saved checkpoints (`source: checkpoint` events)."""
    from layerpeel.monitor import analyze_checkpoints

    def progress(done: int, total: int) -> None:
        if not args.no_progress:
            print(f"checkpoint {done}/{total}", file=sys.stderr)

    if args.device is not None:
        check_device(args.device)
    events = analyze_checkpoints(args.target, progress=progress, device=args.device)
    for event in events:
        layers = event["report"]["layers"]
        red = [f"block{r['block']:02d}/{r['part']}" for r in layers if r["verdict"] == "red"]
        print(f"step {event['step']}: red: {', '.join(red) if red else 'none'}")
    print(f"{len(events)} checkpoint(s) analysed into {Path(args.target) / 'monitor.jsonl'}")
    return 0
