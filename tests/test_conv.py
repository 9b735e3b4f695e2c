"""Convolutions (minigrad.conv, nn.Conv2d / ConvTranspose2d / Flatten / Unflatten):

* gradients of conv2d, conv_transpose2d and upsample2d against central differences
  (float64; Hypothesis draws batch, channels, image and kernel sizes, strides,
  paddings, output paddings, with and without bias) on the NumPy and Numba backends;
* forward and every gradient equal to PyTorch's (skipped, with the reason, without
  PyTorch), float64 and float32, on every device;
* the layers: output shapes, the errors (their words checked), initialisation,
  parameter names, Sequential, and a small convolutional autoencoder that learns.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import minigrad as mg
from helpers import CPU_DEVICES, GPU_DEVICES, host
from minigrad import losses, nn, optim

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

on_cpu = pytest.mark.parametrize("device", CPU_DEVICES, indirect=True)


def leaf(a, dtype="float64"):
    return mg.Tensor(np.asarray(a), requires_grad=True, dtype=dtype)


def int_or_pair(low, high):
    """An int, or a pair of ints, in [low, high] (the layers take both)."""
    one = st.integers(low, high)
    return st.one_of(one, st.tuples(one, one))


def as_pair(v):
    return (v, v) if isinstance(v, int) else v


@st.composite
def conv_cases(draw, transposed):
    """(x shape, weight shape, with bias, keyword arguments) of a valid call."""
    n, c_in, c_out = (draw(st.integers(1, 3)) for _ in range(3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride, padding = draw(int_or_pair(1, 3)), draw(int_or_pair(0, 2))
    kwargs = dict(stride=stride, padding=padding)
    if transposed:
        op = tuple(draw(st.integers(0, s - 1)) for s in as_pair(stride))
        kwargs["output_padding"] = op
        size = tuple(draw(st.integers(1, 4)) for _ in range(2))
        out = mg.conv.transposed_output_size(size, kernel, as_pair(stride), as_pair(padding), op)
        assume(min(out) >= 1)
        weight = (c_in, c_out) + kernel
    else:
        # at least the kernel once padded, at most a few strides more
        size = tuple(max(1, k - 2 * p) + draw(st.integers(0, 5))
                     for k, p in zip(kernel, as_pair(padding)))
        weight = (c_out, c_in) + kernel
    return (n, c_in) + size, weight, draw(st.booleans()), kwargs


@on_cpu
@pytest.mark.parametrize("transposed", [False, True], ids=["conv2d", "conv_transpose2d"])
@SETTINGS
@given(data=st.data())
def test_gradients_match_central_differences(device, transposed, data):
    x_shape, w_shape, with_bias, kwargs = data.draw(conv_cases(transposed))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 31)))
    x, w = leaf(rng.standard_normal(x_shape)), leaf(rng.standard_normal(w_shape))
    out_channels = w_shape[1] if transposed else w_shape[0]
    inputs, names = [x, w], ["x", "weight"]
    if with_bias:
        inputs.append(leaf(rng.standard_normal(out_channels)))
        names.append("bias")
    fn = mg.conv_transpose2d if transposed else mg.conv2d
    kwargs.update(activation=data.draw(st.sampled_from(list(mg.activations.ACTIVATIONS))),
                  negative_slope=0.1)  # the activation fused into the same node
    mg.gradcheck(lambda x, w, *b: fn(x, w, b[0] if b else None, **kwargs), inputs,
                 names=names)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "sigmoid", "softplus"])
def test_a_layer_with_its_activation_equals_the_layer_then_the_activation(device, transposed,
                                                                          activation):
    """Conv2d(..., activation=a) -- fused into the convolution's kernels on the Numba and
    CUDA devices, the primitive after it on NumPy -- gives the outputs and gradients of
    the layer without activation followed by the activation module."""
    kind = nn.ConvTranspose2d if transposed else nn.Conv2d
    extra = dict(output_padding=1) if transposed else {}
    fused = kind(3, 4, 3, stride=2, padding=1, activation=activation, negative_slope=0.2,
                 dtype="float64", rng=0, **extra)
    plain = kind(3, 4, 3, stride=2, padding=1, dtype="float64", rng=0, **extra)
    after = nn.activation_module(activation, negative_slope=0.2)
    assert f"activation={activation!r}" in repr(fused)
    x = np.random.default_rng(1).standard_normal((5, 3, 7, 6))
    results = []
    for layers in ([fused], [plain, after]):
        inputs = mg.Tensor(x, requires_grad=True)
        y = inputs
        for layer in layers:
            y = layer(y)
        (y * y).sum().backward()
        results.append([host(y), host(inputs.grad), host(layers[0].weight.grad),
                        host(layers[0].bias.grad)])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@on_cpu
@SETTINGS
@given(shape=st.tuples(*(st.integers(1, 3),) * 4), scale=int_or_pair(1, 3))
def test_upsample_gradient_and_values(device, shape, scale):
    x = leaf(np.random.default_rng(0).standard_normal(shape))
    mg.gradcheck(lambda x: mg.upsample2d(x, scale), [x])
    sh, sw = as_pair(scale)
    y = host(mg.upsample2d(x, scale))
    assert y.shape == shape[:2] + (shape[2] * sh, shape[3] * sw)
    np.testing.assert_array_equal(y[:, :, ::sh, ::sw], host(x))
    np.testing.assert_array_equal(y[:, :, sh - 1::sh, sw - 1::sw], host(x))


# ----------------------------------------------------------------------------
# against PyTorch
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="the comparison with PyTorch needs torch")


#: (batch, in, out, H, W, kernel, stride, padding, output_padding, bias)
TORCH_CASES = [
    (2, 3, 4, 9, 7, 3, 1, 0, 0, True),
    (3, 1, 2, 12, 12, 3, 2, 1, 1, True),
    (2, 2, 3, 8, 11, (3, 2), (2, 3), (0, 1), (1, 2), False),
    (1, 3, 1, 5, 6, 4, 3, 2, 2, True),
    (4, 2, 2, 7, 7, 1, 2, 0, 1, True),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("transposed", [False, True], ids=["conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: "-".join(map(str, c)))
def test_forward_and_gradients_equal_pytorch(device, torch, dtype, transposed, case):
    n, c_in, c_out, h, w, kernel, stride, padding, output_padding, with_bias = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    weight = rng.standard_normal(((c_in, c_out) if transposed else (c_out, c_in))
                                 + as_pair(kernel)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype) if with_bias else None
    kwargs = dict(stride=stride, padding=padding)
    if transposed:
        kwargs["output_padding"] = output_padding
    functional = torch.nn.functional
    torch_fn = functional.conv_transpose2d if transposed else functional.conv2d
    ours_fn = mg.conv_transpose2d if transposed else mg.conv2d

    theirs = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias) if a is not None]
    ours = [leaf(a, dtype) for a in (x, weight, bias) if a is not None]
    expected = torch_fn(*theirs[:2], theirs[2] if with_bias else None, **kwargs)
    got = ours_fn(*ours[:2], ours[2] if with_bias else None, **kwargs)
    assert got.dtype == np.dtype(dtype) and got.shape == tuple(expected.shape)
    g = rng.standard_normal(got.shape).astype(dtype)
    expected.backward(torch.tensor(g))
    (got * mg.Tensor(g)).sum().backward()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(host(got), expected.detach().numpy(), **tol)
    for name, mine, reference in zip(("x", "weight", "bias"), ours, theirs):
        np.testing.assert_allclose(host(mine.grad), reference.grad.numpy(), **tol,
                                   err_msg=f"gradient of {name}")


@pytest.mark.parametrize("transposed", [False, True], ids=["conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("case", TORCH_CASES[1:3], ids=lambda c: "-".join(map(str, c)))
def test_every_device_computes_what_the_numpy_backend_does(device, transposed, case):
    """Without PyTorch too: forward and gradients of each device against the plain
    NumPy backend (float64)."""
    n, c_in, c_out, h, w, kernel, stride, padding, output_padding, _ = case
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((n, c_in, h, w)),
              rng.standard_normal(((c_in, c_out) if transposed else (c_out, c_in))
                                  + as_pair(kernel)), rng.standard_normal(c_out)]
    kwargs = dict(stride=stride, padding=padding)
    if transposed:
        kwargs["output_padding"] = output_padding
    fn = mg.conv_transpose2d if transposed else mg.conv2d
    results = {}
    for name in ("numpy", device.name):
        with mg.set_backend(name):
            inputs = [leaf(a) for a in arrays]
            y = fn(*inputs, **kwargs)
            (y * y).sum().backward()
            results[name] = [host(y)] + [host(t.grad) for t in inputs]
    for a, b in zip(results["numpy"], results[device.name]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("wanted", [(False, True, True), (True, False, False),
                                    (False, False, True)])
def test_only_the_gradients_asked_for_are_computed(device, transposed, wanted):
    """An input, a frozen weight or bias without requires_grad: no gradient for it,
    the same gradients as in the full computation for the others."""
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal((2, 3, 6, 5)),
              rng.standard_normal((3, 2, 3, 3) if transposed else (2, 3, 3, 3)),
              rng.standard_normal(2)]
    fn = mg.conv_transpose2d if transposed else mg.conv2d

    def gradients(requires):
        inputs = [mg.Tensor(a, requires_grad=r, dtype="float64") for a, r in
                  zip(arrays, requires)]
        (fn(*inputs, stride=2, padding=1) ** 2).sum().backward()
        return [None if t.grad is None else host(t.grad) for t in inputs]

    full, partial = gradients((True, True, True)), gradients(wanted)
    for want, a, b in zip(wanted, full, partial):
        if want:
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
        else:
            assert b is None


@on_cpu
@pytest.mark.parametrize("transposed", [False, True], ids=["conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("images", [1, 2], ids=["one-image", "uneven"])
@pytest.mark.parametrize("requires", [(True, True, True), (False, True, False)])
@pytest.mark.parametrize("keep_bytes", [0, 1 << 30])
def test_blocks_of_images_compute_what_one_block_does(device, monkeypatch, transposed,
                                                      images, requires, keep_bytes):
    """A batch convolved in blocks of images (minigrad.conv.BLOCK_BYTES; conv2d's
    rows kept for backward or recomputed there, KEEP_ROWS_BYTES) gives the
    one-block output and gradients."""
    monkeypatch.setattr(mg.conv, "KEEP_ROWS_BYTES", keep_bytes)
    monkeypatch.setattr(mg.threads, "_cores", 1)  # blocks not rounded up to the cores
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal((5, 3, 7, 6)),
              rng.standard_normal((3, 2, 3, 3) if transposed else (2, 3, 3, 3)),
              rng.standard_normal(2)]
    fn = mg.conv_transpose2d if transposed else mg.conv2d

    kernels = mg.Tensor(arrays[2], dtype="float64").device.kernels
    im2row, calls = kernels.im2row, []
    monkeypatch.setattr(kernels, "im2row", lambda *a, **k: calls.append(1) or im2row(*a, **k))

    def run(block_bytes):
        monkeypatch.setattr(mg.conv, "BLOCK_BYTES", block_bytes)
        inputs = [mg.Tensor(a, requires_grad=r, dtype="float64")
                  for a, r in zip(arrays, requires)]
        y = fn(*inputs, stride=2, padding=1)
        calls.clear()
        (y * y).sum().backward()
        if not transposed:  # conv2d's backward recomputes its rows only above the budget
            blocks = len(mg.conv._blocks(np, 5, per_image))
            assert len(calls) == (blocks if keep_bytes == 0 and requires[1] else 0)
        return [host(y)] + [None if t.grad is None else host(t.grad) for t in inputs]

    # bytes of rows per image: (kh kw C) x (pixels of the small side), float64
    per_image = (3 * 9 * 4 * 3 if not transposed else 2 * 9 * 7 * 6) * 8
    assert len(mg.conv._blocks(np, 5, per_image)) == 1  # the default: one block
    whole = run(mg.conv.BLOCK_BYTES)
    blocks = run(images * per_image)
    assert len(mg.conv._blocks(np, 5, per_image)) == (5 if images == 1 else 3)
    for a, b in zip(whole, blocks):
        if a is None:
            assert b is None
        else:
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


def test_an_empty_batch_gives_an_empty_batch(device):
    for fn, weight, size in ((mg.conv2d, (4, 2, 3, 3), (2, 2)),
                             (mg.conv_transpose2d, (2, 4, 3, 3), (11, 11))):
        x = leaf(np.zeros((0, 2, 5, 5)))
        w = leaf(np.ones(weight))
        y = fn(x, w, leaf(np.ones(4)), stride=2)
        assert y.shape == (0, 4) + size
        y.sum().backward()
        assert x.grad.shape == x.shape and float(host(w.grad).sum()) == 0.0


def test_upsample_equals_pytorch_nearest(torch):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    expected = torch.nn.functional.interpolate(torch.tensor(x), scale_factor=(2, 3),
                                               mode="nearest")
    np.testing.assert_array_equal(mg.upsample2d(mg.Tensor(x, dtype="float64"), (2, 3)).numpy(),
                                  expected.numpy())


def test_layers_initialise_and_compute_like_pytorch(torch):
    """Same weights in both: the same outputs; and the bounds of PyTorch's init."""
    for ours, theirs in ((nn.Conv2d(3, 5, 3, stride=2, padding=1, rng=0),
                          torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)),
                         (nn.ConvTranspose2d(5, 2, (2, 3), stride=2, output_padding=1, rng=0),
                          torch.nn.ConvTranspose2d(5, 2, (2, 3), stride=2, output_padding=1))):
        assert ours.weight.shape == tuple(theirs.weight.shape)
        bound = 1 / math.sqrt(math.prod(theirs.weight.shape[1:]))
        for mine, reference in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)):
            assert np.all(np.abs(host(mine)) <= bound)
            assert float(reference.detach().abs().max()) <= bound
        assert np.abs(host(ours.weight)).max() > 0.8 * bound  # spread over the whole range
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(host(ours.weight)))
            theirs.bias.copy_(torch.tensor(host(ours.bias)))
        x = np.random.default_rng(1).standard_normal((2, ours.in_channels, 6, 7))
        x = x.astype(np.float32)
        np.testing.assert_allclose(host(ours(mg.Tensor(x))), theirs(torch.tensor(x)).detach(),
                                   rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# the layers
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("layer, input_shape, expected", [
    (lambda: nn.Conv2d(1, 8, 3, stride=2, padding=1), (1, 28, 28), (8, 14, 14)),
    (lambda: nn.Conv2d(2, 3, (3, 5), stride=(1, 2), padding=(0, 2)), (2, 9, 13), (3, 7, 7)),
    (lambda: nn.Conv2d(3, 4, 4), (5, 3, 4, 6), (5, 4, 1, 3)),
    (lambda: nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1), (8, 14, 14),
     (1, 28, 28)),
    (lambda: nn.ConvTranspose2d(4, 2, (2, 3), stride=(2, 3), output_padding=(1, 2)),
     (4, 5, 6), (2, 11, 20)),
])
def test_output_shape_is_the_shape_forward_gives(layer, input_shape, expected):
    layer = layer()
    assert layer.output_shape(input_shape) == expected
    batch = input_shape if len(input_shape) == 4 else (2,) + input_shape
    y = layer(mg.Tensor(np.zeros(batch, np.float32)))
    assert y.shape == batch[:1] + (expected if len(expected) == 3 else expected[1:])
    assert y.dtype == np.float32


