"""The head and its cross-entropy at several chunk sizes, measured side by side in one run.

    python benchmarks/head_chunks.py                      # 50,257 words, d_model 96, 8,192 tokens
    python benchmarks/head_chunks.py --vocab 49152 --width 576

Every P1 reference, the work of each block and the line search end in `token_ce`: the head's
product and the cross-entropy on (rows, V) logits, a chunk of token rows at a time. Each chunk
size runs in turn, `--repeats` rounds in all; the table gives each one's median seconds and its
ratio to the default (`head_rows`: about 4M logits per chunk on a CPU). The plain product alone
(no cross-entropy, chunks of the default size) is the floor.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from layerpeel.peel.scoring import head_rows, token_ce


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--width", type=int, default=96, help="d_model")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(args.width, args.vocab, bias=False)
    x = torch.randn(1, args.tokens, args.width, generator=gen)
    targets = torch.randint(0, args.vocab, (1, args.tokens), generator=gen)
    default_rows = head_rows(args.vocab, x.device)

    def product_only() -> None:
        flat = x.reshape(-1, args.width)
        for s in range(0, args.tokens, default_rows):
            head(flat[s : s + default_rows])

    runs = {
        f"default ({default_rows} rows)": lambda: token_ce(head, x, targets),
        "256 rows": lambda: token_ce(head, x, targets, rows=256),
        "2048 rows": lambda: token_ce(head, x, targets, rows=2048),
        "8192 rows": lambda: token_ce(head, x, targets, rows=8192),
        "product alone (default rows)": product_only,
    }
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        want = token_ce(head, x, targets, rows=2048)
        err = float((token_ce(head, x, targets) - want).abs().max())
        for _ in range(args.repeats):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - t0)
    base = statistics.median(seconds[next(iter(runs))])
    print(
        f"{args.tokens} tokens, d_model {args.width}, {args.vocab} words, "
        f"{torch.get_num_threads()} thread(s); median of {args.repeats}; "
        f"default vs 2048 rows: max |CE difference| {err:.1e}"
    )
    print(f"{'chunks':<30} {'seconds':>8} {'x default':>9}")
    for name, ts in seconds.items():
        med = statistics.median(ts)
        print(f"{name:<30} {med:>8.3f} {med / base:>9.2f}")


if __name__ == "__main__":
    main()
