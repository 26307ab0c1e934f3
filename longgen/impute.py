"""Known-content imputation in x0 space (``EngineConfig(impute="spline")``).

A window's guided prediction of the clean sample, x0_hat, is moved onto the content the window
observes (keyframes, the finished overlap) before the base step uses it: at every observed
position x0_hat takes the observed value, and the residual (observed - x0_hat) is carried into
the generated positions between them by a natural cubic spline along the long axis (held
constant beyond the first and last observed position). The base step then moves the window
toward a clean sample that meets what it observes, and the next evaluation sees it; the last
step's output is that corrected x0, so observed content is met exactly.

Why: ALM's likelihood and sync terms condition the window through the observed positions of the
NOISY state, and the model's x0 prediction keeps only what its prior allows at the current noise
level. A prior that is stiff along the long axis (the builtin motion prior: its time spectrum is
damped above 0.01 cycles per frame) treats an isolated keyframe as noise and smooths it away, so
the window bends only part of the way to its keyframes (196 frames, keyframes every 10: the
conditional mean of the very component ALM commits to meets them exactly, ALM misses by 0.75 m).

No model evaluation is added; the correction is linear in x0_hat and costs a (T x n) matrix
product per observed pattern.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .denoiser import check_prediction_type, to_x0

IMPUTE_MODES = ("none", "spline")


@lru_cache(maxsize=64)
def spline_matrix(knots: tuple[int, ...], length: int) -> torch.Tensor:
    """(length, n) float64: values at 0..length-1 of the natural cubic spline through
    ``knots`` (sorted positions) as a linear map of the n knot values; constant beyond the ends."""
    n = len(knots)
    x = torch.tensor(knots, dtype=torch.float64)
    if n == 1:
        return torch.ones(length, 1, dtype=torch.float64)
    h = x[1:] - x[:-1]                                    # (n-1,)
    # second derivatives m (m_0 = m_{n-1} = 0): A m_int = B y
    eye = torch.eye(n, dtype=torch.float64)
    if n > 2:
        A = torch.zeros(n - 2, n - 2, dtype=torch.float64)
        B = torch.zeros(n - 2, n, dtype=torch.float64)
        for k in range(1, n - 1):
            A[k - 1, k - 1] = (h[k - 1] + h[k]) / 3
            if k > 1:
                A[k - 1, k - 2] = h[k - 1] / 6
            if k < n - 2:
                A[k - 1, k] = h[k] / 6
            B[k - 1] = (eye[k + 1] - eye[k]) / h[k] - (eye[k] - eye[k - 1]) / h[k - 1]
        m = torch.cat([torch.zeros(1, n, dtype=torch.float64), torch.linalg.solve(A, B),
                       torch.zeros(1, n, dtype=torch.float64)])   # (n, n): m = M y
    else:
        m = torch.zeros(n, n, dtype=torch.float64)
    t = torch.arange(length, dtype=torch.float64).clamp(float(x[0]), float(x[-1]))
    j = (torch.searchsorted(x, t, right=True) - 1).clamp(0, n - 2)
    hj = h[j][:, None]
    a = ((x[j + 1] - t) / h[j])[:, None]
    b = 1 - a
    return (a * eye[j] + b * eye[j + 1]
            + ((a ** 3 - a) * m[j] + (b ** 3 - b) * m[j + 1]) * hj ** 2 / 6)


def from_x0(x0: torch.Tensor, x: torch.Tensor, abar, prediction_type: str) -> torch.Tensor:
    """The model output (in ``prediction_type``) whose x0 at ``x`` is ``x0``: inverse of to_x0."""
    a = torch.as_tensor(abar, dtype=x.dtype, device=x.device)
    if prediction_type == "sample":
        return x0
    eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    if prediction_type == "flow":
        return (x - (a.sqrt() + (1 - a).sqrt()) * x0) / (1 - a).sqrt()
    check_prediction_type(prediction_type)


class KnownImputer:
    """x0 -> x0 moved onto ``values`` where ``known`` (both (G, *shape)), the residual spread
    along the long ``axis`` (negative) by :func:`spline_matrix`, per row of positions with one
    pattern of known positions (rows with none are left alone)."""

    def __init__(self, values: torch.Tensor, known: torch.Tensor, axis: int):
        self.axis = axis
        self.values = values.movedim(axis, -1)                       # (G, ..., T)
        k = known.movedim(axis, -1) > 0.5
        self.T = k.shape[-1]
        self.rows = []                                               # (g, flat rows, matrix, knots)
        for g in range(k.shape[0]):
            flat = k[g].reshape(-1, self.T)
            pats, inv = torch.unique(flat, dim=0, return_inverse=True)
            for p in range(pats.shape[0]):
                knots = tuple(int(v) for v in pats[p].nonzero().flatten())
                if knots:
                    rows = (inv == p).nonzero().flatten()
                    self.rows.append((g, rows, spline_matrix(knots, self.T), torch.tensor(knots)))

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        out = x0.movedim(self.axis, -1).clone()
        shp = out.shape
        flat, vals = out.reshape(shp[0], -1, self.T), self.values.reshape(shp[0], -1, self.T)
        for g, rows, P, knots in self.rows:
            r = (vals[g][rows][:, knots] - flat[g][rows][:, knots]).double()   # (rows, n)
            flat[g, rows] += (r @ P.T.to(r.device)).to(flat.dtype)
        return flat.reshape(shp).movedim(-1, self.axis)


class ImputingEvaluator:
    """An :class:`~longgen.denoiser.Evaluator` whose guided outputs (the base step's) have their
    x0 moved onto the known content by ``imputer``; set ``.i`` (the step) before each step. Condition-only outputs (ALM's likelihood terms) are the model's own."""

    def __init__(self, ev, sch, imputer: KnownImputer):
        object.__setattr__(self, "ev", ev)
        self.sch, self.imputer, self.i = sch, imputer, 0

    def __getattr__(self, name):
        return getattr(self.ev, name)

    def __setattr__(self, name, value):
        if name == "last_guided":
            setattr(self.ev, name, value)
        else:
            object.__setattr__(self, name, value)

    def __call__(self, t, requests, return_cond: bool = False):
        res = self.ev(t, requests, return_cond=return_cond)
        out = list(res[0] if return_cond else res)
        pt, ab = self.ev.denoiser.prediction_type, self.sch.abar[self.i]
        for k, r in enumerate(requests):
            if r.guided and r.rows is None and r.x.shape[0] == self.imputer.values.shape[0]:
                x0 = to_x0(out[k], r.x, ab.to(r.x.dtype), pt)
                out[k] = from_x0(self.imputer(x0), r.x, ab.to(r.x.dtype), pt).to(out[k].dtype)
                if self.ev.last_guided is not None and self.ev.last_guided[0] is r.x:
                    self.ev.last_guided = (r.x, out[k])
        return (out, res[1]) if return_cond else out
