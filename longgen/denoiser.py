"""The denoiser protocol: one small contract every model is adapted to at the edge.

A denoiser is a callable ``(x, t, cond) -> model output`` with a ``prediction_type``:

* ``x``: the noisy batch, ``(B, *shape)``;
* ``t``: the step's time input, ``(B,)``: the training timesteps as a long tensor for VP
  models (diffusers UNets take this as is), the flow level sigma in [0, 1] as a float64 tensor
  for flow-matching models (see :class:`FlowDenoiser`);
* ``cond``: whatever the model takes as its condition, batched along dim 0 (a tensor, a dict or
  tuple of tensors, or ``None``). Conditions are concatenated with :func:`cat_cond`.

The samplers never look at the raw output: they call :func:`to_eps` / :func:`to_x0`, so epsilon,
sample (x0), v-prediction and flow (velocity) models all drive the same step. Classifier-free guidance and the
extra condition-only evaluations that ALM needs are gathered by :class:`Evaluator` into one
batched forward per step (k-diffusion's ``CFGDenoiser`` idea, extended to several inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")


@runtime_checkable
class Denoiser(Protocol):
    """``(x (B, *shape), t (B,), cond) -> model output (B, *shape)``."""

    prediction_type: str

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor: ...


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {prediction_type!r}; allowed: {', '.join(PREDICTION_TYPES)}"
        )
    return prediction_type


def _bcast(a: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or a (B,) tensor of schedule values, shaped to broadcast against ``like``."""
    a = torch.as_tensor(a, dtype=like.dtype, device=like.device)
    if a.ndim == 1:
        a = a.reshape(-1, *([1] * (like.ndim - 1)))
    return a


def to_eps(output: torch.Tensor, x: torch.Tensor, abar: torch.Tensor | float, prediction_type: str):
    """Model output -> epsilon at ``x`` with alphas_cumprod ``abar`` (DDIM paper Eq. 12 notation)."""
    a = _bcast(abar, x)
    if prediction_type == "epsilon":
        return output
    if prediction_type == "sample":
        return (x - a.sqrt() * output) / (1 - a).sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt() * output + (1 - a).sqrt() * x
    if prediction_type == "flow":   # velocity eps - x0, state in the VP view (FlowDenoiser)
        return (x + a.sqrt() * output) / (a.sqrt() + (1 - a).sqrt())
    check_prediction_type(prediction_type)


def to_x0(output: torch.Tensor, x: torch.Tensor, abar: torch.Tensor | float, prediction_type: str):
    """Model output -> predicted clean sample x0."""
    a = _bcast(abar, x)
    if prediction_type == "epsilon":
        return (x - (1 - a).sqrt() * output) / a.sqrt()
    if prediction_type == "sample":
        return output
    if prediction_type == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * output
    if prediction_type == "flow":
        return (x - (1 - a).sqrt() * output) / (a.sqrt() + (1 - a).sqrt())
    check_prediction_type(prediction_type)


# --------------------------------------------------------------------------- conditions


def cond_batch_size(cond: Any) -> int | None:
    """Batch size carried by a condition, or None when it carries none (``None``, scalars)."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond.shape[0] if cond.ndim > 0 else None
    if isinstance(cond, dict):
        sizes = {cond_batch_size(v) for v in cond.values()} - {None}
    elif isinstance(cond, (tuple, list)):
        sizes = {cond_batch_size(v) for v in cond} - {None}
    else:
        return None
    if len(sizes) > 1:
        raise ValueError(f"condition parts disagree on the batch size: {sorted(sizes)}")
    return sizes.pop() if sizes else None


def expand_cond(cond: Any, batch: int) -> Any:
    """Repeat a condition with batch dimension 1 to ``batch``; a condition of size ``batch`` passes."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        if cond.ndim == 0:
            return cond.expand(batch)
        if cond.shape[0] == batch:
            return cond
        if cond.shape[0] == 1:
            return cond.expand(batch, *cond.shape[1:])
        raise ValueError(
            f"a condition has batch dimension {cond.shape[0]}; allowed: 1 or the batch size {batch}"
        )
    if isinstance(cond, dict):
        return {k: expand_cond(v, batch) for k, v in cond.items()}
    if isinstance(cond, (tuple, list)):
        return type(cond)(expand_cond(v, batch) for v in cond)
    return cond


