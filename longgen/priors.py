"""Builtin reference priors: Gaussian mixtures with separable per-axis covariances and exact epsilon.

Component k of a prior over tensors of shape ``(n_1, ..., n_d)`` is ``N(mu_k, C_k1 ⊗ ... ⊗ C_kd)``.
Forward noising keeps every component Gaussian: ``x_t | k ~ N(sqrt(a) mu_k, a Sigma_k + (1-a) I)``
with ``a`` = alphas_cumprod. With per-axis eigendecompositions ``C_ka = U_ka diag(l_ka) U_ka^T``
the noised covariance is diagonal in the rotated basis (eigenvalues ``a ⊗l + 1 - a``), so the exact
score, the log densities that weight the components and hence the exact epsilon
``eps = -sqrt(1-a) * score`` cost a few small matrix products per axis — no dense D×D matrix.
Optionally class-conditional: class c has its own component weights, the unconditional prior
(class -1) the average over classes, so classifier-free guidance means something.

These give the project ground truth: the exact conditional of a masked sample is a Gaussian
mixture computable in closed form (:meth:`SeparableGMM.conditional`, dense, small sizes).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .denoiser import FlowDenoiser, check_prediction_type, flow_abar, flow_scale


def _apply_axis(x: torch.Tensor, mat: torch.Tensor, axis: int) -> torch.Tensor:
    """Multiply ``x`` by ``mat`` (n, n) along ``axis``: out[..., i, ...] = sum_j mat[i, j] x[..., j, ...]."""
    return torch.movedim(torch.movedim(x, axis, -1) @ mat.T, -1, axis)


def _kron_eigenvalues(evals: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-axis eigenvalues (..., n_a) -> those of their Kronecker product, shaped (..., n_1, ..., n_d)."""
    lam = evals[0]
    for l in evals[1:]:
        lam = lam[..., None] * l.reshape(*l.shape[:-1], *([1] * (lam.ndim - l.ndim + 1)), -1)
    return lam


def _eigh_spd(f: torch.Tensor, name: str):
    lam, u = torch.linalg.eigh(f)
    if (lam <= 0).any():
        raise ValueError(f"covariance factor {name} is not positive definite (min eigenvalue {lam.min():.3g})")
    return lam, u


