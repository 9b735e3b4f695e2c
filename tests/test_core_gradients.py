"""Every primitive and composite against central finite differences (float64).

Hypothesis chooses shapes (up to 4-D, sizes 1-5, broadcast-compatible pairs) and
values inside each function's domain; ``minigrad.gradcheck`` compares the
analytic gradient with central differences element by element.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg
from helpers import host

SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=5)
pair_shapes = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4,
                                                min_side=1, max_side=5)


def arrays(shape, low=-3.0, high=3.0, away_from=None):
    """float64 arrays in [low, high], optionally kept 0.05 away from the given points
    (kinks, where a central difference straddles a discontinuous derivative)."""
    elements = st.floats(low, high, allow_nan=False, allow_infinity=False)
    if away_from is not None:
        elements = elements.filter(lambda v: all(abs(v - p) > 0.05 for p in away_from))
    return hnp.arrays(np.float64, shape, elements=elements)


def leaf(a):
    return mg.Tensor(np.array(a, dtype=np.float64), requires_grad=True)


# ----------------------------------------------------------------------------
# unary elementwise
# ----------------------------------------------------------------------------

UNARY = {
    "neg": (lambda x: -x, -3, 3, None),
    "exp": (mg.exp, -3, 3, None),
    "log": (mg.log, 0.1, 5, None),
    "sqrt": (mg.sqrt, 0.1, 5, None),
    "abs": (mg.abs, -3, 3, [0.0]),
    "tanh": (mg.tanh, -3, 3, None),
    "sigmoid": (mg.sigmoid, -6, 6, None),
    "relu": (mg.relu, -3, 3, [0.0]),
    "leaky_relu": (lambda x: mg.leaky_relu(x, 0.2), -3, 3, [0.0]),
    "softplus": (mg.softplus, -6, 6, None),
    "log_sigmoid": (mg.log_sigmoid, -6, 6, None),
    "clip": (lambda x: mg.clip(x, -1.0, 1.5), -3, 3, [-1.0, 1.5]),
    "clip_low_only": (lambda x: mg.clip(x, low=0.5), -3, 3, [0.5]),
    "pow_2": (lambda x: x ** 2, -3, 3, None),
    "pow_3": (lambda x: x ** 3, -3, 3, None),
    "pow_half": (lambda x: x ** 0.5, 0.1, 5, None),
    "pow_neg": (lambda x: x ** -1.5, 0.2, 5, None),
    "scalar_ops": (lambda x: (2.0 * x - 1.0) / 3.0 + 0.5, -3, 3, None),
    "reflected_div": (lambda x: 1.0 / x, 0.2, 5, None),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@SETTINGS
@given(data=st.data())
def test_unary_gradients(name, data):
    fn, low, high, kinks = UNARY[name]
    x = data.draw(arrays(data.draw(shapes), low, high, kinks))
    mg.gradcheck(fn, [leaf(x)])


# ----------------------------------------------------------------------------
# binary elementwise, with broadcasting
# ----------------------------------------------------------------------------

BINARY = {
    "add": (lambda a, b: a + b, (-3, 3), (-3, 3)),
    "sub": (lambda a, b: a - b, (-3, 3), (-3, 3)),
    "mul": (lambda a, b: a * b, (-3, 3), (-3, 3)),
    "div": (lambda a, b: a / b, (-3, 3), (0.3, 3)),
    "maximum": (mg.maximum, (-3, 3), (-3, 3)),
    "minimum": (mg.minimum, (-3, 3), (-3, 3)),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@SETTINGS
@given(data=st.data())
def test_binary_gradients_with_broadcasting(name, data):
    fn, (alo, ahi), (blo, bhi) = BINARY[name]
    (sa, sb), _ = data.draw(pair_shapes)
    a = data.draw(arrays(sa, alo, ahi))
    b = data.draw(arrays(sb, blo, bhi))
    if name in ("maximum", "minimum"):
        # a on the grid 0.5 k + 0.25, b on 0.5 k: never closer than 0.25, so no
        # tie and no winner flips within eps
        a = np.round(a * 2) / 2 + 0.25
        b = np.round(b * 2) / 2
    mg.gradcheck(fn, [leaf(a), leaf(b)])


@SETTINGS
@given(data=st.data())
def test_where_gradients(data):
    (sc, sa, sb), _ = data.draw(hnp.mutually_broadcastable_shapes(
        num_shapes=3, min_dims=0, max_dims=4, min_side=1, max_side=5))
    cond = data.draw(hnp.arrays(bool, sc))
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    mg.gradcheck(lambda a, b: mg.where(cond, a, b), [leaf(a), leaf(b)])


# ----------------------------------------------------------------------------
# reductions
# ----------------------------------------------------------------------------

@st.composite
def shape_and_axis(draw, min_dims=0):
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=4, min_side=1, max_side=5))
    ndim = len(shape)
    choice = draw(st.sampled_from(["none", "int", "tuple"]) if ndim else st.just("none"))
    if choice == "none":
        axis = None
    elif choice == "int":
        axis = draw(st.integers(-ndim, ndim - 1))
    else:
        axis = tuple(draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim,
                                   unique=True)))
    return shape, axis, draw(st.booleans())


@pytest.mark.parametrize("reduce", ["sum", "mean", "logsumexp"])
@SETTINGS
@given(data=st.data())
def test_reduction_gradients(reduce, data):
    shape, axis, keepdims = data.draw(shape_and_axis())
    x = data.draw(arrays(shape))
    fn = getattr(mg, reduce)
    out = fn(mg.Tensor(x), axis=axis, keepdims=keepdims)
    ref = {"sum": np.sum, "mean": np.mean,
           "logsumexp": lambda v, axis, keepdims: np.log(np.sum(np.exp(v), axis=axis,
                                                                keepdims=keepdims))}[reduce]
    np.testing.assert_allclose(out.numpy(), ref(x, axis=axis, keepdims=keepdims),
                               rtol=1e-12, atol=1e-12)
    mg.gradcheck(lambda t: fn(t, axis=axis, keepdims=keepdims), [leaf(x)])


@SETTINGS
@given(data=st.data())
def test_max_gradient(data):
    shape, axis, keepdims = data.draw(shape_and_axis())
    n = int(np.prod(shape))
    # distinct values, at least 0.1 apart, so no tie flips within eps
    x = np.asarray(data.draw(st.permutations(list(range(n)))), dtype=np.float64)
    x = (x * 0.1).reshape(shape)
    out = mg.max(mg.Tensor(x), axis=axis, keepdims=keepdims)
    np.testing.assert_array_equal(out.numpy(), np.max(x, axis=axis, keepdims=keepdims))
    mg.gradcheck(lambda t: mg.max(t, axis=axis, keepdims=keepdims), [leaf(x)])


def test_max_splits_gradient_between_ties():
    x = leaf([1.0, 3.0, 3.0, 2.0])
    mg.max(x).backward()
    np.testing.assert_array_equal(host(x.grad), [0.0, 0.5, 0.5, 0.0])


# ----------------------------------------------------------------------------
# shape primitives
# ----------------------------------------------------------------------------

@SETTINGS
@given(data=st.data())
def test_reshape_and_transpose_gradients(data):
    shape = data.draw(shapes)
    x = data.draw(arrays(shape))
    n = x.size
    new_shape = data.draw(st.sampled_from([(n,), (1, n), (n, 1), (-1,)]))
    axes = data.draw(st.permutations(list(range(len(shape)))))
    weights = np.arange(n, dtype=np.float64).reshape(shape)  # makes the order matter
    mg.gradcheck(lambda t: mg.reshape(t * weights, new_shape), [leaf(x)])
    mg.gradcheck(lambda t: mg.transpose(t * weights, axes), [leaf(x)])
    mg.gradcheck(lambda t: (t * weights).T, [leaf(x)])


@SETTINGS
@given(data=st.data())
def test_broadcast_to_gradient(data):
    (small, big), result = data.draw(pair_shapes)
    x = data.draw(arrays(small))
    mg.gradcheck(lambda t: mg.broadcast_to(t, result), [leaf(x)])


@SETTINGS
@given(data=st.data())
def test_concatenate_gradient(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    pieces = []
    for _ in range(data.draw(st.integers(1, 3))):
        s = list(shape)
        s[axis] = data.draw(st.integers(1, 4))
        pieces.append(data.draw(arrays(tuple(s))))
    out = mg.concatenate([mg.Tensor(p) for p in pieces], axis=axis)
    np.testing.assert_array_equal(out.numpy(), np.concatenate(pieces, axis=axis))
    mg.gradcheck(lambda *ts: mg.concatenate(ts, axis=axis) * np.arange(out.size).reshape(out.shape),
                 [leaf(p) for p in pieces])


@SETTINGS
@given(data=st.data())
def test_getitem_gradients(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
    x = data.draw(arrays(shape))
    rows = data.draw(st.lists(st.integers(-shape[0], shape[0] - 1), min_size=1, max_size=7))
    index = np.array(rows)  # repeats allowed: their gradients must add up
    basic = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    np.testing.assert_array_equal(mg.Tensor(x)[index].numpy(), x[index])
    np.testing.assert_array_equal(mg.Tensor(x)[basic].numpy(), x[basic])
    mg.gradcheck(lambda t: t[index] * 1.5, [leaf(x)])
    mg.gradcheck(lambda t: t[basic] * 1.5, [leaf(x)])


# ----------------------------------------------------------------------------
# matmul
# ----------------------------------------------------------------------------

@st.composite
def matmul_shapes(draw):
    n, k, m = (draw(st.integers(1, 5)) for _ in range(3))
    kind = draw(st.sampled_from(["vv", "mv", "vm", "mm", "batched"]))
    if kind == "vv":
        return (k,), (k,)
    if kind == "mv":
        batch = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
        return batch + (n, k), (k,)
    if kind == "vm":
        batch = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
        return (k,), batch + (k, m)
    if kind == "mm":
        return (n, k), (k, m)
    (ba, bb), _ = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2,
                                                         min_side=1, max_side=3))
    return ba + (n, k), bb + (k, m)


@SETTINGS
@given(data=st.data())
def test_matmul_gradients(data):
    sa, sb = data.draw(matmul_shapes())
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    np.testing.assert_allclose(mg.matmul(mg.Tensor(a), mg.Tensor(b)).numpy(), np.matmul(a, b),
                               rtol=1e-12, atol=1e-12)
    mg.gradcheck(lambda a, b: a @ b, [leaf(a), leaf(b)])


# ----------------------------------------------------------------------------
# composites and properties that need no finite differences
# ----------------------------------------------------------------------------

@SETTINGS
@given(data=st.data())
def test_composite_expression(data):
    (sa, sb), _ = data.draw(pair_shapes)
    a, b = data.draw(arrays(sa, 0.2, 2)), data.draw(arrays(sb))
    fn = lambda a, b: mg.log_sigmoid(a * b) + mg.tanh(b) * mg.sqrt(a) - mg.softplus(a - b) ** 2
    mg.gradcheck(fn, [leaf(a), leaf(b)])


@SETTINGS
@given(data=st.data())
def test_gradient_of_sum_is_ones(data):
    x = leaf(data.draw(arrays(data.draw(shapes))))
    x.sum().backward()
    np.testing.assert_array_equal(host(x.grad), np.ones(x.shape))


@SETTINGS
@given(data=st.data())
def test_backward_is_linear_in_the_seed(data):
    shape = data.draw(shapes)
    x = data.draw(arrays(shape))
    s1, s2 = data.draw(arrays(shape)), data.draw(arrays(shape))
    alpha = data.draw(st.floats(-2, 2))

    def grad_for(seed):
        t = leaf(x)
        (mg.tanh(t) * t).backward(seed)
        return host(t.grad)

    np.testing.assert_allclose(grad_for(alpha * s1 + s2), alpha * grad_for(s1) + grad_for(s2),
                               rtol=1e-10, atol=1e-12)


@SETTINGS
@given(data=st.data())
def test_product_equals_the_chain_of_its_parts(data):
    """d(x*y) computed in one op equals exp(log x + log y) through the chain rule."""
    shape = data.draw(shapes)
    x, y = data.draw(arrays(shape, 0.2, 3)), data.draw(arrays(shape, 0.2, 3))
    tx, ty = leaf(x), leaf(y)
    (tx * ty).sum().backward()
    cx, cy = leaf(x), leaf(y)
    mg.exp(mg.log(cx) + mg.log(cy)).sum().backward()
    np.testing.assert_allclose(host(cx.grad), host(tx.grad), rtol=1e-10)
    np.testing.assert_allclose(host(cy.grad), host(ty.grad), rtol=1e-10)
    np.testing.assert_allclose(host(tx.grad), y, rtol=1e-12)
