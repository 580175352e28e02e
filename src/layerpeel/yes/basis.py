"""Least-squares projections onto the row space of one representation, with pinv's answers.

`Basis(h)` factors a representation H~ (r, N) once; `project`, `sse` and `weights` then give
T pinv(H~) H~, ||T - T pinv(H~) H~||_F^2 and T pinv(H~) for many targets T (c, N). Arrays are
float64 numpy. The products (r ~ 100, N ~ 800) go through torch's BLAS, which measured 1.2-1.5x
faster than numpy's on the Intel Xeon used for the benchmarks (one thread; an earlier
measurement on an AMD EPYC favoured numpy's); the factorizations of the r x r Grams call LAPACK
through scipy, whose calls measured 25-60 us cheaper than torch's wrappers at that size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.linalg import lapack

EPS = float(np.finfo(np.float64).eps)
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

    def __init__(self, h: np.ndarray) -> None:
        self.h = h  # (r, N)
        r, n = h.shape
        self.rtol = max(r, n) * EPS
        gram = mm(h, h.T)  # (r, r)
        diag = gram.diagonal()
        self.keep = diag > (self.rtol**2) * float(diag.max()) if r else diag > 0  # rows not ~0
        self.cond = float("inf")
        rk = int(self.keep.sum())
        self.kinv: np.ndarray | None = None  # set when the predictions use normal equations
        self.pivoted = False  # rank deficient, predictions from the rows a pivoted Cholesky kept
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
        ke_norm = _norm(ke)
        kinv = _spd_inverse(ke)  # (rk, rk); ke is overwritten
        if kinv is None:
            return None
        self.cond = ke_norm * _norm(kinv)
        self.hk = self.h if all_rows else self.h[self.keep]  # (rk, N)
        if self.cond <= GRAM_COND_LIMIT:
            kinv *= scale[:, None]
            kinv *= scale
            self.kinv = kinv  # K^-1 of the kept rows
            self.rows = self.hk
            return "gram"
        # Full rank but too ill-conditioned for normal equations: a QR is as accurate as pinv and
        # gives pinv's predictions when every singular value is far above pinv's
        # cutoff. The Gram certifies that only while its smallest eigenvalue is well above its
        # rounding (cond <= QR_COND_LIMIT); then sigma_min(H~) >= cond^-1/2 * min row norm and
        # sigma_max(H~) <= ||H~||_F.
        if self.cond > QR_COND_LIMIT:
            return None
        if not _clear_of_cutoff(1.0 / float(scale.max()) / np.sqrt(self.cond), self.rtol, k):
            return None
        l1 = _cholesky(k * scale[:, None] * scale[None, :])
        qr = None if l1 is None else _cholesky_qr2(self.hk, scale, l1)
        if qr is None:
            return None
        qt, self.r = qr
        self.v = qt.T  # (N, rk) orthonormal
        self.rows = qt
        return "qr"

    def _pivot_path(self, gram: np.ndarray) -> bool:
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
        keep = np.flatnonzero(self.keep)
        k = gram[np.ix_(keep, keep)]  # (rk, rk)
        scale = 1.0 / np.sqrt(k.diagonal())
        ke = k * scale[:, None]
        ke *= scale
        chol, piv, q, info = lapack.dpstrf(ke, tol=PIVOT_TOL, lower=1)
        pivots = np.square(chol.diagonal()[:q])  # squared relative distances, in pick order
        q_coarse = int(np.argmax(pivots <= 1e-8)) if (pivots <= 1e-8).any() else q
        for size in dict.fromkeys((q_coarse, q)):  # each distinct size once, the smaller first
            if 0 < size < len(keep) and self._kept_rows(gram, keep, ke, scale, chol, piv, size):
                return True
        return False

    def _kept_rows(
        self,
        gram: np.ndarray,
        keep: np.ndarray,
        ke: np.ndarray,
        scale: np.ndarray,
        chol: np.ndarray,
        piv: np.ndarray,
        q: int,
    ) -> bool:
        """Try the first `q` rows the pivoted Cholesky picked as H_p (see `_pivot_path`)."""
        p, d = piv[:q] - 1, piv[q:] - 1  # 0-based: kept and dependent (among the live rows)
        kpp = ke[np.ix_(p, p)]
        lpp = np.tril(chol[:q, :q])  # the Cholesky factor of kpp
        kinv = _cholesky_inverse(lpp)  # (q, q), equilibrated
        cond = _norm(kpp) * _norm(kinv)
        sp = scale[p]
        hp = self.h[keep[p]]  # (q, N)
        hd = self.h[keep[d]]  # (rk - q, N)
        sigma_min = float(1.0 / sp.max()) / np.sqrt(cond)  # <= sigma_min(H_p)
        if cond <= GRAM_COND_LIMIT:
            kinv *= sp[:, None]
            kinv *= sp  # K_pp^-1, unscaled
            # Every row of H~ left out (dead rows are within rtol of 0 already) must lie near
            # span(H_p): ||H_d - B H_p||_F with B = K_dp K_pp^-1 bounds the distance from above.
            resid = _norm(hd - mm(mm(gram[np.ix_(keep[d], keep[p])], kinv), hp))
            rows: dict[str, Any] = {"hk": hp, "kinv": kinv, "rows": hp}
        else:
            # As on the QR path: cond <= QR_COND_LIMIT, and sigma_min(H_p) far above pinv's
            # cutoff of H~ (sigma_max(H~) <= its Frobenius norm).
            if cond > QR_COND_LIMIT:
                return False
            if not _clear_of_cutoff(sigma_min, self.rtol, gram):
                return False
            qr = _cholesky_qr2(hp, sp, lpp)
            if qr is None:
                return False
            qt, r = qr  # (q, N) orthonormal rows spanning H_p's; H_p^T = Q R
            r_inv = torch.linalg.solve_triangular(torch.from_numpy(r), _eye(q), upper=True)
            sigma_min = 1.0 / float(torch.linalg.matrix_norm(r_inv))  # a tighter bound
            resid = _norm(hd - mm(mm(hd, qt.T), qt))  # the distance of H_d from span(H_p)
            rows = {"v": qt.T, "rows": qt}
        row_max = float(np.sqrt(gram.diagonal().max()))  # <= sigma_max
        if resid > 1e-10 * row_max or resid > 1e-8 * sigma_min:
            return False
        for name, value in rows.items():
            setattr(self, name, value)
        self.cond, self.pivoted = cond, True
        return True

    def _eig_path(self, gram: np.ndarray) -> bool:
        lam_t, vec_t = torch.linalg.eigh(torch.from_numpy(gram))  # ascending
        lam, vec = lam_t.numpy(), vec_t.numpy()
        big = lam > 1e-8 * float(lam[-1])
        u = vec[:, big]  # (r, q)
        w = mm(u.T, self.h)  # (q, N) = diag(s) V^T
        # The dropped directions must be negligible on H~ itself: ||H~ - U U^T H~||_F, formed
        # either way round, whichever costs fewer products.
        q = u.shape[1]
        if q < self.h.shape[0]:
            if 2 * q < self.h.shape[0]:
                resid = _norm(self.h - mm(u, w))
            else:
                resid = _norm(mm(vec[:, ~big].T, self.h))
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
            u, s, w = (a.numpy() for a in torch.linalg.svd(rr.T))
            v = mm(q.numpy(), w.T)  # (N, r) right singular vectors of H~
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
        if self.kind != "gram" or self.kinv is None:
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
        if self.pivoted:  # the kept rows give the predictions; the minimum norm needs U, s
            full = Basis.__new__(Basis)
            full.h, full.rtol = self.h, self.rtol
            if not full._eig_path(mm(self.h, self.h.T)):
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
    """A @ b (float64) through torch's BLAS on the numpy arrays' memory, into `out` if given."""
    if out is None:
        return torch.mm(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    torch.mm(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))
    return out


def _solve_lower(low: np.ndarray, b: np.ndarray) -> np.ndarray:
    """low^-1 b for a lower triangular low (r, r) and b (r, N), by torch's BLAS."""
    lt = torch.from_numpy(np.ascontiguousarray(low))
    return torch.linalg.solve_triangular(lt, torch.from_numpy(b), upper=False).numpy()


