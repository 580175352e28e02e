"""Ground truth for "block k is under-optimized": the oracle gap, and every detector beside it.

`cases` trains and caches the models (along training, planted faults, healthy), `oracle`
measures what training one block alone really wins, `detectors` runs layerpeel and the other
per-block detectors on the same models, `tables` compares them and prints the summaries.
`run.py` is the command: `python benchmarks/validity/run.py --quick`.
"""