def cat_cond(conds: Sequence[Any], sizes: Sequence[int]) -> Any:
    """Concatenate conditions along dim 0 after expanding each to its part's batch size."""
    conds = [expand_cond(c, n) for c, n in zip(conds, sizes)]
    first = conds[0]
    if first is None:
        if any(c is not None for c in conds):
            raise ValueError("cannot batch a None condition with a non-None one")
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(conds, dim=0)
    if isinstance(first, dict):
        return {k: cat_cond([c[k] for c in conds], sizes) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(cat_cond([c[i] for c in conds], sizes) for i in range(len(first)))
    if all(c == first for c in conds):
        return first
    raise ValueError(f"cannot batch conditions of type {type(first).__name__}")


# --------------------------------------------------------------------------- batched evaluation


@dataclass
class Request:
    """One evaluation the step needs: ``x`` under ``cond``; ``guided`` adds the uncond pass.

    ``rows`` picks which rows of a per-window condition (batch > 1) go with ``x`` when ``x`` holds
    only some of the windows (ALM evaluates the blended input only for windows that observe).
    """

    x: torch.Tensor
    guided: bool = False
    rows: torch.Tensor | None = None


class Evaluator:
    """Evaluates several inputs in one batched forward and returns model outputs.

    ``cond`` / ``uncond`` are fixed for a run. A guided request costs two rows (uncond, cond) and
    returns ``out_u + s * (out_c - out_u)`` — guidance is linear, so guiding the raw output equals
    guiding epsilon for every prediction type; with ``guidance_scale == 1`` it costs one row. A
    condition-only request costs one row. Outputs stay in the model's own parameterisation so that
    x0-predicting models do not lose precision through an epsilon round trip at high noise.
    ``calls`` and ``rows`` count forwards and batch rows (the figures the benchmarks report).
    """

    def __init__(self, denoiser: Denoiser, cond: Any = None, uncond: Any = None,
                 guidance_scale: float = 1.0, max_batch: int | None = None):
        check_prediction_type(getattr(denoiser, "prediction_type", None))
        if guidance_scale != 1.0 and uncond is None and cond is not None:
            raise ValueError("guidance_scale != 1 needs an `uncond` condition")
        self.denoiser = denoiser
        self.cond, self.uncond = cond, uncond
        self.scale = float(guidance_scale)
        self.max_batch = max_batch
        self.calls = 0
        self.rows = 0
        self.last_guided: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, output) of the last guided request

    @property
    def guides(self) -> bool:
        return self.scale != 1.0

    def __call__(self, t: int, requests: Sequence[Request],
                 return_cond: bool = False) -> list[torch.Tensor] | tuple[list, list]:
        """Model output for each request at training timestep ``t``.

        With ``return_cond`` the condition-only output of each guided request is returned too
        (it is one of the rows already computed: Eq. 1's ``eps(Y_t)`` costs nothing extra).
        """
        xs, conds, sizes, spans = [], [], [], []
        for r in requests:
            n = r.x.shape[0]
            cond, uncond = self.cond, self.uncond
            if r.rows is not None:
                cond, uncond = _take_rows(cond, r.rows), _take_rows(uncond, r.rows)
            if r.guided and self.guides:
                xs += [r.x, r.x]
                conds += [uncond, cond]
                sizes += [n, n]
                spans.append(2)
            else:
                xs.append(r.x)
                conds.append(cond)
                sizes.append(n)
                spans.append(1)
        x = torch.cat(xs, dim=0)
        cond = cat_cond(conds, sizes)
        eps = self._forward(x, t, cond)
        out, out_c, i = [], [], 0
        for r, span in zip(requests, spans):
            n = r.x.shape[0]
            if span == 2:
                e_u, e_c = eps[i:i + n], eps[i + n:i + 2 * n]
                out.append(e_u + self.scale * (e_c - e_u))
                out_c.append(e_c)
            else:
                e = eps[i:i + n]
                out.append(e)
                out_c.append(e)
            if r.guided:
                self.last_guided = (r.x, out[-1])
            i += span * n
        return (out, out_c) if return_cond else out

    def _forward(self, x: torch.Tensor, t: int, cond: Any) -> torch.Tensor:
        B = x.shape[0]
        step = self.max_batch or B
        outs = []
        for s in range(0, B, step):
            xb = x[s:s + step]
            cb = _slice_cond(cond, s, s + step) if step < B else cond
            if isinstance(t, float):   # a flow level: passed as is, in float64
                tb = torch.full((xb.shape[0],), t, dtype=torch.float64, device=x.device)
            else:
                tb = torch.full((xb.shape[0],), int(t), dtype=torch.long, device=x.device)
            out = self.denoiser(xb, tb, cb)
            self.calls += 1
            self.rows += xb.shape[0]
            outs.append(out.to(x.dtype))
        return torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]


