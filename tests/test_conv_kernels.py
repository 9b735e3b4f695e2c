"""The convolution kernels (minigrad/kernels/conv.py, conv.cu): im2row and row2im of
every backend against the NumPy reference, and the reference against a loop over
the definition; no subnormal written; the argument checks.

Parity runs on every device (the ``device`` fixture: NumPy, Numba, the GPU and
CuPy emulated on the host); the Numba versions also in their serial and their
parallel (one image per thread) form.
"""
import itertools
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import HAS_NUMBA, tolerance
from minigrad import activations, kernels
from minigrad.kernels import _jit, conv, conv_epilogue

REF = kernels.Kernels("numpy")
SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
DTYPES = [np.float32, np.float64]


@st.composite
def geometries(draw):
    """(image shape, kernel_size, stride, padding) with the kernel inside the padded
    image."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    size = tuple(max(1, k - 2 * p) + draw(st.integers(0, 6)) for k, p in zip(kernel, padding))
    return (n, c) + size, kernel, stride, padding


def im2row_by_definition(x, kernel_size, stride, padding):
    """rows[(n, oy, ox), (ki, kj, c)] = x[n, c, oy sh - ph + ki, ox sw - pw + kj], one
    entry at a time."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    rows = np.zeros((n, oh, ow, kh, kw, c), x.dtype)
    for b, ch, ki, kj, oy, ox in itertools.product(range(n), range(c), range(kh), range(kw),
                                                   range(oh), range(ow)):
        iy, ix = oy * sh - ph + ki, ox * sw - pw + kj
        if 0 <= iy < h and 0 <= ix < w:
            rows[b, oy, ox, ki, kj, ch] = x[b, ch, iy, ix]
    return rows.reshape(n * oh * ow, kh * kw * c)


def test_every_conv_kernel_has_three_versions():
    assert conv.KERNELS + conv_epilogue.KERNELS == (
        "im2row", "row2im", "conv_forward", "conv_backward")
    assert set(conv.KERNELS + conv_epilogue.KERNELS) <= set(kernels.names())
    for module in (conv, conv_epilogue):
        for name in module.KERNELS:
            for backend in ("numpy", "numba", "cupy"):
                assert getattr(kernels.Kernels(backend), name).__wrapped__ is \
                    getattr(module, f"{name}_{backend}")


@settings(max_examples=25, deadline=None)
@given(geometry=geometries(), seed=st.integers(0, 2 ** 31))
def test_reference_is_the_definition_and_row2im_its_adjoint(geometry, seed):
    """im2row as defined entry by entry; row2im its adjoint: <im2row(x), R> = <x, row2im(R)>."""
    shape, kernel_size, stride, padding = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    rows = REF.im2row(x, kernel_size, stride, padding)
    np.testing.assert_array_equal(rows, im2row_by_definition(x, kernel_size, stride, padding))
    other = rng.standard_normal(rows.shape)
    image = REF.row2im(other, shape, kernel_size, stride, padding)
    assert image.shape == shape
    np.testing.assert_allclose(np.sum(rows * other), np.sum(x * image), rtol=1e-12, atol=1e-12)


