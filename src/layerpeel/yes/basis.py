"""Least-squares projections onto the row space of one representation, with pinv's answers.

`Basis(h)` factors a representation H~ (r, N) once; `project`, `sse` and `weights` then give
T pinv(H~) H~, ||T - T pinv(H~) H~||_F^2 and T pinv(H~) for many targets T (c, N). Tensors are
float64 torch tensors; every product and factorization runs on h's device (CPU or CUDA), and
only scalars that choose a path (norms, pivots, condition bounds) are read back to the host,
except the pivoted Cholesky of a small r x r Gram on the rank-deficient path, which torch lacks
(`_pivoted_cholesky`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import lapack
from torch import Tensor

EPS = torch.finfo(torch.float64).eps
# The Gram (normal-equation) fast path is taken only when a bound on the condition number of the
# row-equilibrated Gram is at most this; its predictions are then within ~1e-8 of pinv's.
GRAM_COND_LIMIT = 1e8
# Above that, a QR of H~ is used while the Gram still certifies full rank.
QR_COND_LIMIT = 1e12
# The pivoted Cholesky stops at pivots (squared relative residuals of rows) at or below this.
PIVOT_TOL = 1e-13
KINDS = ("gram", "qr", "eig", "svd")  # how a representation was factored (see `Basis`)


class Basis:
    """The row space of one representation H~ (r, N), factored once and projected onto many targets.

    H~ already holds the bias row of ones when the net has biases. Predictions T pinv(H~) H~ are
    unique even when the weights are not; this class reproduces pinv's in one of four ways:

    - "gram" (the fast path): rows that are numerically zero (dead ReLU units) dropped, normal
      equations on the row-equilibrated Gram K with a Cholesky factor, taken when the bound
      ||K||_F ||K^-1||_F >= cond_2(K) is at most `GRAM_COND_LIMIT`;
    - "qr": full rank but worse conditioned (up to `QR_COND_LIMIT`): CholeskyQR2 of H~^T, an
      orthonormal basis as accurate as Householder's at these condition numbers;
    - "eig" (rank deficient with a clear gap): a pivoted Cholesky of the Gram keeps independent
      rows, factored by normal equations or CholeskyQR2 as above, when the others are checked on
      H~ to lie within 1e-10 sigma_max (and 1e-8 sigma_min of the kept rows) of their span;
      otherwise an eigendecomposition of the Gram, every
      eigenvalue either above 1e-8 lambda_max or, checked on H~ itself, a singular value below
      1e-10 sigma_max. pinv drops those singular values too unless they lie in the band
      [rtol, 1e-10] sigma_max, where pinv's own answer changes under a perturbation of that size;
    - "svd" (anything else): the SVD of H~ (through a QR of H~^T) with pinv's cutoff
      sigma > rtol * sigma_max, rtol = max(r, N) * eps (torch.linalg.pinv's default).

    Every path ends in `rows` (q, N), rows spanning the same space as H~, and `coef(T)` (c, q)
    with coef(T) @ rows = T pinv(H~) H~: rows hk of H~ with C K^-1 on the Gram path and the
    pivoted one, orthonormal rows V^T with T V on the others.
    """

    def __init__(self, h: Tensor) -> None:
        self.h = h  # (r, N)
        r, n = h.shape
        self.rtol = max(r, n) * EPS
        gram = h @ h.T  # (r, r)
        diag = gram.diagonal()
        self.keep = diag > (self.rtol**2) * float(diag.max()) if r else diag > 0  # rows not ~0
        self.cond = math.inf
        rk = int(self.keep.sum())
        self.kinv: Tensor | None = None  # set when the predictions use normal equations
        self.pivoted = False  # rank deficient, predictions from the rows a pivoted Cholesky kept
        kind = self._gram_path(gram, rk) if 0 < rk <= n else None
        if kind is not None:
            self.kind = kind
        elif rk > 0 and (self._pivot_path(gram) or self._eig_path(gram)):
            self.kind = "eig"
        else:
            self.kind = "svd"
            self._svd_path()

    def _gram_path(self, gram: Tensor, rk: int) -> str | None:
        all_rows = rk == self.h.shape[0]
        k = gram if all_rows else gram[self.keep][:, self.keep]  # (rk, rk)
        scale = k.diagonal().rsqrt()  # (rk,) 1 / row norms
        ke = k * scale[:, None] * scale  # unit diagonal
        low = _cholesky(ke)
        if low is None:
            return None
        kinv = torch.cholesky_inverse(low)  # (rk, rk)
        self.cond = _norm(ke) * _norm(kinv)
        self.hk = self.h if all_rows else self.h[self.keep]  # (rk, N)
        if self.cond <= GRAM_COND_LIMIT:
            self.kinv = kinv * scale[:, None] * scale  # K^-1 of the kept rows
            self.rows = self.hk
            return "gram"
        # Full rank but too ill-conditioned for normal equations: a QR is as accurate as pinv and
        # gives pinv's predictions when every singular value is far above pinv's
        # cutoff. The Gram certifies that only while its smallest eigenvalue is well above its
        # rounding (cond <= QR_COND_LIMIT); then sigma_min(H~) >= cond^-1/2 * min row norm and
        # sigma_max(H~) <= ||H~||_F.
        if self.cond > QR_COND_LIMIT:
            return None
        if not _clear_of_cutoff(1.0 / float(scale.max()) / math.sqrt(self.cond), self.rtol, k):
            return None
        qr = _cholesky_qr2(self.hk, scale, low)
        if qr is None:
            return None
        qt, self.r = qr
        self.v = qt.T  # (N, rk) orthonormal
        self.rows = qt
        return "qr"

    def _pivot_path(self, gram: Tensor) -> bool:
        """Rank deficient with a clear gap, cheaply: independent rows by a pivoted Cholesky.

        The pivoted Cholesky of the row-equilibrated Gram picks rows in turn, each the one
        farthest (relative to its norm) from the span of those before. Two sets of kept rows H_p
        are tried: the rows picked while that relative distance exceeds 1e-4, then those picked
        while it exceeds about 3e-7 (pivots down to 1e-13). H_p is factored as a full-rank
        representation: normal equations when its Gram passes the Gram path's test, CholeskyQR2
        when it passes the QR path's (its singular values far above pinv's cutoff). A set is
        accepted only if, checked on H~ itself, every other row lies within 1e-10 sigma_max and
        1e-8 sigma_min(H_p) of span(H_p): then H~'s singular values past the rank are below 1e-10
        sigma_max (as on the eigendecomposition path) and span(H_p) is H~'s leading row space to
        1e-8.
        """
        keep = self.keep.nonzero().squeeze(1)
        k = gram[keep][:, keep]  # (rk, rk)
        scale = k.diagonal().rsqrt()
        ke = k * scale[:, None] * scale
        low, piv, pivots = _pivoted_cholesky(ke, PIVOT_TOL)
        q = len(pivots)  # squared relative distances, in pick order
        q_coarse = next((i for i, p in enumerate(pivots) if p <= 1e-8), q)
        for size in dict.fromkeys((q_coarse, q)):  # each distinct size once, the smaller first
            if 0 < size < len(keep) and self._kept_rows(gram, keep, ke, scale, low, piv, size):
                return True
        return False

    def _kept_rows(
        self,
        gram: Tensor,
        keep: Tensor,
        ke: Tensor,
        scale: Tensor,
        low: Tensor,
        piv: Tensor,
        q: int,
    ) -> bool:
        """Try the first `q` rows the pivoted Cholesky picked as H_p (see `_pivot_path`)."""
        p, d = piv[:q], piv[q:]  # kept and dependent (among the live rows)
        kpp = ke[p][:, p]
        kinv = torch.cholesky_inverse(low[:q, :q])  # (q, q), equilibrated
        cond = _norm(kpp) * _norm(kinv)
        sp = scale[p]
        hp = self.h[keep[p]]  # (q, N)
        hd = self.h[keep[d]]  # (rk - q, N)
        sigma_min = 1.0 / float(sp.max()) / math.sqrt(cond)  # <= sigma_min(H_p)
        if cond <= GRAM_COND_LIMIT:
            kinv = kinv * sp[:, None] * sp  # K_pp^-1, unscaled
            # Every row of H~ left out (dead rows are within rtol of 0 already) must lie near
            # span(H_p): ||H_d - B H_p||_F with B = K_dp K_pp^-1 bounds the distance from above.
            resid = _norm(hd - (gram[keep[d]][:, keep[p]] @ kinv) @ hp)
            found = {"hk": hp, "kinv": kinv, "rows": hp}
        else:
            # As on the QR path: cond <= QR_COND_LIMIT, and sigma_min(H_p) far above pinv's
            # cutoff of H~ (sigma_max(H~) <= its Frobenius norm).
            if cond > QR_COND_LIMIT or not _clear_of_cutoff(sigma_min, self.rtol, gram):
                return False
            qr = _cholesky_qr2(hp, sp, low[:q, :q])
            if qr is None:
                return False
            qt, r = qr  # (q, N) orthonormal rows spanning H_p's; H_p^T = Q R
            r_inv = torch.linalg.solve_triangular(r, _eye(q, r), upper=True)
            sigma_min = 1.0 / _norm(r_inv)  # a tighter bound
            resid = _norm(hd - (hd @ qt.T) @ qt)  # the distance of H_d from span(H_p)
            found = {"v": qt.T, "rows": qt}
        row_max = math.sqrt(float(gram.diagonal().max()))  # <= sigma_max
        if resid > 1e-10 * row_max or resid > 1e-8 * sigma_min:
            return False
        for name, value in found.items():
            setattr(self, name, value)
        self.cond, self.pivoted = cond, True
        return True

    def _eig_path(self, gram: Tensor) -> bool:
        lam, vec = torch.linalg.eigh(gram)  # ascending
        lam_max = float(lam[-1])
        big = lam > 1e-8 * lam_max
        u = vec[:, big]  # (r, q)
        w = u.T @ self.h  # (q, N) = diag(s) V^T
        # The dropped directions must be negligible on H~ itself: ||H~ - U U^T H~||_F, formed
        # either way round, whichever costs fewer products.
        q = u.shape[1]
        if q < self.h.shape[0]:
            if 2 * q < self.h.shape[0]:
                resid = _norm(self.h - u @ w)
            else:
                resid = _norm(vec[:, ~big].T @ self.h)
            if resid > 1e-10 * math.sqrt(lam_max):
                return False
        self.s = lam[big].sqrt()  # (q,) singular values of H~
        self.u = u
        self.v = (w / self.s[:, None]).T  # (N, q) orthonormal to ~eps * 1e8
        self.rows = self.v.T
        return True

    def _svd_path(self) -> None:
        h = self.h
        if h.shape[0] == 0:  # no rows at all: the predictions are 0
            self.u, self.s, self.v = h.new_zeros(0, 0), h.new_zeros(0), h.new_zeros(h.shape[1], 0)
        else:
            if h.shape[0] <= h.shape[1]:  # H~ = R^T Q^T: the SVD of the small R^T gives H~'s
                q, rr = torch.linalg.qr(h.T)  # (N, r), (r, r)
                u, s, w = torch.linalg.svd(rr.T)
                v = q @ w.T  # (N, r) right singular vectors of H~
            else:
                u, s, vh = torch.linalg.svd(h, full_matrices=False)
                v = vh.T
            sel = s > self.rtol * float(s[0])
            self.u, self.s, self.v = u[:, sel], s[sel], v[:, sel]  # (r, q), (q,), (N, q)
        self.rows = self.v.T

    def coef(self, t: Tensor) -> Tensor:
        """Coefficients (c, q) of the predictions of targets T (c, N) in `rows`."""
        if self.kinv is not None:
            return (t @ self.hk.T) @ self.kinv
        return t @ self.v

    def project(self, t: Tensor) -> Tensor:
        """T pinv(H~) H~ for targets T (c, N): the least-squares predictions, (c, N)."""
        return self.coef(t) @ self.rows

    def sse(self, t: Tensor, tt: float) -> float:
        """||T - T pinv(H~) H~||_F^2 for one target T (m, N) with ||T||_F^2 = tt.

        On the fast path it is tt - trace(C K^-1 C^T) with C = T H~^T when the error of that
        difference, about eps * cond(K) * tt, is below 1e-7 of it; otherwise the residual is formed.
        """
        if self.kind != "gram" or self.kinv is None:
            return float((t - self.project(t)).square().sum())
        c = t @ self.hk.T  # (m, rk)
        w = c @ self.kinv  # (m, rk)
        value = tt - float(torch.vdot(w.flatten(), c.flatten()))
        if 4 * self.cond * EPS * tt <= 1e-7 * value:
            return value
        return float((t - w @ self.hk).square().sum())

    def weights(self, t: Tensor) -> Tensor:
        """The minimum-norm least-squares weights T pinv(H~), (m, r); the bias is the last column."""
        if self.kind == "gram":
            assert self.kinv is not None
            w = t.new_zeros(t.shape[0], self.h.shape[0])
            w[:, self.keep] = (t @ self.hk.T) @ self.kinv
            return w
        if self.pivoted:  # the kept rows give the predictions; the minimum norm needs U, s
            full = Basis.__new__(Basis)
            full.h, full.rtol = self.h, self.rtol
            if not full._eig_path(self.h @ self.h.T):
                full._svd_path()
            return ((t @ full.v) / full.s) @ full.u.T
        if self.kind == "qr":  # pinv(H~_k) = q r^-T, so W_k r^T = T q
            w = t.new_zeros(t.shape[0], self.h.shape[0])
            w[:, self.keep] = torch.linalg.solve_triangular(
                self.r.T, t @ self.v, upper=False, left=False
            )
            return w
        return ((t @ self.v) / self.s) @ self.u.T


def _pivoted_cholesky(a: Tensor, tol: float) -> tuple[Tensor, Tensor, list[float]]:
    """The Cholesky factor of a symmetric positive semidefinite a (n, n) with diagonal pivoting.

    Each step picks the row with the largest remaining pivot (the diagonal of the Schur
    complement: for a row-equilibrated Gram, the squared relative distance of that row from the
    span of the rows picked before) and stops once it is at or below `tol`. Returns L (q, q)
    lower triangular with L L^T = a[piv[:q]][:, piv[:q]], the order `piv` (n,) of all rows, the
    q picked first, and the q pivots in pick order.

    torch has no pivoted Cholesky, and the greedy loop, one small step per picked row, costs a
    dozen tensor operations a step in torch (and a device round trip a step off the CPU). So
    this one factorization runs through LAPACK's `dpstrf` on the host, for every device: only
    the n x n matrix goes there, and only the factor and the order come back.
    """
    chol, piv, q, _ = lapack.dpstrf(a.cpu().numpy(), tol=tol, lower=1)
    order = torch.from_numpy(piv.astype(np.int64) - 1).to(a.device)  # 0-based
    low = torch.from_numpy(np.tril(chol[:q, :q])).to(a.device)
    return low, order, np.square(chol.diagonal()[:q]).tolist()


def _cholesky_qr2(hk: Tensor, scale: Tensor, l1: Tensor) -> tuple[Tensor, Tensor] | None:
    """CholeskyQR2 of A = (D H_k)^T, D = diag(scale), given the Cholesky factor l1 of A^T A.

    A = Q1 L1^T, then Q1 = Q L2^T from Q1's Gram. Q is orthonormal and spans H_k's rows to
    ~eps * cond(A) (as Householder's) while cond(A) <= 1e6, with half the work. Returns Q^T (rk, N)
    and R (rk, rk) upper triangular with H_k^T = Q R, or None if a factorization fails.
    """
    q1t = torch.linalg.solve_triangular(l1, hk * scale[:, None], upper=False)  # (rk, N) = Q1^T
    l2 = _cholesky(q1t @ q1t.T)
    if l2 is None:
        return None
    qt = torch.linalg.solve_triangular(l2, q1t, upper=False)  # (rk, N) = Q^T
    return qt, (l1 @ l2).T / scale


def _cholesky(a: Tensor) -> Tensor | None:
    """The lower Cholesky factor L (r, r) of a symmetric positive definite a = L L^T, or None."""
    low, info = torch.linalg.cholesky_ex(a)
    return low if int(info) == 0 else None


def _eye(n: int, like: Tensor) -> Tensor:
    """The identity of size n, with `like`'s dtype and device."""
    return torch.eye(n, dtype=like.dtype, device=like.device)


def _clear_of_cutoff(sigma_min: float, rtol: float, gram: Tensor) -> bool:
    """Whether `sigma_min` lies 1e3 times above pinv's cutoff rtol * sigma_max.

    `sigma_min` bounds from below the smallest singular value of the rows whose Gram is `gram`;
    their Frobenius norm, sqrt(trace(gram)), bounds sigma_max from above.
    """
    return sigma_min >= 1e3 * rtol * math.sqrt(float(gram.diagonal().sum()))


def _norm(a: Tensor) -> float:
    """The Frobenius norm of a 2-D tensor."""
    return float(torch.linalg.vector_norm(a))


def tilde(h: Tensor, bias: bool) -> Tensor:
    """H~ = [H; 1^T] (d + 1, N) with a bias row, else H itself, as a contiguous tensor."""
    if not bias:
        return h.contiguous()
    return torch.cat([h, h.new_ones(1, h.shape[1])])
