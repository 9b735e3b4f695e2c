"""Loss functions, built from the primitives.

Two families, and what ``reduction`` does for each:

* elementwise losses (``mse``, ``binary_cross_entropy``,
  ``binary_cross_entropy_with_logits``, ``bernoulli_kl``): one term per element;
  ``"mean"`` averages over all elements, ``"sum"`` sums them, ``"batchmean"``
  sums them and divides by the batch size (the length of the first axis, 1 for
  a scalar: the per-example loss summed over features, averaged over examples),
  ``"none"`` returns them;
* per-example losses (``kl_divergence``, ``gaussian_kl``, ``l1``): the terms are
  summed over the last axis (one value per example); ``"mean"`` averages those
  over the leading (batch) axes, ``"sum"`` sums them, ``"none"`` returns them.

Shapes of prediction and target must be equal: nothing is broadcast silently.
"""
from __future__ import annotations

import math

import numpy

from . import functions as F
from .denormals import flush_subnormals
from .tensor import Function, as_tensor, is_grad_enabled

__all__ = ["GaussianKL", "FusedSumLoss", "mse", "binary_cross_entropy",
           "binary_cross_entropy_with_logits",
           "kl_divergence", "gaussian_kl", "l1", "bernoulli_kl"]

_REDUCTIONS = ("mean", "sum", "batchmean", "none")


def _reduce(op, terms, reduction):
    if reduction == "mean":
        return F.mean(terms)
    if reduction == "sum":
        return F.sum(terms)
    if reduction == "batchmean":
        return F.sum(terms) * (1.0 / _batch_size(terms))
    if reduction == "none":
        return terms
    raise ValueError(f"{op}: reduction={reduction!r}; expected one of {_REDUCTIONS}")


def _batch_size(a):
    """The length of the first axis (1 for a scalar, and for an empty batch)."""
    return max(a.shape[0], 1) if a.ndim else 1


def _same_shape(op, a, b, names=("input", "target")):
    a, b = as_tensor(a), as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"{op}: {names[0]} has shape {a.shape} but {names[1]} has shape "
                         f"{b.shape}; they must be equal")
    return a, b


class FusedSumLoss(Function):
    """scale * sum of a per-element loss as one node, on its device's fused kernel
    (``kernel``: "bce_with_logits" or "mse", see :mod:`minigrad.kernels.losses`).

    forward: the kernel's one pass gives the sum and, when a gradient will be
    wanted, d(loss)/d(pred) for a seed of 1;
    backward: that gradient times the seed g (a seed of 1, the usual one, costs
    nothing); d/dt is -x g scale for BCE, -2 (p - t) g scale for MSE.
    """

    def forward(self, pred, target, kernel, scale, want_grad):
        self.loss, self.scale = kernel, scale
        self.kernel = getattr(self.device.kernels, kernel)
        self.save_for_backward(pred, target)
        total, self.grad_pred = self.kernel(pred, target, scale, want_grad)
        return self.xp.asarray(total * scale, dtype=pred.dtype)

    def backward(self, g):
        pred, target = self.saved
        grad_pred, self.grad_pred = self.grad_pred, None  # handed over once: the engine
        if grad_pred is None:                             # may add into it in place
            _, grad_pred = self.kernel(pred, target, self.scale, True)  # a second backward
        # on the host, a seed of 1 is seen for free; on the GPU reading g would wait
        # for the device, so the product is always taken there
        if self.device.type != "cpu" or g != 1:
            grad_pred *= g.astype(pred.dtype, copy=False)
            flush_subnormals(grad_pred)  # scaling down can make subnormals again
        grad_target = None
        if self.needs_input_grad[1]:
            # d/dt of softplus(x) - x t is -x; of (p - t)^2 it is -2 (p - t)
            d_target = -2 * (pred - target) if self.loss == "mse" else -pred
            grad_target = d_target * (g * self.scale)
        return grad_pred, grad_target