def _check_parity(device, geometry, dtype, seed, strided):
    shape, kernel_size, stride, padding = geometry
    rng = np.random.default_rng(seed)
    big = rng.standard_normal((shape[0] * 2,) + shape[1:]).astype(dtype)
    x = big[::2] if strided else big[:shape[0]]
    expected = REF.im2row(x, kernel_size, stride, padding)
    x_dev = device.to_device(big)[::2] if strided else device.to_device(x)
    got = device.to_host(device.kernels.im2row(x_dev, kernel_size, stride, padding))
    assert got.dtype == dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)  # a copy: exact

    c = rng.standard_normal(expected.shape).astype(dtype)
    expected_image = REF.row2im(c, shape, kernel_size, stride, padding)
    image = device.to_host(device.kernels.row2im(device.to_device(c), shape, kernel_size,
                                                 stride, padding))
    assert image.dtype == dtype and image.shape == shape
    np.testing.assert_allclose(image, expected_image, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(geometry=geometries(), seed=st.integers(0, 2 ** 31), strided=st.booleans())
def test_kernels_equal_the_reference_on_every_device(device, dtype, geometry, seed, strided):
    _check_parity(device, geometry, dtype, seed, strided)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", [
    ((2, 3, 20, 21), (3, 3), (1, 1), (1, 1)),   # more entries than one grid-stride pass
    ((4, 1, 28, 28), (3, 3), (2, 2), (1, 1)),   # the autoencoders' first layer
    ((1, 2, 5, 4), (5, 4), (1, 1), (0, 0)),     # one output pixel
    ((3, 2, 3, 3), (1, 1), (3, 3), (2, 2)),     # padding wider than the kernel
])
def test_kernels_equal_the_reference_at_fixed_sizes(device, dtype, geometry):
    _check_parity(device, geometry, dtype, 0, False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_row2im_writes_into_out(device, dtype, layout):
    """row2im(..., out=image): the reference's image written into ``out`` (a block of a
    larger batch, or a strided view), which is returned."""
    geometry = ((3, 3), (2, 2), (1, 1))
    shape = (3, 2, 7, 6)
    rng = np.random.default_rng(4)
    rows = rng.standard_normal(REF.im2row(np.zeros(shape), *geometry).shape).astype(dtype)
    expected = REF.row2im(rows, shape, *geometry)
    big = device.to_device(np.full((7,) + shape[1:], 5.0, dtype))
    out = big[2:5] if layout == "contiguous" else big[::2][:3]
    got = device.kernels.row2im(device.to_device(rows), shape, *geometry, out=out)
    assert got is out
    host_big = device.to_host(big)
    np.testing.assert_allclose(host_big[2:5] if layout == "contiguous" else host_big[::2][:3],
                               expected, **tolerance(dtype))
    rest = np.delete(host_big, [2, 3, 4] if layout == "contiguous" else [0, 2, 4], axis=0)
    assert np.all(rest == 5.0)  # nothing written outside out


def test_row2im_out_is_checked():
    rows = np.zeros((2 * 9, 18), np.float32)
    with pytest.raises(ValueError, match=r"row2im: out has shape \(2, 2, 4, 4\), expected "
                                         r"image_shape \(2, 2, 5, 5\)"):
        REF.row2im(rows, (2, 2, 5, 5), (3, 3), (1, 1), (0, 0), out=np.zeros((2, 2, 4, 4),
                                                                           np.float32))
    with pytest.raises(TypeError, match="row2im: out has dtype float64, expected rows' float32"):
        REF.row2im(rows, (2, 2, 5, 5), (3, 3), (1, 1), (0, 0), out=np.zeros((2, 2, 5, 5)))


# ----------------------------------------------------------------------------
# the layer's epilogue: conv_forward and conv_backward
# ----------------------------------------------------------------------------

ACTIVATION_NAMES = list(activations.ACTIVATIONS)


def epilogue_by_definition(product, bias, entry, slope, shape):
    """y[n, c, i, j] = act(product[c, (n, i, j)] + bias[c]), one entry at a time."""
    n, c, h, w = shape
    y = np.empty(shape, product.dtype)
    for b, ch, i, j in itertools.product(range(n), range(c), range(h), range(w)):
        z = product[ch, (b * h + i) * w + j] + (0 if bias is None else bias[ch])
        y[b, ch, i, j] = entry.forward(np.array([z]), product.dtype.type(slope))[0]
    return y


def _epilogue_operands(shape, dtype, seed, saturate=False):
    rng = np.random.default_rng(seed)
    n, c = shape[:2]
    scale = 200.0 if saturate else 2.0  # saturating: sigmoid's derivative underflows
    product = (rng.standard_normal((c, n * int(np.prod(shape[2:])))) * scale).astype(dtype)
    return product, rng.standard_normal(c).astype(dtype), rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_epilogue_reference_is_the_definition(name):
    """conv_forward as defined entry by entry; conv_backward's grad_z is grad_y times the
    table's derivative, laid out as asked, and grad_bias its sum per channel."""
    entry, shape = activations.activation(name), (2, 3, 2, 4)
    product, bias, grad_y = _epilogue_operands(shape, np.float64, 1)
    y = REF.conv_forward(np.empty(shape), bias, entry, 0.1, product=product)
    np.testing.assert_allclose(y, epilogue_by_definition(product, bias, entry, 0.1, shape),
                               rtol=1e-15)
    in_place = product.reshape(3, 2, 2, 4).transpose(1, 0, 2, 3).copy()
    assert REF.conv_forward(in_place, None, entry, 0.1) is in_place
    np.testing.assert_allclose(in_place, epilogue_by_definition(product, None, entry, 0.1, shape),
                               rtol=1e-15)
    grad_z, grad_bias = REF.conv_backward(grad_y, y, entry, 0.1)
    expected = grad_y * entry.derivative(y, 0.1)
    np.testing.assert_allclose(grad_z, expected, rtol=1e-15)
    np.testing.assert_allclose(grad_bias, expected.sum(axis=(0, 2, 3)), rtol=1e-12)
    by_channel, _ = REF.conv_backward(grad_y, y, entry, 0.1, channel_major=True)
    np.testing.assert_array_equal(by_channel, expected.transpose(1, 0, 2, 3).reshape(3, -1))


def _check_epilogue_parity(device, name, shape, dtype, seed, saturate=False):
    entry = activations.activation(name)
    product, bias, grad_y = _epilogue_operands(shape, dtype, seed, saturate)
    tol = tolerance(dtype)
    expected = REF.conv_forward(np.empty(shape, dtype), bias, entry, 0.2, product=product)
    got = device.kernels.conv_forward(device.to_device(np.empty(shape, dtype)),
                                      device.to_device(bias), entry, 0.2,
                                      product=device.to_device(product))
    np.testing.assert_allclose(device.to_host(got), expected, **tol)
    in_place = device.to_device(expected.copy())
    device.kernels.conv_forward(in_place, None, entry, 0.2)
    np.testing.assert_allclose(device.to_host(in_place),
                               REF.conv_forward(expected.copy(), None, entry, 0.2), **tol)
    for channel_major in (False, True):
        want_z, want_b = REF.conv_backward(grad_y, expected, entry, 0.2, channel_major)
        grad_z, grad_b = device.kernels.conv_backward(device.to_device(grad_y),
                                                      device.to_device(expected), entry, 0.2,
                                                      channel_major)
        grad_z, grad_b = device.to_host(grad_z), device.to_host(grad_b)
        assert grad_z.shape == want_z.shape and grad_z.dtype == dtype
        np.testing.assert_allclose(grad_z, want_z, **tol)
        np.testing.assert_allclose(grad_b, want_b, rtol=tol["rtol"],
                                   atol=tol["atol"] * grad_y.size)
        tiny = np.finfo(dtype).tiny
        for written in (grad_z, grad_b, device.to_host(got)):
            assert not np.any((written != 0) & (np.abs(written) < tiny))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 1, 1), (3, 7, 14, 14)])
