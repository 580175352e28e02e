#!/usr/bin/env bash
# GPU parity and cost: a tiny random GPT analysed on CUDA and on the CPU with the same monitoring
# set must give the same P1 gaps (to a tolerance), then the forward-pass ratios on CUDA.
# Without CUDA it runs the same steps on the CPU twice (a dry run) and says so.
#   bash benchmarks/gpu_check.sh            # from the repository root; TOKENS=4096 by default
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
TOKENS="${TOKENS:-4096}"
DEVICE=$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
if [ "$DEVICE" = cpu ]; then
    echo "no CUDA here: dry run, the same checks with device cpu against cpu"
fi

"$PY" - "$DEVICE" <<'PYTHON'
import sys

import torch

from layerpeel import GPT, GPTConfig
from layerpeel.data.monitoring import monitoring_set
from layerpeel.peel.analysis import PeelConfig, peel

device = sys.argv[1]
cfg = GPTConfig(vocab_size=256, n_layer=4, n_head=4, d_model=64, block_size=64)
windows = torch.randint(0, 256, (64, 65), generator=torch.Generator().manual_seed(0))
settings = PeelConfig(ladder=False, cascade=False)  # P1 with work: the parity that matters


def rows(where: str) -> list[tuple[int, str, float, float]]:
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():  # a planted fault: block 2's MLP output scaled up
        model.blocks[2].mlp.proj.weight.mul_(4.0)
    report = peel(model.to(where), monitoring_set(windows), settings)
    return [(r.block, r.part, r.gap, r.ce_reference) for r in report.layers]


cpu, dev = rows("cpu"), rows(device)
worst = 0.0
for (b, part, g_cpu, ce_cpu), (_, _, g_dev, ce_dev) in zip(cpu, dev, strict=True):
    diff = max(abs(g_dev - g_cpu), abs(ce_dev - ce_cpu))
    worst = max(worst, diff)
    ok = diff <= 2e-4 + 0.01 * abs(g_cpu)  # float32 on both; the kernels sum in other orders
    print(f"block {b} {part:<5} gap cpu {g_cpu:+.5f}  {device} {g_dev:+.5f}  {'ok' if ok else 'DIFFERS'}")
    if not ok:
        sys.exit(f"P1 rows on {device} and cpu differ by {diff:.2e} at block {b} {part}")
print(f"P1 parity {device} vs cpu: {len(cpu)} rows, largest difference {worst:.2e} nats/token")
PYTHON

"$PY" benchmarks/cost_model.py --models gpt,llama --tokens "$TOKENS" --device "$DEVICE"