class SeparableGMM:
    """Mixture of Gaussians with Kronecker-structured covariances over the axes of ``shape``.

    means: (K, *shape); factors: one (K, n_a, n_a) SPD tensor per axis; weights: (K,) mixture
    weights or (C, K) per-class weights. Computation runs in ``dtype`` (float64 by default).
    """

    def __init__(self, means: torch.Tensor, factors: Sequence[torch.Tensor],
                 weights: torch.Tensor | None = None, dtype: torch.dtype = torch.float64):
        self._set_means(means, factors, dtype)
        self.factors = []
        for a, (f, n) in enumerate(zip(factors, self.shape)):
            f = f.to(dtype)
            if f.ndim == 2:
                f = f.expand(self.K, n, n)
            if f.shape != (self.K, n, n):
                raise ValueError(f"factor {a} has shape {tuple(f.shape)}; expected ({self.K}, {n}, {n})")
            self.factors.append(f)
        evals, evecs = [], []
        for a, f in enumerate(self.factors):
            lam, u = _eigh_spd(f, str(a))
            evals.append(lam)
            evecs.append(u)
        self.evecs = evecs  # per axis (K, n, n)
        self.lam = _kron_eigenvalues(evals)  # (K, *shape): eigenvalues of Sigma_k
        self._set_weights(weights)

    def _set_means(self, means: torch.Tensor, factors, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.means = means.to(dtype)
        self.K = self.means.shape[0]
        self.shape = tuple(self.means.shape[1:])
        if len(factors) != len(self.shape):
            raise ValueError(f"need one covariance factor per axis of shape {self.shape}, got {len(factors)}")

    def _set_weights(self, weights: torch.Tensor | None) -> None:
        if weights is None:
            weights = torch.full((self.K,), 1.0 / self.K)
        weights = weights.to(self.dtype)
        if weights.ndim == 1:
            weights = weights[None]
        if weights.shape[-1] != self.K or (weights < 0).any():
            raise ValueError(f"weights must be non-negative with last dimension K={self.K}")
        self.class_weights = weights / weights.sum(-1, keepdim=True)  # (C, K)
        self.num_classes = self.class_weights.shape[0] if self.class_weights.shape[0] > 1 else 0

    # ----------------------------------------------------------------------- basics
    @property
    def ndim(self) -> int:
        return len(self.shape)

    def weights_for(self, cond, batch: int) -> torch.Tensor:
        """(B, K) log mixture weights for a class condition: None / -1 = unconditional."""
        marginal = self.class_weights.mean(0)
        if cond is None:
            w = marginal.expand(batch, self.K)
        else:
            c = torch.as_tensor(cond).long().reshape(-1)
            if c.numel() == 1:
                c = c.expand(batch)
            if self.num_classes == 0 and (c >= 0).any():
                raise ValueError("this prior is not class-conditional; use cond=None or -1")
            if (c >= max(self.num_classes, 1)).any() or (c < -1).any():
                raise ValueError(f"class ids must be in [-1, {self.num_classes - 1}], got {c.tolist()}")
            table = torch.cat([self.class_weights, marginal[None]], 0)  # row -1 = marginal
            w = table[c]
        return torch.log(w.clamp_min(1e-300))

    def _rotate(self, x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
        """x (B, *shape) into component k's eigenbasis (U^T x), or back (U z) when ``inverse``."""
        for a in range(self.ndim):
            u = self.evecs[a][k]
            x = _apply_axis(x, u if inverse else u.T, a + 1)
        return x

    # ----------------------------------------------------------------------- exact score / eps
    def _levels(self, abar, B: int):
        """alphas_cumprod as (B,) and shaped (B, 1, ..., 1) to broadcast over samples."""
        a = torch.as_tensor(abar, dtype=self.dtype).reshape(-1)
        a = a.expand(B) if a.numel() == 1 else a
        return a, a.reshape(B, *([1] * self.ndim))

    def eps(self, x: torch.Tensor, abar, cond=None) -> torch.Tensor:
        """Exact epsilon E[eps | x_t] for x (B, *shape) at alphas_cumprod ``abar`` (scalar or (B,))."""
        out_dtype, x = x.dtype, x.to(self.dtype)
        B = x.shape[0]
        a, ab = self._levels(abar, B)
        logw = self.weights_for(cond, B)  # (B, K)
        logp, scores = [], []
        for k in range(self.K):
            z = self._rotate(x - ab.sqrt() * self.means[k], k)         # (B, *shape)
            v = ab * self.lam[k] + (1 - ab)                              # noised eigenvalues
            dims = tuple(range(1, self.ndim + 1))
            logp.append(-0.5 * (z * z / v).sum(dims) - 0.5 * torch.log(v).sum(dims))
            scores.append(self._rotate(-z / v, k, inverse=True))
        logp = torch.stack(logp, 1) + logw                               # (B, K)
        r = torch.softmax(logp, dim=1)
        score = sum(r[:, k].reshape(B, *([1] * self.ndim)) * scores[k] for k in range(self.K))
        return (-(1 - ab).sqrt() * score).to(out_dtype)

    def responsibilities(self, x: torch.Tensor, cond=None) -> torch.Tensor:
        """(B, K) posterior component probabilities of clean samples x."""
        x = x.to(self.dtype)
        B = x.shape[0]
        logp = []
        for k in range(self.K):
            z = self._rotate(x - self.means[k], k)
            dims = tuple(range(1, self.ndim + 1))
            logp.append(-0.5 * (z * z / self.lam[k]).sum(dims) - 0.5 * torch.log(self.lam[k]).sum())
        return torch.softmax(torch.stack(logp, 1) + self.weights_for(cond, B), 1)

    def sample(self, n: int, generator: torch.Generator | None = None, cls: int | None = None):
        """n exact samples x0 (n, *shape) and their component ids."""
        logw = self.weights_for(None if cls is None else torch.tensor([cls]), 1)[0]
        comp = torch.multinomial(logw.exp(), n, replacement=True, generator=generator)
        z = torch.randn((n, *self.shape), generator=generator, dtype=self.dtype)
        out = torch.empty_like(z)
        for k in range(self.K):
            sel = comp == k
            if sel.any():
                out[sel] = self._rotate(z[sel] * self.lam[k].sqrt(), k, inverse=True) + self.means[k]
        return out, comp

    # ----------------------------------------------------------------------- dense closed forms
    def dense_covariance(self, k: int) -> torch.Tensor:
        cov = self.factors[0][k]
        for f in self.factors[1:]:
            cov = torch.kron(cov, f[k])
        return cov

    def _check_dense(self):
        D = math.prod(self.shape)
        if D > 4096:
            raise ValueError(f"dense closed forms are for small priors (D <= 4096), this one has D={D}")
        return D

    def dense_eps(self, x: torch.Tensor, abar: float, cond=None) -> torch.Tensor:
        """Epsilon by dense linear algebra (a reference for tests; small sizes only)."""
        D = self._check_dense()
        x = x.to(self.dtype).reshape(x.shape[0], D)
        a = torch.as_tensor(abar, dtype=self.dtype)
        logw = self.weights_for(cond, x.shape[0])
        logp, scores = [], []
        for k in range(self.K):
            S = a * self.dense_covariance(k) + (1 - a) * torch.eye(D, dtype=self.dtype)
            d = x - a.sqrt() * self.means[k].reshape(D)
            sol = torch.linalg.solve(S, d.T).T
            logp.append(-0.5 * (d * sol).sum(1) - 0.5 * torch.logdet(S))
            scores.append(-sol)
        r = torch.softmax(torch.stack(logp, 1) + logw, 1)
        score = sum(r[:, k:k + 1] * scores[k] for k in range(self.K))
        return (-(1 - a).sqrt() * score).reshape(x.shape[0], *self.shape)

    def conditional(self, observed: torch.Tensor, mask: torch.Tensor, cond=None):
        """Exact p(x_gen | x_obs) for one sample: (weights (K,), means (K, G), covs (K, G, G)).

        ``observed`` (*shape), ``mask`` (*shape) with 1 = generated. Dense; small sizes only.
        """
        D = self._check_dense()
        m = mask.expand(self.shape).reshape(D).bool()
        g, o = m.nonzero().squeeze(1), (~m).nonzero().squeeze(1)
        xo = observed.to(self.dtype).reshape(D)[o]
        logw = self.weights_for(cond, 1)[0]
        ws, mus, covs = [], [], []
        for k in range(self.K):
            S = self.dense_covariance(k)
            mu = self.means[k].reshape(D)
            Soo, Sgo, Sgg = S[o][:, o], S[g][:, o], S[g][:, g]
            d = xo - mu[o]
            sol = torch.linalg.solve(Soo, d)
            ws.append(logw[k] - 0.5 * d @ sol - 0.5 * torch.logdet(Soo))
            mus.append(mu[g] + Sgo @ sol)
            covs.append(Sgg - Sgo @ torch.linalg.solve(Soo, Sgo.T))
        return torch.softmax(torch.stack(ws), 0), torch.stack(mus), torch.stack(covs)


class SharedBasisGMM(SeparableGMM):
    """A :class:`SeparableGMM` whose components share their per-axis covariance factors.

    means (K, *shape); factors: one (n_a, n_a) SPD matrix per axis. Same maths as the parent
    (its dense closed forms and sampling work unchanged); :meth:`eps` rotates ``x`` once:
    ``z_k = U^T x - sqrt(a) U^T mu_k`` and the score ``-U sum_k r_k z_k / v``.
    """

    def __init__(self, means: torch.Tensor, factors, weights: torch.Tensor | None = None,
                 dtype: torch.dtype = torch.float64):
        self._set_means(means, factors, dtype)
        lams, us = [], []
        for a, (f, n) in enumerate(zip(factors, self.shape)):
            f = torch.as_tensor(f).to(dtype)
            if f.shape != (n, n):
                raise ValueError(f"shared factor {a} has shape {tuple(f.shape)}; expected ({n}, {n})")
            lam, u = _eigh_spd(f, str(a))
            lams.append(lam)
            us.append(u)
        # views with a component axis, so the parent's per-component code reads them unchanged
        self.factors = [torch.as_tensor(f).to(dtype).expand(self.K, n, n) for f, n in zip(factors, self.shape)]
        self.evecs = [u.expand(self.K, *u.shape) for u in us]
        lam = _kron_eigenvalues(lams)
        self.lam_shared = lam                                   # (*shape)
        self.lam = lam.expand(self.K, *self.shape)
        self.means_rot = self._rotate(self.means, 0)            # (K, *shape): U^T mu_k
        self._set_weights(weights)

    def eps(self, x: torch.Tensor, abar, cond=None) -> torch.Tensor:
        out_dtype, x = x.dtype, x.to(self.dtype)
        B = x.shape[0]
        a, ab = self._levels(abar, B)
        z0 = self._rotate(x, 0).flatten(1)                      # (B, D)
        mr = self.means_rot.flatten(1)                          # (K, D)
        inv_v = 1.0 / (ab * self.lam_shared + (1 - ab)).flatten(1)  # (B, D)
        sa = a.sqrt()[:, None]                                  # (B, 1)
        # |z_k|^2_v = z0'Vz0 - 2 sqrt(a) z0'V mu_k + a mu_k'V mu_k; the log det is common to all k
        quad = ((z0 * z0 * inv_v).sum(1, keepdim=True) - 2 * sa * (z0 * inv_v) @ mr.T
                + a[:, None] * inv_v @ (mr * mr).T)             # (B, K)
        r = torch.softmax(-0.5 * quad + self.weights_for(cond, B), dim=1)
        score_rot = -(z0 - sa * r @ mr) * inv_v                 # (B, D)
        score = score_rot.reshape(B, *self.shape)
        for ax in range(self.ndim):
            score = _apply_axis(score, self.evecs[ax][0], ax + 1)
        return (-(1 - ab).sqrt() * score).to(out_dtype)



class PriorDenoiser:
    """The denoiser protocol over a :class:`SeparableGMM` with a training schedule.

    ``alphas_cumprod`` maps training timesteps to noise levels (take it from the scheduler the
    prior is sampled with). ``prediction_type`` lets the same exact prior stand in for epsilon,
    x0 (``sample``) or v models. ``cond``: class ids (B,) with -1 = unconditional, or None.
    """

    def __init__(self, prior: SeparableGMM, alphas_cumprod: torch.Tensor,
                 prediction_type: str = "epsilon"):
        self.prior = prior
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod).double()
        self.prediction_type = check_prediction_type(prediction_type)

    @classmethod
    def for_scheduler(cls, prior: SeparableGMM, scheduler, prediction_type: str | None = None):
        """The prior as the scheduler's model would be: a VP model on its alphas_cumprod, or for a
        flow-matching scheduler a velocity model (:class:`FlowPriorModel`) behind
        :class:`~longgen.denoiser.FlowDenoiser`."""
        from .schedule import is_flow_scheduler

        if is_flow_scheduler(scheduler):
            if prediction_type not in (None, "flow"):
                raise ValueError(f"a flow-matching scheduler's model predicts 'flow', not {prediction_type!r}")
            return FlowDenoiser(FlowPriorModel(prior))
        return cls(prior, scheduler.alphas_cumprod,
                   prediction_type or scheduler.config.prediction_type)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        a = self.alphas_cumprod[torch.as_tensor(t).long().reshape(-1).cpu()].to(x.device)
        eps = self.prior.eps(x, a, cond).to(x.dtype)
        if self.prediction_type == "epsilon":
            return eps
        ab = a.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        if self.prediction_type == "sample":
            return (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        return (eps - (1 - ab).sqrt() * x) / ab.sqrt()  # v = sqrt(a) eps - sqrt(1-a) x0

    def to(self, *args, **kwargs):
        return self


class FlowPriorModel:
    """A prior as a flow-matching model: ``(x_flow, t, cond) -> v = E[eps] - E[x0]`` on the flow
    state ``(1 - t) x0 + t eps`` (what a rectified-flow network is trained to predict).

    Exact: at level t the flow state divided by ``s(t)`` is the VP state at
    ``abar = (1 - t)^2 / s(t)^2``, where the prior's epsilon is exact; ``E[x0]`` is Tweedie's
    ``(z - sqrt(1 - a) eps) / sqrt(a)``, and at t = 1 (a = 0, nothing known) the mixture mean.
    Wrapped in :class:`~longgen.denoiser.FlowDenoiser` it drives the same samplers as the VP model.
    """

    def __init__(self, prior: SeparableGMM):
        self.prior = prior

    def eps_x0(self, z: torch.Tensor, abar: torch.Tensor, cond=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact E[eps | z] and E[x0 | z] of a VP state ``z`` at levels ``abar`` (B,), float64."""
        a = torch.as_tensor(abar, dtype=torch.float64).reshape(-1).to(z.device)
        z = z.double()
        eps = self.prior.eps(z, a, cond).double()
        ab = a.reshape(-1, *([1] * (z.ndim - 1)))
        x0 = (z - (1 - ab).sqrt() * eps) / ab.sqrt().clamp_min(1e-300)
        top = a == 0
        if top.any():   # t = 1: E[x0] is the mixture mean under the condition's weights
            w = self.prior.weights_for(cond, z.shape[0]).exp()            # (B, K)
            mean = (w @ self.prior.means.flatten(1)).reshape(z.shape).to(z.device)
            x0 = torch.where(top.reshape(ab.shape), mean, x0)
        return eps, x0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).to(x.device)
        z = x.double() / flow_scale(t).reshape(-1, *([1] * (x.ndim - 1)))
        eps, x0 = self.eps_x0(z, flow_abar(t), cond)
        return (eps - x0).to(x.dtype)

    def to(self, *args, **kwargs):
        return self
