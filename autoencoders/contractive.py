"""The contractive autoencoder: penalise how fast the code moves when the input moves.

    h = f(x),    x̂ = g(h),    L = ℓ(x, x̂) + weight · ‖J_f(x)‖_F²,    J_f(x) = ∂h/∂x

The penalty is on the Jacobian of the code h with respect to the input x (not on
the weights), averaged over the batch like ℓ.  It is computed analytically, as
minigrad Tensors, so its gradient reaches every weight.

One layer, h = s(z), z = xW + b, W of shape (d_in, d_h):  J_ji = s'(z_j) W_ij, so

    ‖J_f(x)‖_F² = Σ_j s'(z_j)² Σ_i W_ij²

-- O(d_in · d_h) per batch for Σ_i W_ij², then O(d_h) per example; no Jacobian is
materialised.  s' is read off the layer's output h: sigmoid h(1 - h), tanh
1 - h², ReLU 1[h > 0], leaky ReLU 1 or the slope, softplus 1 - e^(-h), identity 1.

Several layers, h_l = s_l(h_{l-1} W_l + b_l), d_l = s_l'(z_l):

    J_f(x) = diag(d_L) W_Lᵀ · diag(d_{L-1}) W_{L-1}ᵀ ··· diag(d_1) W_1ᵀ

is built from the code side as a (batch, d_L, d_l) Tensor with batched matmuls:
O(batch · d_L · Σ_{l<L} d_l d_{l-1}) time and O(batch · d_L · d_in) memory.  For
an encoder whose widths do not grow (the usual funnel) this order is never slower
than the input-side order, O(batch · d_in · Σ_{l≥2} d_l d_{l-1}); for two layers
they are equal.
"""
from __future__ import annotations

from minigrad import activations, nn

from .base import Autoencoder

__all__ = ["ContractiveAutoencoder", "jacobian_norms"]

_ACTIVATION_MODULES = (nn.Identity, nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus)


class ContractiveAutoencoder(Autoencoder):
    """Reconstruction plus ``weight`` times the squared Frobenius norm of ∂h/∂x.

    The encoder must be made of Dense layers (each optionally followed by an
    activation module), so the Jacobian has the closed form above.  Sigmoid
    codes by default, as in Rifai et al. (2011).  Term ``"contractive"``: the
    batch mean of ‖J_f(x)‖_F².
    """

    flavor = "contractive"
    default_latent_activation = "sigmoid"

    def __init__(self, sizes=None, *, weight=0.1, **options):
        super().__init__(sizes, hyper=dict(weight=weight), **options)
        _stages(self.encoder)  # fail now, not in fit, for an encoder we cannot differentiate

    def _check_hyper(self):
        self._check_number("weight")

    def contractive_penalty(self, x):
        """The batch mean of ‖J_f(x)‖_F² as a scalar Tensor (differentiable)."""
        _, norms = jacobian_norms(self.encoder, self._as_input(x, "contractive_penalty"))
        return norms.mean()

    def _loss(self, x, rng):
        h, norms = jacobian_norms(self.encoder, x)
        reconstruction = self.reconstruction_loss(self.decoder(h), x)
        contractive = norms.mean()
        total = reconstruction + self.weight * contractive
        return total, {"reconstruction": reconstruction, "contractive": contractive}


def jacobian_norms(encoder, x):
    """``(h, ‖J‖²)``: the codes of batch ``x`` and, per example, ‖∂h/∂x‖_F² (shape (n,)).

    Works for any encoder of Dense layers (e.g. a vanilla autoencoder's), so the
    penalty can be measured on models that were not trained with it.
    """
    h, factors = x, []
    for dense, after, name, slope in _stages(encoder):
        h = dense(h)
        if after is not None:
            h = after(h)
        factors.append((dense.weight, _derivative(name, h, slope)))
    n = x.shape[0]
    (W, d), inner = factors[-1], factors[:-1]
    if not inner:                                      # Σ_j d_j² Σ_i W_ij²
        return h, (d * d) @ (W * W).sum(axis=0)
    J = d.reshape(n, -1, 1) * W.T                      # diag(d_L) W_Lᵀ: (n, d_L, d_{L-1})
    for W, d in reversed(inner):
        J = (J * d.reshape(n, 1, -1)) @ W.T            # ... diag(d_l) W_lᵀ: (n, d_L, d_{l-1})
    return h, (J * J).sum(axis=(1, 2))


def _derivative(name, h, slope):
    """s'(z) from the activation's output h = s(z), as a Tensor shaped like h: the
    activation table's derivative (minigrad.activations), applied to the Tensor h so
    that the penalty's gradient flows through it."""
    return activations.activation(name).derivative(h, h.dtype.type(slope))


def _flatten(module):
    if isinstance(module, nn.Sequential):
        for layer in module:
            yield from _flatten(layer)
    else:
        yield module


def _stages(encoder):
    """``[(dense, activation module after it or None, activation name, slope)]``."""
    stages = []
    for layer in _flatten(encoder):
        if isinstance(layer, nn.Dense):
            stages.append((layer, None, layer.activation, layer.negative_slope))
        elif (isinstance(layer, _ACTIVATION_MODULES) and stages and stages[-1][1] is None
              and stages[-1][2] == "identity"):
            stages[-1] = (stages[-1][0], layer, layer.name, layer.negative_slope)
        else:
            raise ValueError(f"ContractiveAutoencoder: the Jacobian penalty needs an encoder "
                             f"of Dense layers, each followed by at most one activation "
                             f"({', '.join(c.__name__ for c in _ACTIVATION_MODULES)}); found "
                             f"{type(layer).__name__}")
    if not stages:
        raise ValueError("ContractiveAutoencoder: the encoder has no Dense layer")
    return stages
