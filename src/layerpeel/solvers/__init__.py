"""Local solvers: the numerics that fit one block's reference.

- `closed`: closed-form peels (`BlockProblem`: streamed Gram matrices, least squares per map);
- `quantized`: quantizer-constrained fits of those maps;
- `adam`: local Adam on a block's parameters against the end cross-entropy;
- `lstsq`: the Gram accumulator and the ridge solves under them.

Which of them P1 uses is `PeelConfig.solver`, dispatched in `layerpeel.peel.gap.P1_SOLVERS`.
"""