def _check_range(op, name, t, low, high, *, open_low=False, open_high=False):
    """Every value of Tensor ``t`` in the interval, or a ValueError naming the loss, the
    argument, the values found and what is expected (NaN counts as outside).  The
    device's ``value_range`` kernel: its min and max (a NaN makes both NaN, which
    fails the comparisons), and one read from the device."""
    xp, data = t.xp, t.data
    if data.size == 0:
        return
    if data.dtype in (numpy.float32, numpy.float64):
        least, most = t.device.kernels.value_range(data)
    else:
        least, most = float(xp.min(data)), float(xp.max(data))
    if ((least > low if open_low else least >= low)
            and (most < high if open_high else most <= high)):
        return
    lo, hi = float(xp.nanmin(data)), float(xp.nanmax(data))
    interval = (("(" if open_low else "[") + f"{low:g}, {high:g}"
                + (")" if open_high or high == math.inf else "]"))
    nans = int(xp.isnan(data).sum())
    raise ValueError(f"{op}: {name} must lie in {interval}, found values in [{lo:g}, {hi:g}]"
                     + (f" and {nans} NaN" if nans else ""))


def _fused(kernel, pred, target, reduction):
    """The fused kernel node, where the data's device fuses and the reduction allows
    (the one place a loss decides between the fused kernel and the primitives)."""
    if (not pred.device.fused or reduction not in ("mean", "sum", "batchmean")
            or pred.dtype != target.dtype or pred.size == 0):
        return None
    scale = {"mean": 1.0 / pred.size, "sum": 1.0, "batchmean": 1.0 / _batch_size(pred)}[reduction]
    want_grad = is_grad_enabled() and (pred.requires_grad or target.requires_grad)
    return FusedSumLoss.apply(pred, target, kernel=kernel, scale=scale, want_grad=want_grad)


def mse(pred, target, reduction="mean"):
    """(pred - target)^2 per element."""
    pred, target = _same_shape("mse", pred, target)
    fused = _fused("mse", pred, target, reduction)
    if fused is not None:
        return fused
    diff = pred - target
    return _reduce("mse", diff * diff, reduction)


def binary_cross_entropy(prob, target, reduction="mean", check_target=True):
    """-(t ln p + (1 - t) ln(1 - p)) per element, for probabilities p in [0, 1].

    Each log is clamped below at -100 (as PyTorch does), so p of exactly 0 or 1
    gives a finite loss and gradient.  ``prob`` and ``target`` outside [0, 1] are
    errors (``check_target=False`` skips the target's check, for targets checked
    already, as the autoencoders' data are when they enter ``fit``).
    """
    prob, target = _same_shape("binary_cross_entropy", prob, target, ("prob", "target"))
    _check_range("binary_cross_entropy", "prob", prob, 0.0, 1.0)
    if check_target:
        _check_range("binary_cross_entropy", "target", target, 0.0, 1.0)
    with numpy.errstate(divide="ignore"):  # ln 0 = -inf is expected here, and clamped
        log_p = F.maximum(F.log(prob), -100.0)
        log_1mp = F.maximum(F.log(1.0 - prob), -100.0)
    return _reduce("binary_cross_entropy", -(target * log_p + (1.0 - target) * log_1mp),
                   reduction)


def binary_cross_entropy_with_logits(logits, target, reduction="mean", check_target=True):
    """BCE of sigmoid(x) against t, as max(x, 0) - t x + ln(1 + e^-|x|): finite for any
    logit x, and without the cancellation of softplus(x) - t x, which for a confident
    right answer (x = 20, t = 1) subtracts two numbers near 20 to leave 2e-9.  The
    gradient is sigmoid(x) - t everywhere (max splits a tie at x = 0 in halves),
    computed as (1 - t) - sigmoid(-x) for x >= 0 by the fused kernels and by the graph
    below alike, since sigmoid(x) - 1 would round a confident right answer's gradient
    (-3.06e-7 at x = 15) to a multiple of 6e-8, as PyTorch's float32 kernel does.
    Targets outside [0, 1] are an error (``check_target=False`` skips that check, for
    targets checked already)."""
    logits, target = _same_shape("binary_cross_entropy_with_logits", logits, target,
                                 ("logits", "target"))
    if check_target:
        _check_range("binary_cross_entropy_with_logits", "target", target, 0.0, 1.0)
    fused = _fused("bce_with_logits", logits, target, reduction)
    if fused is not None:
        return fused
    # ln(1 + e^-|x|) as the sum's first argument: the backward pass (outputs first, a
    # node's arguments in order) reaches it last, so x's gradient is summed in the
    # order the docstring gives, ([x > 0] - t) - sign(x) sigmoid(-|x|)
    terms = F.softplus(-F.abs(logits)) + (F.maximum(logits, 0.0) - target * logits)
    return _reduce("binary_cross_entropy_with_logits", terms, reduction)