def _cholesky_qr2(
    hk: np.ndarray, scale: np.ndarray, l1: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """CholeskyQR2 of A = (D H_k)^T, D = diag(scale), given the Cholesky factor l1 of A^T A.

    A = Q1 L1^T, then Q1 = Q L2^T from Q1's Gram. Q is orthonormal and spans H_k's rows to
    ~eps * cond(A) (as Householder's) while cond(A) <= 1e6, with half the work. Returns Q^T (rk, N)
    and R (rk, rk) upper triangular with H_k^T = Q R, or None if a factorization fails.
    """
    q1t = _solve_lower(l1, hk * scale[:, None])  # (rk, N) = Q1^T
    l2 = _cholesky(mm(q1t, q1t.T))
    if l2 is None:
        return None
    qt = _solve_lower(l2, q1t)  # (rk, N) = Q^T
    return qt, (l1 @ l2).T / scale


def _cholesky(a: np.ndarray) -> np.ndarray | None:
    """The lower Cholesky factor L (r, r) of a symmetric positive definite a = L L^T, or None."""
    chol, info = lapack.dpotrf(a, lower=1, clean=1)
    return chol if info == 0 else None


def _spd_inverse(a: np.ndarray) -> np.ndarray | None:
    """a^-1 for a symmetric positive definite, C-contiguous a (overwritten), or None.

    The Cholesky factor through scipy's LAPACK, in place (a's transpose is the same matrix in
    Fortran order; the cheapest call measured at r ~ 100), the inverse as L^-T L^-1 from one
    triangular solve and one product through torch, so that `torch.set_num_threads` governs it
    (OpenBLAS's threaded `dpotri` made a call 8x slower on a busy machine at its default
    threads). At r ~ 100 that measured as fast as `torch.cholesky_inverse` alone, and 3 % faster
    inside the YES walk. The walk holds OpenBLAS to one thread meanwhile.
    """
    chol, info = lapack.dpotrf(a.T, lower=1, clean=1, overwrite_a=1)
    if info != 0:
        return None
    return _cholesky_inverse(chol)


def _cholesky_inverse(low: np.ndarray) -> np.ndarray:
    """(L L^T)^-1 = L^-T L^-1 for a lower triangular Cholesky factor `low` (r, r)."""
    low_t = torch.from_numpy(low)
    inv_low = torch.linalg.solve_triangular(low_t, _eye(low_t.shape[0]), upper=False)  # L^-1
    return torch.mm(inv_low.T, inv_low).numpy()


_EYES: dict[int, torch.Tensor] = {}


def _eye(n: int) -> torch.Tensor:
    """The float64 identity of size n, kept (read only)."""
    eye = _EYES.get(n)
    if eye is None:
        eye = _EYES[n] = torch.eye(n, dtype=torch.float64)
    return eye


def _clear_of_cutoff(sigma_min: float, rtol: float, gram: np.ndarray) -> bool:
    """Whether `sigma_min` lies 1e3 times above pinv's cutoff rtol * sigma_max.

    `sigma_min` bounds from below the smallest singular value of the rows whose Gram is `gram`;
    their Frobenius norm bounds sigma_max from above.
    """
    return sigma_min >= 1e3 * rtol * _trace_norm(gram)


def _trace_norm(gram: np.ndarray) -> float:
    """sqrt(trace(gram)): the Frobenius norm of the rows whose Gram it is, >= their sigma_max."""
    return float(np.sqrt(gram.diagonal().sum()))


def _norm(a: np.ndarray) -> float:
    """The Frobenius norm of a 2-D array, without BLAS (OpenBLAS threads its dot products)."""
    return float(np.sqrt(np.einsum("ij,ij->", a, a)))


def tilde(h: np.ndarray, bias: bool) -> np.ndarray:
    """H~ = [H; 1^T] (d + 1, N) with a bias row, else H itself, as a C-contiguous float64 array."""
    out = np.empty((h.shape[0] + int(bias), h.shape[1]))
    out[: h.shape[0]] = h
    if bias:
        out[-1] = 1.0
    return out