@pytest.mark.parametrize("make, message", [
    (lambda: nn.Conv2d(0, 4, 3), r"Conv2d: in_channels=0; expected a positive integer"),
    (lambda: nn.Conv2d(1, -2, 3), r"Conv2d: out_channels=-2; expected a positive integer"),
    (lambda: nn.Conv2d(1, 2, 0), r"Conv2d: kernel_size=0; expected an integer >= 1"),
    (lambda: nn.Conv2d(1, 2, (3, 0)), r"Conv2d: kernel_size=\(3, 0\); expected an integer"),
    (lambda: nn.Conv2d(1, 2, 3, stride=0), r"Conv2d: stride=0; expected an integer >= 1"),
    (lambda: nn.Conv2d(1, 2, 3, padding=-1), r"Conv2d: padding=-1; expected an integer >= 0"),
    (lambda: nn.Conv2d(1, 2, 3.5), r"Conv2d: kernel_size=3.5"),
    (lambda: nn.ConvTranspose2d(1, 2, 3, stride=2, output_padding=2),
     r"ConvTranspose2d: output_padding=\(2, 2\) must be smaller than stride=\(2, 2\)"),
    (lambda: nn.ConvTranspose2d(1, 2, 3, output_padding=1),
     r"output_padding=\(1, 1\) must be smaller than stride=\(1, 1\)"),
    (lambda: nn.Unflatten((2, 0)), r"Unflatten: shape=\(2, 0\); expected positive sizes"),
])
def test_bad_layer_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("layer, shape, message", [
    (lambda: nn.Conv2d(3, 4, 3), (3, 8, 8),
     r"Conv2d\(3, 4, kernel_size=\(3, 3\).*\): input has shape \(3, 8, 8\) \(3 dimensions\); "
     r"expected a 4-D batch \(batch, 3, height, width\)"),
    (lambda: nn.Conv2d(3, 4, 3), (2, 1, 8, 8),
     r"input has shape \(2, 1, 8, 8\) with 1 channels; expected \(batch, 3, height, width\)"),
    (lambda: nn.Conv2d(1, 4, 5, padding=1), (2, 1, 2, 9),
     r"input of shape \(2, 1, 2, 9\) has height x width 2x9, 4x11 with padding=\(1, 1\), "
     r"smaller than the kernel 5x5"),
    (lambda: nn.ConvTranspose2d(2, 1, 3), (4, 3, 5, 5),
     r"ConvTranspose2d\(2, 1, .*\): input has shape \(4, 3, 5, 5\) with 3 channels; "
     r"expected \(batch, 2, height, width\)"),
    (lambda: nn.ConvTranspose2d(2, 1, 1, padding=2), (4, 2, 3, 3),
     r"gives an output of height x width -1x-1; expected at least 1x1"),
    (lambda: nn.Unflatten((2, 3)), (4, 5), r"Unflatten\(2, 3\): input has shape \(4, 5\); expected "
                                   r"\(batch, 6\)"),
])
def test_inputs_a_layer_refuses_are_named(layer, shape, message):
    layer = layer()
    with pytest.raises(ValueError, match=message):
        layer(mg.Tensor(np.zeros(shape, np.float32)))
    if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and len(shape) == 4:
        with pytest.raises(ValueError, match=message):
            layer.output_shape(shape)


