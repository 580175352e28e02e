"""Least squares through streamed normal equations, with a small ridge on the weights.

Rows are samples: features X (N, p), targets Y (N, q); the fit is Y ~ X W + 1 b^T with W (p, q).
Only the Gram matrices X~^T X~ and X~^T Y (X~ = [X, 1]) are kept, so memory is O(p^2 + p q)
whatever N is, and several targets fitted from the same features share one Gram.
"""

from __future__ import annotations

import torch

DTYPE = torch.float64


class Gram:
    """Accumulates X~^T X~, X~^T Y and ||Y||^2 batch by batch (X~ = [X, 1] when `bias`)."""

    def __init__(
        self, p: int, q: int, bias: bool = True, device: torch.device | str | None = None
    ) -> None:
        self.p, self.q, self.bias = p, q, bias
        k = p + int(bias)
        self.xx = torch.zeros(k, k, dtype=DTYPE, device=device)  # (p+1, p+1)
        self.xy = torch.zeros(k, q, dtype=DTYPE, device=device)  # (p+1, q)
        self.yy = torch.zeros((), dtype=DTYPE, device=device)  # sum of squared targets
        self.n = 0

    @classmethod
    def from_parts(
        cls, xx: torch.Tensor, xy: torch.Tensor, n: int, bias: bool, yy: torch.Tensor | float = 0.0
    ) -> Gram:
        """A Gram from given X~^T X~ (k, k), X~^T Y (k, q), sample count and ||Y||^2."""
        g = cls.__new__(cls)  # no zero-filled (p+1)^2 buffers that are replaced at once
        g.p, g.q, g.bias = xx.shape[0] - int(bias), xy.shape[1], bias
        g.xx, g.xy, g.n = xx.to(DTYPE), xy.to(DTYPE), n
        g.yy = torch.as_tensor(yy, dtype=DTYPE, device=xx.device)
        return g

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch: x (..., p), y (..., q).

        A batch's products are formed in its own dtype (float32 activations stay fast) and summed
        across batches in float64.
        """
        x = x.reshape(-1, self.p)
        y = y.reshape(-1, self.q).to(x.dtype)
        if self.bias:
            x = torch.cat(
                [x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1
            )  # (n, p+1)
        self.xx += (x.T @ x).to(DTYPE)
        self.xy += (x.T @ y).to(DTYPE)
        self.yy += (y.to(DTYPE) ** 2).sum()
        self.n += x.shape[0]

    def solve(
        self, ridge: float = 1e-6, xy: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Minimise ||X W + 1 b^T - Y||^2 + lam ||W||^2; return W (p, q) and b (q,).

        lam = ridge * trace(X^T X) / p, so `ridge` is relative to the features' scale; the bias is
        not penalised. `xy` replaces the accumulated X~^T Y (to solve for another target that
        shares the features). With ridge = 0 a rank-deficient problem gets the minimum-norm solution.
        """
        rhs = self.xy if xy is None else xy
        a = self.xx.clone()
        lam = ridge * float(torch.diagonal(self.xx)[: self.p].sum()) / max(self.p, 1)
        if lam > 0:
            idx = torch.arange(self.p, device=a.device)
            a[idx, idx] += lam
            sol = _spd_solve(a, rhs)
        else:
            sol = torch.linalg.pinv(a, hermitian=True) @ rhs
        w = sol[: self.p]
        b = sol[self.p] if self.bias else torch.zeros(self.q, dtype=DTYPE, device=sol.device)
        return w, b

    def sse(self, w: torch.Tensor, b: torch.Tensor) -> float:
        """Sum of squared residuals ||X W + 1 b^T - Y||^2 of any (W, b), from the Grams alone."""
        sol = torch.cat([w.to(DTYPE), b.to(DTYPE)[None]], 0) if self.bias else w.to(DTYPE)
        value = (sol * (self.xx @ sol)).sum() - 2 * (sol * self.xy).sum() + self.yy
        return float(value)


def sample_space_solve(
    x: torch.Tensor, y: torch.Tensor, ridge: float, bias: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """`Gram.solve` (ridge > 0) from the samples x (N, p), y (N, q), when N is well below p.

    The ridge solution W = (Xc^T Xc + lam I)^-1 Xc^T Yc equals Xc^T (Xc Xc^T + lam I)^-1 Yc, where
    Xc, Yc are centred when the (unpenalised) bias is fitted, b = mean(y) - W^T mean(x): an N x N
    system in place of a p x p one. lam is `Gram.solve`'s, ridge * trace(X^T X) / p.
    """
    if ridge <= 0:
        raise ValueError("the sample-space solve needs ridge > 0")
    x, y = x.to(DTYPE), y.to(DTYPE)
    p = x.shape[1]
    lam = ridge * float(x.pow(2).sum()) / max(p, 1)
    if bias:
        mx, my = x.mean(0), y.mean(0)
        x, y = x - mx, y - my
    k = x @ x.T
    k.diagonal().add_(lam)
    w = x.T @ _spd_solve(k, y)
    b = my - mx @ w if bias else torch.zeros(y.shape[1], dtype=DTYPE, device=y.device)
    return w, b


def _spd_solve(a: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve a x = rhs for symmetric positive (semi)definite a; falls back to pinv if singular."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.pinv(a, hermitian=True) @ rhs