def kl_divergence(p, q, reduction="mean"):
    """KL(p || q) = sum_i p_i ln(p_i / q_i) over the last axis; terms with p_i = 0 give 0."""
    p, q = _same_shape("kl_divergence", p, q, ("p", "q"))
    # probabilities cannot be negative (ln of one would be NaN, or be masked away)
    _check_range("kl_divergence", "p", p, 0.0, math.inf)
    _check_range("kl_divergence", "q", q, 0.0, math.inf)
    positive = p.data > 0
    # Where p = 0 the term is 0; feed ln() ones there so no inf enters the graph.
    safe_p, safe_q = F.where(positive, p, 1.0), F.where(positive, q, 1.0)
    terms = F.where(positive, p * (F.log(safe_p) - F.log(safe_q)), 0.0)
    return _reduce("kl_divergence", F.sum(terms, axis=-1), reduction)


class GaussianKL(Function):
    """KL(N(mu, e^lv) || N(0, I)) = 1/2 sum_j (e^lv_j + mu_j^2 - 1 - lv_j) over the
    last axis, one value per example, as one node (the VAE's KL term).

    backward (g: one seed per example):  d/d mu_j = g mu_j;  d/d lv_j = g (e^lv_j - 1) / 2
    """

    def forward(self, mu, log_var):
        var = self.xp.exp(log_var)
        self.save_for_backward(mu, var)
        return 0.5 * (var + mu * mu - 1 - log_var).sum(axis=-1)

    def backward(self, g):
        mu, var = self.saved
        g = g[..., None]
        need_mu, need_lv = self.needs_input_grad
        return (g * mu if need_mu else None), ((0.5 * g) * (var - 1) if need_lv else None)


def gaussian_kl(mu, log_var, reduction="mean"):
    """KL(N(mu, e^log_var) || N(0, I)) = 1/2 sum_j (e^lv_j + mu_j^2 - 1 - lv_j), last axis
    (see :class:`GaussianKL`)."""
    mu, log_var = _same_shape("gaussian_kl", mu, log_var, ("mu", "log_var"))
    if mu.ndim == 0:
        raise ValueError("gaussian_kl: mu and log_var need at least one axis, got scalars")
    return _reduce("gaussian_kl", GaussianKL.apply(mu, log_var), reduction)


def l1(h, reduction="mean"):
    """The activity penalty sum_i |h_i| over the last axis (the article's Omega(h))."""
    h = as_tensor(h)
    return _reduce("l1", F.sum(F.abs(h), axis=-1), reduction)


def bernoulli_kl(rho, rho_hat, reduction="sum"):
    """KL sparsity: rho ln(rho / rho_hat_j) + (1 - rho) ln((1 - rho) / (1 - rho_hat_j)).

    ``rho`` is the target activation (a number in (0, 1)); ``rho_hat`` holds each
    unit's mean activation (values in (0, 1)).  One term per unit; the default
    ``reduction="sum"`` sums over units, as the sparse autoencoder penalty does.
    """
    rho = float(rho)
    if not 0.0 < rho < 1.0:
        raise ValueError(f"bernoulli_kl: rho={rho} must lie strictly between 0 and 1")
    rho_hat = as_tensor(rho_hat)
    _check_range("bernoulli_kl", "rho_hat", rho_hat, 0.0, 1.0)
    terms = (rho * (math.log(rho) - F.log(rho_hat))
             + (1.0 - rho) * (math.log(1.0 - rho) - F.log(1.0 - rho_hat)))
    return _reduce("bernoulli_kl", terms, reduction)