def test_epilogue_kernels_equal_the_reference_on_every_device(device, dtype, name, shape):
    _check_epilogue_parity(device, name, shape, dtype, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "softplus", "tanh"])
def test_epilogue_kernels_flush_saturated_values(device, dtype, name):
    """Inputs of magnitude 200: sigmoid's output and every derivative underflow; what the
    kernels write has no subnormal and matches the reference."""
    _check_epilogue_parity(device, name, (2, 3, 4, 4), dtype, 5, saturate=True)


def test_epilogue_arguments_are_checked():
    entry = activations.activation("relu")
    y = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"conv_forward: product has shape \(3, 31\), expected "
                                         r"\(3, 32\) \(channels, batch \* height \* width\)"):
        REF.conv_forward(y, None, entry, 0.01, product=np.zeros((3, 31), np.float32))
    with pytest.raises(ValueError, match=r"conv_forward: bias has shape \(4,\), expected \(3,\)"):
        REF.conv_forward(y, np.zeros(4, np.float32), entry)
    with pytest.raises(TypeError, match="conv_forward: product has dtype float64, expected y's"):
        REF.conv_forward(y, None, entry, 0.01, product=np.zeros((3, 32)))
    with pytest.raises(ValueError, match=r"conv_backward: y has shape \(3, 4, 4\); expected an "
                                         r"image batch"):
        REF.conv_backward(y[0], y[0], entry)
    with pytest.raises(ValueError, match=r"conv_backward: grad_y has shape \(1, 3, 4, 4\), "
                                         r"expected y's shape \(2, 3, 4, 4\)"):
        REF.conv_backward(y[:1], y, entry)
    with pytest.raises(TypeError, match="conv_forward: activation is 'relu'; expected an entry"):
        REF.conv_forward(y, None, "relu")


@pytest.fixture(params=["serial", "parallel"])
def variant(request, monkeypatch):
    monkeypatch.setattr(_jit, "PARALLEL_MIN_SIZE", 1 if request.param == "parallel" else 1 << 62)
    return request.param


@pytest.mark.skipif(not HAS_NUMBA, reason="the Numba kernels need numba")
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(geometry=geometries(), seed=st.integers(0, 2 ** 31))
def test_numba_serial_and_parallel_versions(variant, dtype, geometry, seed):
    numba_kernels = kernels.Kernels("numba")
    shape, kernel_size, stride, padding = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(numba_kernels.im2row(x, kernel_size, stride, padding),
                                  REF.im2row(x, kernel_size, stride, padding))
    c = rng.standard_normal(REF.im2row(x, kernel_size, stride, padding).shape).astype(dtype)
    # each pixel's taps added in the reference's order: the same sums to the bit
    np.testing.assert_array_equal(numba_kernels.row2im(c, shape, kernel_size, stride, padding),
                                  REF.row2im(c, shape, kernel_size, stride, padding))


