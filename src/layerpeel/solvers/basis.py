"""Least-squares projections onto the row space of one representation, with pinv's answers.

`Basis(h)` factors a representation H~ (r, N) once; `project`, `sse` and `weights` then give
T pinv(H~) H~, ||T - T pinv(H~) H~||_F^2 and T pinv(H~) for many targets T (c, N). Arrays are
float64 numpy. Large products go through numpy's BLAS, which measured 20-35 % faster than torch's
at r ~ 100, N ~ 800 on one thread and uses a symmetric rank-k update for H~ H~^T; the
factorizations go through whichever of the two measured faster at those sizes: torch for
Cholesky (with its inverse) and QR, numpy for eigh and SVD.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from scipy.linalg import lapack

EPS = float(np.finfo(np.float64).eps)
# The Gram (normal-equation) fast path is taken only when a bound on the condition number of the
# row-equilibrated Gram is at most this; its predictions are then within ~1e-8 of pinv's.
GRAM_COND_LIMIT = 1e8
# Above that, a QR of H~ is used while the Gram still certifies full rank.
QR_COND_LIMIT = 1e12
KINDS = ("gram", "qr", "eig", "svd")  # how a representation was factored (see `Basis`)


class Basis:
    """The row space of one representation H~ (r, N), factored once and projected onto many targets.

    H~ already holds the bias row of ones when the net has biases. Predictions T pinv(H~) H~ are
    unique even when the weights are not; this class reproduces pinv's in one of four ways:

    - "gram" (the fast path): rows that are numerically zero (dead ReLU units) dropped, normal
      equations on the row-equilibrated Gram K with a Cholesky factor, taken when the bound
      ||K||_F ||K^-1||_F >= cond_2(K) is at most `GRAM_COND_LIMIT`;
    - "qr": full rank but worse conditioned (up to `QR_COND_LIMIT`): a Householder QR of H~^T;
    - "eig" (rank deficient with a clear gap): an eigendecomposition of the Gram, every eigenvalue
      either above 1e-8 lambda_max or, checked on H~ itself, a singular value below
      1e-10 sigma_max, which pinv drops too unless it lies in the band [rtol, 1e-10] sigma_max
      where pinv's own answer changes under a perturbation of that size;
    - "svd" (anything else): the SVD of H~ (through a QR of H~^T) with pinv's cutoff
      sigma > rtol * sigma_max, rtol = max(r, N) * eps (torch.linalg.pinv's default).

    Every path ends in `rows` (q, N), rows spanning the same space as H~, and `coef(T)` (c, q)
    with coef(T) @ rows = T pinv(H~) H~: the hk rows of H~ with C K^-1 on the Gram path,
    orthonormal rows V^T with T V on the others.
    """

    def __init__(self, h: np.ndarray) -> None:
        self.h = h  # (r, N)
        r, n = h.shape
        self.rtol = max(r, n) * EPS
        gram = h @ h.T  # (r, r); numpy takes the symmetric rank-k update for a @ a.T
        diag = gram.diagonal()
        self.keep = diag > (self.rtol**2) * float(diag.max()) if r else diag > 0  # rows not ~0
        self.cond = float("inf")
        rk = int(self.keep.sum())
        self.kinv: np.ndarray | None = None  # set when the predictions use normal equations
        kind = self._gram_path(gram, rk) if 0 < rk <= n else None
        if kind is not None:
            self.kind = kind
        elif rk > 0 and (self._pivot_path(gram) or self._eig_path(gram)):
            self.kind = "eig"
        else:
            self.kind = "svd"
            self._svd_path()

    def _gram_path(self, gram: np.ndarray, rk: int) -> str | None:
        all_rows = rk == self.h.shape[0]
        k = gram if all_rows else gram[np.ix_(self.keep, self.keep)]  # (rk, rk)
        scale = 1.0 / np.sqrt(k.diagonal())  # (rk,) 1 / row norms
        ke = k * scale[:, None]
        ke *= scale  # unit diagonal
        ke_norm = float(np.linalg.norm(ke))
        # LAPACK through scipy, in place: ke is symmetric, so its transpose is the same matrix in
        # Fortran order. The lower triangle receives the Cholesky factor, then that of ke^-1.
        chol, info = lapack.dpotrf(ke.T, lower=1, clean=0, overwrite_a=1)
        if info != 0:
            return None
        inv, info = lapack.dpotri(chol, lower=1, overwrite_c=1)
        if info != 0:
            return None
        kinv = np.where(_lower(rk), inv, inv.T)  # (rk, rk), both triangles
        self.cond = ke_norm * float(np.linalg.norm(kinv))
        self.hk = self.h if all_rows else self.h[self.keep]  # (rk, N)
        if self.cond <= GRAM_COND_LIMIT:
            kinv *= scale[:, None]
            kinv *= scale
            self.kinv = kinv  # K^-1 of the kept rows
            self.rows = self.hk
            return "gram"
        # Full rank but too ill-conditioned for normal equations: a Householder QR is as accurate
        # as pinv and gives pinv's predictions when every singular value is far above pinv's
        # cutoff. The Gram certifies that only while its smallest eigenvalue is well above its
        # rounding (cond <= QR_COND_LIMIT); then sigma_min(H~) >= cond^-1/2 * min row norm and
        # sigma_max(H~) <= ||H~||_F.
        if self.cond > QR_COND_LIMIT:
            return None
        min_norm = 1.0 / float(scale.max())
        if min_norm < 1e3 * self.rtol * (self.cond * float(k.diagonal().sum())) ** 0.5:
            return None
        q, r = torch.linalg.qr(torch.from_numpy(self.hk.T))  # (N, rk), (rk, rk): H~_k = r^T q^T
        self.v, self.r = q.numpy(), r.numpy()
        self.rows = self.v.T
        return "qr"

    def _pivot_path(self, gram: np.ndarray) -> bool:
        """Rank deficient with a clear gap, cheaply: independent rows by a pivoted Cholesky.

        The pivoted Cholesky of the row-equilibrated Gram keeps rows until every other row is,
        relative to its norm, within 1e-4 of their span. It is accepted only if the kept rows are
        well conditioned (the Gram path's test) and, checked on H~ itself, every other row lies
        within 1e-10 sigma_max and 1e-8 sigma_min(kept rows) of their span: then H~'s singular
        values past the rank are below 1e-10 sigma_max (as on the eigendecomposition path) and
        the span of the kept rows is H~'s leading row space to 1e-8.
        """
        keep = np.flatnonzero(self.keep)
        k = gram[np.ix_(keep, keep)]  # (rk, rk)
        scale = 1.0 / np.sqrt(k.diagonal())
        ke = k * scale[:, None]
        ke *= scale
        chol, piv, q, info = lapack.dpstrf(ke, tol=1e-8, lower=1)
        if q == 0 or q == len(keep):
            return False
        p, d = piv[:q] - 1, piv[q:] - 1  # 0-based: kept and dependent (among the live rows)
        kpp = ke[np.ix_(p, p)]
        inv, info = lapack.dpotri(chol[:q, :q], lower=1)
        if info != 0:
            return False
        kinv = np.where(_lower(q), inv, inv.T)  # (q, q) inverse of the equilibrated kpp
        cond = float(np.linalg.norm(kpp)) * float(np.linalg.norm(kinv))
        if cond > GRAM_COND_LIMIT:
            return False
        sp = scale[p]
        kinv *= sp[:, None]
        kinv *= sp  # K_pp^-1, unscaled
        hp = self.h[keep[p]]  # (q, N)
        hd = self.h[keep[d]]  # (rk - q, N)
        # Every row of H~ left out (dead rows are within rtol of 0 already) must lie near span(H_p):
        # ||H_d - B H_p||_F with B = K_dp K_pp^-1 bounds the distance from above.
        resid = float(np.linalg.norm(hd - mm(mm(gram[np.ix_(keep[d], keep[p])], kinv), hp)))
        row_max = float(np.sqrt(gram.diagonal().max()))  # <= sigma_max
        sigma_min = float(1.0 / sp.max()) / np.sqrt(cond)  # <= sigma_min(H_p)
        if resid > 1e-10 * row_max or resid > 1e-8 * sigma_min:
            return False
        self.hk, self.kinv, self.rows, self.cond = hp, kinv, hp, cond
        return True

    def _eig_path(self, gram: np.ndarray) -> bool:
        lam, vec = np.linalg.eigh(gram)  # ascending
        big = lam > 1e-8 * float(lam[-1])
        u = vec[:, big]  # (r, q)
        w = mm(u.T, self.h)  # (q, N) = diag(s) V^T
        # The dropped directions must be negligible on H~ itself: ||H~ - U U^T H~||_F, formed
        # either way round, whichever costs fewer products.
        q = u.shape[1]
        if q < self.h.shape[0]:
            if 2 * q < self.h.shape[0]:
                resid = float(np.linalg.norm(self.h - mm(u, w)))
            else:
                resid = float(np.linalg.norm(mm(vec[:, ~big].T, self.h)))
            if resid > 1e-10 * float(np.sqrt(lam[-1])):
                return False
        self.s = np.sqrt(lam[big])  # (q,) singular values of H~
        self.u = u
        self.v = (w / self.s[:, None]).T  # (N, q) orthonormal to ~eps * 1e8
        self.rows = self.v.T
        return True

    def _svd_path(self) -> None:
        h = self.h
        if h.shape[0] == 0:  # no rows at all: the predictions are 0
            self.u, self.s, self.v = np.zeros((0, 0)), np.zeros(0), np.zeros((h.shape[1], 0))
        elif h.shape[0] <= h.shape[1]:  # H~ = R^T Q^T: the SVD of the small R^T gives H~'s
            q, rr = torch.linalg.qr(torch.from_numpy(h.T))  # (N, r), (r, r)
            u, s, w = np.linalg.svd(rr.numpy().T)
            v = q.numpy() @ w.T  # (N, r) right singular vectors of H~
            sel = s > self.rtol * float(s[0])
            self.u, self.s, self.v = u[:, sel], s[sel], v[:, sel]  # (r, q), (q,), (N, q)
        else:
            u, s, vh = np.linalg.svd(h, full_matrices=False)
            sel = s > self.rtol * float(s[0])
            self.u, self.s, self.v = u[:, sel], s[sel], vh[sel].T
        self.rows = self.v.T

    def coef(self, t: np.ndarray) -> np.ndarray:
        """Coefficients (c, q) of the predictions of targets T (c, N) in `rows`."""
        if self.kinv is not None:
            return mm(mm(t, self.hk.T), self.kinv)
        return mm(t, self.v)

    def project(self, t: np.ndarray) -> np.ndarray:
        """T pinv(H~) H~ for targets T (c, N): the least-squares predictions, (c, N)."""
        return mm(self.coef(t), self.rows)

    def sse(self, t: np.ndarray, tt: float) -> float:
        """||T - T pinv(H~) H~||_F^2 for one target T (m, N) with ||T||_F^2 = tt.

        On the fast path it is tt - trace(C K^-1 C^T) with C = T H~^T when the error of that
        difference, about eps * cond(K) * tt, is below 1e-7 of it; otherwise the residual is formed.
        """
        if self.kind != "gram":
            return float(np.square(t - self.project(t)).sum())
        c = mm(t, self.hk.T)  # (m, rk)
        w = mm(c, self.kinv)  # (m, rk)
        value = tt - float(np.einsum("ij,ij->", w, c))
        if 4 * self.cond * EPS * tt <= 1e-7 * value:
            return value
        return float(np.square(t - w @ self.hk).sum())

    def weights(self, t: np.ndarray) -> np.ndarray:
        """The minimum-norm least-squares weights T pinv(H~), (m, r); the bias is the last column."""
        if self.kind == "gram":
            w = np.zeros((t.shape[0], self.h.shape[0]))
            w[:, self.keep] = (t @ self.hk.T) @ self.kinv
            return w
        if self.kind == "eig" and self.kinv is not None:  # pivoted: the minimum norm needs U, s
            full = Basis.__new__(Basis)
            full.h, full.rtol = self.h, self.rtol
            if not full._eig_path(self.h @ self.h.T):
                full._svd_path()
            return ((t @ full.v) / full.s) @ full.u.T
        if self.kind == "qr":  # pinv(H~_k) = q r^-T, so W_k r^T = T q
            w = np.zeros((t.shape[0], self.h.shape[0]))
            wk = torch.linalg.solve_triangular(
                torch.from_numpy(self.r).T, torch.from_numpy(t @ self.v), upper=False, left=False
            )
            w[:, self.keep] = wk.numpy()
            return w
        return ((t @ self.v) / self.s) @ self.u.T


def mm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a @ b (float64) through torch's BLAS on the numpy arrays' memory, into `out` if given."""
    if out is None:
        return torch.mm(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    torch.mm(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))
    return out


@functools.cache
def _lower(n: int) -> np.ndarray:
    """The (n, n) mask of the lower triangle, diagonal included."""
    return np.tri(n, dtype=bool)


def tilde(h: np.ndarray, bias: bool) -> np.ndarray:
    """H~ = [H; 1^T] (d + 1, N) with a bias row, else H itself, as a C-contiguous float64 array."""
    out = np.empty((h.shape[0] + int(bias), h.shape[1]))
    out[: h.shape[0]] = h
    if bias:
        out[-1] = 1.0
    return out
