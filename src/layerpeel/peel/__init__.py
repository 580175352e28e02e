"""Peeling transformers: P1 layer gaps, P2 projection ladder, P3 YES cascade, scoring, report.

`peel(model, data, PeelConfig(...)) -> PeelReport` (in `analysis`) runs them on one model:
- `config`: `PeelConfig`, every setting declared once; `plan`: what an analysis settles and its
  units of work; `run`: running units and merging their rows; `world`: one process or the ranks
  of a process group, and the collectives between them;
- `gap`, `ladder`, `cascade`: P1, P2, P3; `context`: residual streams and trained scores;
  `scoring`: held-out CE, bootstrap intervals, verdicts; `attribution`: re-checking later reds;
- `evidence`: the loss trend, weights' spikes and the bigram baseline; `verdict`: the
  whole-model verdict they and the rows give, and the order to look at the rows in;
- `report`: `PeelReport`, the versioned JSON every script reads.
"""