def _take_rows(cond: Any, rows: torch.Tensor) -> Any:
    """Rows of a batched condition; a condition with batch 1 (or none) is shared and kept."""
    n = cond_batch_size(cond)
    if n is None or n == 1:
        return cond
    if isinstance(cond, torch.Tensor):
        return cond[rows.to(cond.device)]
    if isinstance(cond, dict):
        return {k: _take_rows(v, rows) for k, v in cond.items()}
    if isinstance(cond, (tuple, list)):
        return type(cond)(_take_rows(v, rows) for v in cond)
    return cond


def _slice_cond(cond: Any, a: int, b: int) -> Any:
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[a:b] if cond.ndim > 0 else cond
    if isinstance(cond, dict):
        return {k: _slice_cond(v, a, b) for k, v in cond.items()}
    if isinstance(cond, (tuple, list)):
        return type(cond)(_slice_cond(v, a, b) for v in cond)
    return cond


class FunctionDenoiser:
    """Wraps a plain function ``(x, t, cond) -> output`` with a prediction type."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
                 prediction_type: str = "epsilon"):
        self.fn = fn
        self.prediction_type = check_prediction_type(prediction_type)

    def __call__(self, x, t, cond):
        return self.fn(x, t, cond)


def flow_scale(sigma):
    """s(t) = sqrt((1 - t)^2 + t^2): a flow state is s(t) times the VP state at the same level."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return ((1 - sigma) ** 2 + sigma ** 2).sqrt()


def flow_abar(sigma):
    """The VP level of flow level t: alphas_cumprod = (1 - t)^2 / ((1 - t)^2 + t^2)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma ** 2)


class FlowDenoiser:
    """A flow-matching model behind the VP-state protocol.

    ``fn(x_flow, sigma, cond) -> v``: the model as its pipeline calls it, on the flow state
    ``x_t = (1 - t) x0 + t eps`` at level ``sigma = t`` (a float64 ``(B,)`` tensor; the backend
    turns it into the model's own timestep input, e.g. ``1000 t``), predicting the velocity
    ``v = eps - x0``.

    Why a VP view. Divide the flow state by ``s(t) = sqrt((1 - t)^2 + t^2)`` and it is a
    variance-preserving state ``z = sqrt(a) x0 + sqrt(1 - a) eps`` with ``sqrt(a) = (1 - t) / s``,
    ``sqrt(1 - a) = t / s`` (so ``a = (1 - t)^2 / s^2``; t = 1 is a = 0, t = 0 is a = 1). Every
    sampler, observed path and blend in longgen works on VP states, so the engine carries
    ``z``; this adapter hands the model ``s(t) z`` and returns ``v`` unchanged, and
    :func:`to_eps` / :func:`to_x0` read ``v`` against ``z``:
    ``x0 = s z - t v = (z - sqrt(1 - a) v) / r`` and ``eps = s z + (1 - t) v = (z + sqrt(a) v) / r``
    with ``r = sqrt(a) + sqrt(1 - a) = 1 / s``. The deterministic DDIM step in the VP view,
    ``z' = sqrt(a') x0 + sqrt(1 - a') eps``, times ``s(t')`` is ``(1 - t') x0 + t' eps =
    x_t + (t' - t) v``: the Euler step of ``FlowMatchEulerDiscreteScheduler``. The first level
    of a flow grid is t = 1 (s = 1) and the last t = 0 (s = 1), so the initial noise and the
    result are the same tensors in both views; only intermediate states differ, by s(t).
    """

    prediction_type = "flow"

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]):
        self.fn = fn

    def __call__(self, x, t, cond):
        if not torch.is_floating_point(torch.as_tensor(t)):
            raise ValueError(f"a flow model takes flow levels in [0, 1] as its time input, got "
                             f"integer timesteps {torch.as_tensor(t).reshape(-1)[:4].tolist()}; "
                             "sample it with a flow scheduler")
        s = flow_scale(t).reshape(-1, *([1] * (x.ndim - 1))).to(device=x.device, dtype=x.dtype)
        return self.fn(x * s, t, cond)

    def __getattr__(self, name):
        if name == "fn":
            raise AttributeError(name)
        return getattr(self.fn, name)


class CountingDenoiser:
    """Counts forwards and batch rows of a wrapped denoiser (for tests and benchmarks)."""

    def __init__(self, inner: Denoiser):
        self.inner = inner
        self.prediction_type = inner.prediction_type
        self.calls = 0
        self.rows = 0

    def __call__(self, x, t, cond):
        self.calls += 1
        self.rows += x.shape[0]
        return self.inner(x, t, cond)

    def __getattr__(self, name):
        return getattr(self.inner, name)
