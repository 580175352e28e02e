"""Thin adapters that put a `layerpeel.monitor.Monitor` into other training loops.

`layerpeel.integrations.hf.LayerpeelCallback` (Hugging Face `Trainer`) and
`layerpeel.integrations.lightning.LayerpeelCallback` (Lightning `Trainer`); each module needs its
optional extra (`layerpeel[hf]`, `layerpeel[lightning]`).
"""
