"""Peeling transformers: P1 layer gaps, P2 projection ladder, P3 YES cascade, scoring, report.

`peel(model, data, PeelConfig(...)) -> PeelReport` (in `analysis`) runs them on one model.
"""
