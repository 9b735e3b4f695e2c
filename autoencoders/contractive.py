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

A convolution z = conv2d(h, K) is a linear map C of the flattened image, so it is
one more factor diag(d) C; multiplying the rows of J by C is what a convolution's
input gradient does to a batch of images: ``conv_transpose2d`` of each row (read
as an image of the convolution's output shape) with the same kernel, stride and
padding -- exact, padding included (what the padding cuts off never reaches the
input).  For one convolution plus activation this is Σ_out s'(z)² times the squared
norm of the kernel weights that reach the input.  Cost: a transposed convolution
of batch · d_L images per convolution layer (so keep d_L small, or the batch).
"""
from __future__ import annotations

import math

from minigrad import Tensor, activations, conv, nn

from .base import Autoencoder

__all__ = ["ContractiveAutoencoder", "jacobian_norms"]

_ACTIVATION_MODULES = (nn.Identity, nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus)


class ContractiveAutoencoder(Autoencoder):
    """Reconstruction plus ``weight`` times the squared Frobenius norm of ∂h/∂x.

    The encoder must be made of Dense and Conv2d layers (each with its activation, or
    followed by an activation module; Flatten / Unflatten between them), so the Jacobian has the
    closed form above: any dense or convolutional model this package builds.  Sigmoid
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

    Works for any encoder of Dense and Conv2d layers (e.g. a vanilla autoencoder's),
    so the penalty can be measured on models that were not trained with it.
    """
    n = x.shape[0]
    h, factors = x, []
    for layer, after, name, slope in _stages(encoder):
        if name is None:                               # Flatten / Unflatten: a reshape
            h = layer(h)
            continue
        shape_in = h.shape[1:]
        h = layer(h)
        if after is not None:
            h = after(h)
        factors.append((layer, _derivative(name, h, slope).reshape(n, -1), shape_in))
    (last, d, shape_in), inner = factors[-1], factors[:-1]
    if isinstance(last, nn.Dense):
        if not inner:                                  # Σ_j d_j² Σ_i W_ij²
            return h, (d * d) @ (last.weight * last.weight).sum(axis=0)
        J = d.reshape(n, -1, 1) * last.weight.T        # diag(d_L) W_Lᵀ: (n, d_L, d_{L-1})
    else:                                              # diag(d_L) C_L, rows through C_L
        eye = Tensor(d.xp.eye(d.shape[1], dtype=d.dtype), device=d.device)
        J = _rows_through(last, d.reshape(n, -1, 1) * eye, shape_in)
    for layer, d, shape_in in reversed(inner):
        J = _rows_through(layer, J * d.reshape(n, 1, -1), shape_in)  # ... diag(d_l) M_l
    return h, (J * J).sum(axis=(1, 2))


def _rows_through(layer, J, shape_in):
    """J M for the linear map M of ``layer`` (its input of ``shape_in`` flattened):
    Wᵀ for a Dense layer, the transposed convolution of each row for a Conv2d."""
    if isinstance(layer, nn.Dense):
        return J @ layer.weight.T
    n, rows, width = J.shape
    (oh, ow), (kh, kw) = layer.output_shape(shape_in)[1:], layer.kernel_size
    (sh, sw), (ph, pw) = layer.stride, layer.padding
    # the input rows and columns no window reaches get output_padding: zeros in J
    extra = (shape_in[1] - ((oh - 1) * sh - 2 * ph + kh), shape_in[2] - ((ow - 1) * sw - 2 * pw + kw))
    images = J.reshape(n * rows, layer.out_channels, oh, ow)
    back = conv.conv_transpose2d(images, layer.weight, None, layer.stride, layer.padding, extra)
    return back.reshape(n, rows, math.prod(shape_in))


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
    """``[(layer, activation module after it or None, activation name, slope)]``; a
    Flatten or Unflatten as ``(layer, None, None, None)``."""
    stages = []
    for layer in _flatten(encoder):
        if isinstance(layer, nn.Dense):
            stages.append((layer, None, layer.activation, layer.negative_slope))
        elif isinstance(layer, nn.Conv2d):
            stages.append((layer, None, layer.activation, layer.negative_slope))
        elif isinstance(layer, (nn.Flatten, nn.Unflatten)):
            stages.append((layer, None, None, None))
        elif (isinstance(layer, _ACTIVATION_MODULES) and stages and stages[-1][1] is None
              and stages[-1][2] == "identity"):
            stages[-1] = (stages[-1][0], layer, layer.name, layer.negative_slope)
        else:
            raise ValueError(f"ContractiveAutoencoder: the Jacobian penalty needs an encoder "
                             f"of Dense and Conv2d layers, each followed by at most one "
                             f"activation ({', '.join(c.__name__ for c in _ACTIVATION_MODULES)}),"
                             f" with Flatten / Unflatten between them; found "
                             f"{type(layer).__name__}")
    if not any(name is not None for _, _, name, _ in stages):
        raise ValueError("ContractiveAutoencoder: the encoder has no Dense or Conv2d layer")
    return stages
