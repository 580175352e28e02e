"""Cheap estimates of the oracle's ranking, measured against it (docs/validation.md).

    python benchmarks/validity/run.py --quick        # first: the models and oracle results
    python benchmarks/validity/estimates.py          # then this, on the same cache

For every snapshot of the quick suite, each estimate's Spearman correlation with the oracle's
best gains and whether it names the oracle's top block:

1. the oracle's own gain after k steps (from its cached learning curves);
2. a short AdamW solve of each block alone on the monitoring set's fit half, scored on its
   held-out half after 10, 25, 50 and 100 steps;
3. the gain rate (`detectors.gain_rates`);
4. a Newton step along the cross-fitted Adam direction: rate^2 / (2 c), the curvature c along
   that direction by central differences on the odd batches;

then micro models (2 and 3 blocks, d_model 32, a synthetic sequence) in which a later block is
damaged, re-initialised or never trained, with what training each block alone for 150 steps
wins next to each block's gain rate and layerpeel's verdict: each block's influence, the blocks
behind and the block it names most likely to gain.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `validity`

from layerpeel import GPT, GPTConfig  # noqa: E402
from layerpeel.arch.table import model_view  # noqa: E402
from layerpeel.data.monitoring import monitoring_set  # noqa: E402
from layerpeel.peel.analysis import PeelConfig, peel  # noqa: E402
from validity.cases import lm_loss, load_corpus, load_snapshot, part_parameters  # noqa: E402
from validity.detectors import adam_halves, gain_rates  # noqa: E402
from validity.oracle import sequence_ce  # noqa: E402
from validity.suite import _monitoring, _result_path, quick_suite  # noqa: E402

ORACLE_STEPS = (25, 50, 75, 100, 125)
SOLVE_STEPS = (10, 25, 50, 100)


def _train_alone(
    model: nn.Module, block: int, windows: torch.Tensor, steps: int, lr: float, seed: int
) -> nn.Module:
    """A copy of `model` whose block `block` alone took `steps` AdamW steps.

    Batches of 16 windows (S, T+1) drawn at random, 10 warm-up steps.
    """
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(False)
    params = part_parameters(m, block, "block")
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed + 7919 * block)
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 10)
        w = windows[torch.randint(0, len(windows), (16,), generator=gen)]
        loss = lm_loss(m, w[:, :-1], w[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return m.eval()


def short_solves(
    model: nn.Module, fit: torch.Tensor, held: torch.Tensor, n: int
) -> dict[int, list[float]]:
    """Held-out gain of each block trained alone on `fit` windows, by step count."""
    base = sequence_ce(model, held[:, :-1], held[:, 1:]).mean()
    out: dict[int, list[float]] = {k: [] for k in SOLVE_STEPS}
    for b in range(n):
        for k in SOLVE_STEPS:
            m = _train_alone(model, b, fit, k, 1e-3, seed=0)
            out[k].append(float(base - sequence_ce(m, held[:, :-1], held[:, 1:]).mean()))
    return out


def newton_gains(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 1e-3
) -> list[float]:
    """rate^2 / (2 c) per block along the cross-fitted Adam direction (inf where c <= 0)."""
    out = []
    odd = torch.cat([torch.arange(s, min(s + 16, len(x))) for s in range(16, len(x), 32)])
    for b in range(model_view(model).n_blocks):
        params, d, c = adam_halves(model, b, x, y)
        rate = float(sum((di * ci).sum() for di, ci in zip(d, c, strict=True)))
        start = [p.detach().clone() for p in params]
        loss = {}
        with torch.no_grad():
            for t in (eps, -eps, 0.0):  # the last puts the block back as it was
                for p, s0, di in zip(params, start, d, strict=True):
                    p.copy_(s0 + t * di)
                loss[t] = float(sequence_ce(model, x[odd], y[odd]).mean())
        curv = (loss[eps] + loss[-eps] - 2 * loss[0.0]) / eps**2
        out.append(rate * rate / (2 * curv) if curv > 0 else float("inf"))
    return out


def _row(name: str, est: list[float], oracle: list[float]) -> tuple[float, bool]:
    rho = float(spearmanr(est, oracle).statistic)
    return rho, int(np.argmax(est)) == int(np.argmax(oracle))


def suite_estimates(cache: Path) -> None:
    cases, settings = quick_suite()
    table: dict[str, list[tuple[float, bool]]] = {}
    for case in cases:
        for step in case.snapshots:
            path = _result_path(cache, case, step, settings)
            if not path.exists():
                sys.exit(f"no oracle result for {case.name}@{step}: run run.py --quick first")
            r = json.loads(path.read_text())
            oracle = [o["gain"] for o in r["oracle"]]
            found: dict[str, list[float]] = {}
            for k in ORACLE_STEPS:
                found[f"oracle after {k} steps"] = [
                    dict((int(s), g) for s, g in o["curve"]).get(k, o["gain"]) for o in r["oracle"]
                ]
            model = load_snapshot(case, cache, step)
            mset = _monitoring(load_corpus(case.spec), settings)
            fit = torch.cat([mset.inputs("fit"), mset.targets("fit")[:, -1:]], 1)
            held = torch.cat([mset.inputs("held"), mset.targets("held")[:, -1:]], 1)
            n = model_view(model).n_blocks
            for k, gains in short_solves(model, fit, held, n).items():
                found[f"monitoring-set solve, {k} steps"] = gains
            x, y = mset.inputs("all"), mset.targets("all")  # as the gain-rate detector
            found["gain rate"] = gain_rates(model, x, y).scores
            found["Newton along Adam"] = newton_gains(model, x, y)
            for name, est in found.items():
                table.setdefault(name, []).append(_row(name, est, oracle))
            print(f"{case.name}@{step}: oracle {np.round(oracle, 4).tolist()}", flush=True)
    print(f"\n{'estimate':<32} {'mean Spearman':>13} {'top = oracle top':>17}")
    for name, rows in table.items():
        rho = np.nanmean([r for r, _ in rows])
        hits = sum(h for _, h in rows)
        print(f"{name:<32} {rho:>+13.2f} {hits:>12}/{len(rows)}")


def micro_models() -> None:
    """Micro models where a later block is the one to train, with the gain rates beside."""
    gen = torch.Generator().manual_seed(5)
    text = torch.randint(1, 3, (600, 17), generator=gen).cumsum(1) % 16  # +1 or +2 mod 16
    train, held = text[:400], text[400:]
    print(f"\n{'micro model':<34} {'gain, each block alone (150 steps)':<36} "
          f"{'gain rate':<24} influence; behind; most likely to gain")  # fmt: skip
    for n_layer, block, fault in [(2, 1, "never trained"), (3, 1, "never trained"),
                                  (2, 1, "re-initialised"), (2, 1, "damaged")]:  # fmt: skip
        cfg = GPTConfig(vocab_size=16, n_layer=n_layer, n_head=2, d_model=32, block_size=16)
        torch.manual_seed(0)
        model = GPT(cfg)
        frozen = {id(p) for p in model.blocks[block].parameters()} if "never" in fault else set()
        params = [p for p in model.parameters() if id(p) not in frozen]
        opt = torch.optim.Adam(params, lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(300):
            w = train[torch.randint(0, len(train), (16,), generator=g)]
            loss = lm_loss(model, w[:, :-1], w[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            if fault == "re-initialised":
                torch.manual_seed(1)
                model.blocks[block].load_state_dict(GPT(cfg).blocks[block].state_dict())
            if fault == "damaged":
                for p in model.blocks[block].parameters():
                    if p.ndim == 2:
                        p.add_(p.std() * torch.randn(p.shape, generator=gen))
        model.eval()
        base = sequence_ce(model, held[128:, :-1], held[128:, 1:]).mean()
        gains = []
        for b in range(n_layer):
            m = _train_alone(model, b, train, 150, 1e-3, seed=0)
            gains.append(float(base - sequence_ce(m, held[128:, :-1], held[128:, 1:]).mean()))
        rates = gain_rates(model, held[:128, :-1], held[:128, 1:]).scores
        whole = peel(model, monitoring_set(held), PeelConfig(ladder=False, cascade=False)).whole()
        label = f"{n_layer} blocks, block {block} {fault}"
        print(f"{label:<34} {' '.join(f'{v:+.4f}' for v in gains):<36} "
              f"{' '.join(f'{v:.5f}' for v in rates):<24} "
              f"{' '.join(f'{whole.influence[b]:.3f}' for b in range(n_layer))}; "
              f"{list(whole.behind)}; {whole.most_improvable}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("runs/validity"), help="models and results")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    suite_estimates(args.cache)
    micro_models()


if __name__ == "__main__":
    main()