@pytest.mark.skipif(not HAS_NUMBA, reason="the Numba kernels need numba")
@pytest.mark.parametrize("dtype, name", [(np.float32, "relu"), (np.float64, "tanh")])
def test_numba_epilogues_serial_and_parallel(variant, dtype, name):
    """conv_forward / conv_backward, one channel per thread or all on one (two
    specializations: each parallel version compiles for seconds)."""
    host = types.SimpleNamespace(kernels=kernels.Kernels("numba"), to_device=np.asarray,
                                 to_host=np.asarray)
    _check_epilogue_parity(host, name, (3, 5, 6, 7), dtype, 7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_subnormal_is_written(device, dtype):
    """Subnormal inputs come out as 0 (im2row), and so do sums of them (row2im)."""
    tiny = np.finfo(dtype).tiny
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 6, 5)).astype(dtype)
    x[:, :, ::2] = dtype(tiny / 8)  # subnormal rows
    geometry = ((3, 3), (1, 2), (1, 1))
    rows = device.to_host(device.kernels.im2row(device.to_device(x), *geometry))
    assert not np.any((rows != 0) & (np.abs(rows) < tiny))
    assert np.count_nonzero(rows) == np.count_nonzero(REF.im2row(x, *geometry))
    c = np.full(rows.shape, tiny / 16, dtype)
    c[::3] = 1.0
    image = device.to_host(device.kernels.row2im(device.to_device(c), x.shape, *geometry))
    assert not np.any((image != 0) & (np.abs(image) < tiny))
    assert np.any(image == 0) and np.any(image >= 1)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_arguments_are_checked(backend):
    if backend == "numba" and not HAS_NUMBA:
        pytest.skip("the Numba kernels need numba")
    k = kernels.Kernels(backend)
    x = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"im2row: x has shape \(3, 5, 5\); expected an image "
                                         r"batch \(batch, channels, height, width\)"):
        k.im2row(x[0], (3, 3), (1, 1), (0, 0))
    with pytest.raises(TypeError, match="im2row: x has dtype int32"):
        k.im2row(x.astype(np.int32), (3, 3), (1, 1), (0, 0))
    with pytest.raises(ValueError, match=r"im2row: stride is \(0, 1\); expected a pair of "
                                         r"integers >= 1"):
        k.im2row(x, (3, 3), (0, 1), (0, 0))
    with pytest.raises(ValueError, match=r"im2row: padding is 1; expected a pair"):
        k.im2row(x, (3, 3), (1, 1), 1)
    with pytest.raises(ValueError, match=r"im2row: the image of shape \(2, 3, 5, 5\) padded by "
                                         r"\(1, 0\) is smaller than the kernel \(8, 2\)"):
        k.im2row(x, (8, 2), (1, 1), (1, 0))
    rows = np.zeros((2 * 9, 27), np.float32)
    k.row2im(rows, x.shape, (3, 3), (1, 1), (0, 0))  # valid
    with pytest.raises(ValueError, match=r"row2im: rows has shape \(18, 26\), expected "
                                         r"\(18, 27\) \(batch \* oh \* ow, kh \* kw "
                                         r"\* channels\)"):
        k.row2im(rows[:, 1:], x.shape, (3, 3), (1, 1), (0, 0))
    with pytest.raises(ValueError, match=r"row2im: image_shape is \(3, 5, 5\); expected four integers"):
        k.row2im(rows, (3, 5, 5), (3, 3), (1, 1), (0, 0))
    with pytest.raises(TypeError, match="row2im: rows has dtype float16"):
        k.row2im(rows.astype(np.float16), x.shape, (3, 3), (1, 1), (0, 0))


def test_cupy_kernels_refuse_host_arrays():
    cupy_kernels = kernels.Kernels("cupy")
    with pytest.raises(TypeError, match="im2row: the 'cupy' backend's kernels run on the GPU"):
        cupy_kernels.im2row(np.zeros((1, 1, 3, 3), np.float32), (3, 3), (1, 1), (0, 0))
    with pytest.raises(TypeError, match="row2im: the 'cupy' backend's kernels run on the GPU"):
        cupy_kernels.row2im(np.zeros((1, 9), np.float32), (1, 1, 3, 3), (3, 3), (1, 1), (0, 0))