def test_output_shape_of_one_image_names_that_shape():
    layer = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"input has shape \(2, 8, 8\) with 2 channels; "
                                         r"expected \(3, height, width\)"):
        layer.output_shape((2, 8, 8))
    with pytest.raises(ValueError, match=r"input has shape \(8, 8\) \(2 dimensions\); "
                                         r"expected \(3, height, width\) or a 4-D batch"):
        layer.output_shape((8, 8))


def test_functional_errors_name_the_operands():
    x = mg.Tensor(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"conv2d: input has shape \(1, 2, 5, 5\) with 2 "
                                         r"channels; expected \(batch, 3, height, width\)"):
        mg.conv2d(x, np.zeros((4, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"conv2d: weight has shape \(4, 2, 3\); expected 4 "
                                         r"dimensions \(out_channels, in_channels, kh, kw\)"):
        mg.conv2d(x, np.zeros((4, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"conv_transpose2d: bias has shape \(2,\); expected "
                                         r"\(4,\) for weight of shape \(2, 4, 3, 3\)"):
        mg.conv_transpose2d(x, np.zeros((2, 4, 3, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(TypeError, match=r"conv2d: weight has dtype float64 but the input "
                                        r"float32"):
        mg.conv2d(x, np.zeros((4, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"conv2d: stride=\(1, 2, 3\); expected an integer"):
        mg.conv2d(x, np.zeros((4, 2, 3, 3), np.float32), stride=(1, 2, 3))
    with pytest.raises(ValueError, match=r"upsample2d: input has shape \(2, 5\)"):
        mg.upsample2d(np.zeros((2, 5), np.float32), 2)


def test_parameters_are_named_like_dense_and_round_trip():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1, rng=0), nn.ReLU(),
                          nn.ConvTranspose2d(4, 1, 3, bias=False, rng=1), nn.Flatten())
    state = model.state_dict()
    assert list(state) == ["0.weight", "0.bias", "2.weight"]
    assert state["0.weight"].shape == (4, 1, 3, 3) and state["2.weight"].shape == (4, 1, 3, 3)
    assert model[2].bias is None and "bias=False" in repr(model)
    other = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1, rng=5), nn.ReLU(),
                          nn.ConvTranspose2d(4, 1, 3, bias=False, rng=6), nn.Flatten())
    x = mg.Tensor(np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32))
    assert not np.allclose(host(other(x)), host(model(x)))
    other.load_state_dict(state)
    np.testing.assert_array_equal(host(other(x)), host(model(x)))
    assert model(x).shape == (2, 1 * 6 * 6)


def test_same_seed_same_weights_and_dtype():
    a, b = nn.Conv2d(2, 3, 3, rng=4, dtype="float64"), nn.Conv2d(2, 3, 3, rng=4, dtype="float64")
    np.testing.assert_array_equal(host(a.weight), host(b.weight))
    assert a.weight.dtype == np.float64 and a.bias.dtype == np.float64


def test_flatten_and_unflatten_invert_each_other_and_pass_gradients():
    x = leaf(np.random.default_rng(0).standard_normal((3, 2, 4, 5)))
    flat = nn.Flatten()(x)
    assert flat.shape == (3, 40)
    back = nn.Unflatten((2, 4, 5))(flat)
    np.testing.assert_array_equal(host(back), host(x))
    mg.gradcheck(lambda x: nn.Unflatten((4, 10))(nn.Flatten()(x)), [x])


LEARNING_SIZES = [((12, 12), 1), ((9, 13), 0), ((10, 13), (1, 0))]


# every size on the CPU devices; one on the GPU ones, whose other geometries the
# parity tests cover (each emulated step runs its kernels' blocks as host threads)
@pytest.mark.parametrize("device, size, output_padding",
                         [(d, *case) for d in CPU_DEVICES for case in LEARNING_SIZES]
                         + [(d, *LEARNING_SIZES[0]) for d in GPU_DEVICES], indirect=["device"])
def test_a_small_convolutional_autoencoder_learns(device, size, output_padding):
    """Conv2d stride 2 -> relu -> ConvTranspose2d stride 2 -> sigmoid gives back the
    input's size (output_padding picks it for even sizes) and learns to reconstruct."""
    h, w = size
    rng = np.random.default_rng(0)
    # smooth pictures: a bright blob at a random place in each
    yy, xx = np.mgrid[0:h, 0:w]
    centres = rng.uniform(0, 1, (16, 2)) * (h, w)
    images = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 8)
    x = mg.Tensor(images[:, None].astype(np.float32))
    model = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1, rng=1), nn.ReLU(),
                          nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1,
                                             output_padding=output_padding, rng=2),
                          nn.Sigmoid())
    assert model[2].output_shape(model[0].output_shape((1, h, w))) == (1, h, w)
    opt = optim.Adam(model.parameters(), lr=0.03)
    history = []
    for _ in range(40):
        opt.zero_grad()
        loss = losses.mse(model(x), x)
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert model(x).shape == (16, 1, h, w)
    assert history[-1] < 0.25 * history[0], history[::8]


def test_float32_forward_numba_equals_the_numpy_reference():
    pytest.importorskip("numba")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 11, 9)).astype(np.float32)
    outputs = {}
    for backend in ("numpy", "numba"):
        with mg.set_backend(backend):
            encoder = nn.Conv2d(3, 5, 3, stride=2, padding=1, rng=0)
            decoder = nn.ConvTranspose2d(5, 3, 3, stride=2, padding=1, rng=1)
            t = mg.Tensor(x, requires_grad=True)
            y = decoder(mg.relu(encoder(t)))
            y.sum().backward()
            outputs[backend] = [host(y), host(t.grad)] + [host(p.grad) for p in
                                                          encoder.parameters()]
    assert outputs["numba"][0].dtype == np.float32
    for a, b in zip(outputs["numpy"], outputs["numba"]):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5)
