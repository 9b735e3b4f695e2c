"""Convolutional autoencoders (autoencoders/architecture.py): every flavor, any image size.

* the decoder gives back the input's shape for any H x W, channel list and odd kernel
  (Hypothesis), checked at construction;
* every flavor's full loss against central differences in float64 with a small conv
  encoder (Hypothesis chooses the image shape, channels, activation and loss);
* the contractive penalty of a conv encoder is the exact ‖∂h/∂x‖_F² (against the
  Jacobian by finite differences), padding included;
* conv models learn on block images of two sizes, save and load (format 2) without
  pickle, take (n, C, H, W) images, refuse bad options with the option named; the
  command line's ``--arch conv`` runs every command.
"""
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minigrad as mg
from minigrad import Tensor, no_grad
from autoencoders import (FLAVORS, ContractiveAutoencoder, DenoisingAutoencoder,
                          SparseAutoencoder, VanillaAutoencoder, VariationalAutoencoder,
                          datasets)
from autoencoders import cli, files
from autoencoders.contractive import jacobian_norms

from helpers import CPU_DEVICES, check_loss_gradients, usage_error, write_fashion_like

SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
on_cpu = pytest.mark.parametrize("device", CPU_DEVICES, indirect=True)


@pytest.fixture(autouse=True)
def numpy_backend():
    with mg.set_backend("numpy"):
        yield


@st.composite
def small_conv(draw, fully_convolutional=True):
    """Options of a small conv model and a batch size; a fully convolutional one
    (sizes [input_dim]: the last convolution's output is the code) among them."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(3, 7)), draw(st.integers(3, 7)))
    channels = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    hidden = draw(st.lists(st.integers(2, 4), max_size=1))
    dense = [*hidden, draw(st.integers(1, 3))]
    if fully_convolutional and draw(st.booleans()):
        dense = []
    loss = draw(st.sampled_from(["bce", "mse"]))
    return dict(sizes=[math.prod(shape), *dense], image_shape=shape,
                channels=channels, kernel_size=draw(st.sampled_from([1, 3])), loss=loss,
                output="sigmoid" if loss == "bce" else "identity",
                activation=draw(st.sampled_from(["tanh", "sigmoid", "softplus", "leaky_relu"])),
                seed=draw(st.integers(0, 2 ** 16)), dtype="float64"), draw(st.integers(1, 3))


@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40),
       st.lists(st.integers(1, 4), min_size=1, max_size=3), st.sampled_from([1, 3, 5]))
@settings(max_examples=60, deadline=None)
def test_the_decoder_gives_back_any_image_shape(c, h, w, channels, k):
    shape = (c, h, w)
    model = VanillaAutoencoder([c * h * w, 3], image_shape=shape, channels=channels,
                               kernel_size=k, seed=0)
    x = np.random.default_rng(0).random((2, c * h * w)).astype(np.float32)
    assert model.reconstruct(x).shape == (2, c * h * w)
    assert model.transform(x).shape == (2, 3)


@on_cpu
@SETTINGS
@given(small_conv())
def test_vanilla_conv_gradients(device, opts):
    options, batch = opts
    check_loss_gradients(VanillaAutoencoder(**options), batch, options["seed"])


@on_cpu
@SETTINGS
@given(small_conv(), st.sampled_from(["l1", "kl"]))
def test_sparse_conv_gradients(device, opts, sparsity):
    options, batch = opts
    latent = "sigmoid" if sparsity == "kl" else "tanh"
    model = SparseAutoencoder(sparsity=sparsity, latent_activation=latent, **options)
    check_loss_gradients(model, batch, options["seed"])


@on_cpu
@SETTINGS
@given(small_conv(), st.sampled_from(["gaussian", "masking", "salt_and_pepper"]))
def test_denoising_conv_gradients(device, opts, noise):
    options, batch = opts
    check_loss_gradients(DenoisingAutoencoder(noise=noise, noise_level=0.2, **options), batch,
                         options["seed"])


@on_cpu
@SETTINGS
@given(small_conv(), st.sampled_from(["sigmoid", "tanh"]))
def test_contractive_conv_gradients(device, opts, latent):
    options, batch = opts
    model = ContractiveAutoencoder(weight=0.7, latent_activation=latent, **options)
    check_loss_gradients(model, batch, options["seed"])


@on_cpu
@SETTINGS
@given(small_conv(fully_convolutional=False))  # the heads are Dense layers to latent_dim
def test_variational_conv_gradients(device, opts):
    options, batch = opts
    check_loss_gradients(VariationalAutoencoder(beta=0.5, **options), batch, options["seed"])


@pytest.mark.parametrize("shape,channels,k,sizes", [
    ((2, 7, 6), (3,), 3, [84, 5]),          # one convolution, padding on every side
    ((1, 9, 8), (2, 3), 3, [72, 6, 4]),     # two, and a Dense hidden layer
    ((1, 5, 5), (2,), 5, [25, 3]),          # a kernel as large as the padded image
    ((1, 4, 6), (2,), 1, [24, 3]),          # 1x1: rows and columns no window reaches
    ((1, 7, 6), (2, 2), 3, [42]),           # fully convolutional: the code is a feature map
])
def test_the_contractive_penalty_of_a_conv_encoder_is_the_exact_jacobian_norm(shape, channels,
                                                                              k, sizes):
    model = ContractiveAutoencoder(sizes, image_shape=shape, channels=channels, kernel_size=k,
                                   activation="tanh", dtype="float64", seed=0)
    x = np.random.default_rng(1).random((3, sizes[0]))
    _, norms = jacobian_norms(model.encoder, Tensor(x))
    eps, exact = 1e-6, []
    with no_grad():
        for row in x:
            columns = []
            for j in range(sizes[0]):
                up, down = row.copy(), row.copy()
                up[j] += eps
                down[j] -= eps
                columns.append((model.encoder(Tensor(up[None])).numpy()
                                - model.encoder(Tensor(down[None])).numpy())[0] / (2 * eps))
            exact.append((np.array(columns) ** 2).sum())
    np.testing.assert_allclose(norms.numpy(), exact, rtol=1e-7)


@pytest.mark.parametrize("size", [(12, 12), (9, 13)])
def test_a_conv_autoencoder_learns_block_images_of_two_sizes(size):
    images, _, _ = datasets.blocks(256, size=max(size), seed=0)
    images = np.ascontiguousarray(images[:, :size[0], :size[1]])
    with mg.set_backend("numba"):
        model = VanillaAutoencoder([size[0] * size[1], 8], image_shape=(1, *size),
                                   channels=(8, 16), seed=0)
        history = model.fit(images, epochs=15, batch_size=32, lr=3e-3, progress=False)
    assert history["total"][-1] < 0.5 * history["total"][0]


def test_conv_models_save_and_load_without_pickle(tmp_path):
    for name, cls in FLAVORS.items():
        model = cls([2 * 6 * 5, 4], image_shape=(2, 6, 5), channels=(3, 4), seed=1)
        x = np.random.default_rng(0).random((4, 60)).astype(np.float32)
        path = model.save(tmp_path / f"{name}.npz")
        config, _ = files.read_model(path)
        assert config["format_version"] == 3
        assert config["conv"] == {"image_shape": [2, 6, 5], "channels": [3, 4], "kernel_size": 3}
        loaded = cls.load(path)
        assert loaded.image_shape == (2, 6, 5)
        np.testing.assert_array_equal(loaded.transform(x), model.transform(x))
        with np.load(path, allow_pickle=False) as archive:  # plain arrays and JSON
            assert "__config__" in archive.files


def test_a_fully_convolutional_model_codes_with_its_last_convolution(tmp_path):
    """sizes [input_dim] with channels: no Dense layer; the code is the last
    convolution's output (with the flavor's latent activation), flattened."""
    x = np.random.default_rng(0).random((4, 2 * 7 * 5)).astype(np.float32)
    for name, cls in FLAVORS.items():
        if name == "variational":
            with pytest.raises(ValueError, match="has no fully convolutional form"):
                cls([70], image_shape=(2, 7, 5), channels=(3, 4), seed=1)
            continue
        model = cls([70], image_shape=(2, 7, 5), channels=(3, 4), seed=1)
        assert model.latent_dim == 4 * 2 * 2  # 7x5 -> 4x3 -> 2x2, 4 channels
        assert not [m for _, m in model.named_modules() if type(m).__name__ == "Dense"]
        last_conv = [m for _, m in model.encoder.named_modules()
                     if type(m).__name__ == "Conv2d"][-1]
        assert last_conv.activation == (model.latent_activation or "identity")
        codes = model.transform(x)
        assert codes.shape == (4, 16) and model.reconstruct(x).shape == (4, 70)
        loaded = cls.load(model.save(tmp_path / f"{name}.npz"))
        assert loaded.sizes == [70] and loaded.latent_dim == 16
        np.testing.assert_array_equal(loaded.transform(x), codes)
    with pytest.raises(ValueError, match=r"or \[input_dim\] with channels"):
        VanillaAutoencoder([70])


def test_a_version_2_conv_file_still_loads(tmp_path, monkeypatch):
    """Format 2 put a ReLU module after each convolution, which shifted the numbers of
    the layers after it; such a file loads into today's layers, same outputs."""
    model = VanillaAutoencoder([60, 4], image_shape=(2, 6, 5), channels=(3, 4), seed=1)
    version_2_names = {"encoder.1": "encoder.1", "encoder.2": "encoder.3",
                       "encoder.4": "encoder.6", "decoder.0": "decoder.0",
                       "decoder.2": "decoder.2", "decoder.3": "decoder.4"}
    old = {}
    for name, value in model.state_dict().items():
        layer, param = name.rsplit(".", 1)
        old[f"{version_2_names[layer]}.{param}"] = value
    assert len(old) == len(model.state_dict()) == 12
    monkeypatch.setattr(files, "FORMAT_VERSION", 2)
    path = files.write_model(tmp_path / "v2.npz", model.config(), old)
    assert files.read_model(path)[0]["format_version"] == 2
    monkeypatch.undo()
    loaded = VanillaAutoencoder.load(path)
    x = np.random.default_rng(0).random((4, 60)).astype(np.float32)
    np.testing.assert_array_equal(loaded.reconstruct(x), model.reconstruct(x))


def test_a_conv_config_is_checked_before_anything_is_built(tmp_path):
    model = VanillaAutoencoder([36, 3], image_shape=(1, 6, 6), channels=(2,), seed=0)
    config, weights = model.config(), model.state_dict()
    for bad, words in (({"image_shape": [1, 6, 6], "channels": [2]}, "'conv' entry is malformed"),
                       ({"image_shape": [1, 6, 6], "channels": [4096, 4096], "kernel_size": 3},
                        "which need at least"),
                       ({"image_shape": [1, 6, 7], "channels": [2], "kernel_size": 3},
                        "holds 42 values per example but sizes\\[0\\] = 36")):
        files.write_model(tmp_path / "bad.npz", dict(config, conv=bad), weights)
        with pytest.raises(ValueError, match=words):
            VanillaAutoencoder.load(tmp_path / "bad.npz")


def test_a_conv_model_takes_images_and_names_a_wrong_shape():
    images, _, _ = datasets.blocks(20, size=8, seed=0)
    model = VanillaAutoencoder([64, 3], image_shape=(1, 8, 8), channels=(2,), seed=0)
    model.fit(images, epochs=1, batch_size=10, progress=False)           # (n, H, W)
    codes = model.transform(images[:, None])                             # (n, 1, H, W)
    np.testing.assert_array_equal(codes, model.transform(images.reshape(20, -1)))
    with pytest.raises(ValueError, match=r"must be 2-D \(examples, 64 features\) or images "
                                         r"\(examples, 1, 8, 8\); got shape \(20, 8, 9\)"):
        model.transform(np.zeros((20, 8, 9), np.float32))


@pytest.mark.parametrize("options,words", [
    (dict(channels=(4,)), "needs image_shape"),
    (dict(image_shape=(1, 4, 4)), "without channels"),
    (dict(channels=(4,), image_shape=(1, 4, 5)), "holds 20 values per example but sizes"),
    (dict(channels=(4,), image_shape=(1, 4)), r"expected \(C, H, W\)"),
    (dict(channels=(0,), image_shape=(1, 4, 4)), "one or more positive integers"),
    (dict(channels=(4,), image_shape=(1, 4, 4), kernel_size=2), "odd positive integer"),
])
def test_bad_conv_options_name_the_option(options, words):
    with pytest.raises(ValueError, match=words):
        VanillaAutoencoder([16, 2], **options)


def test_conv_options_do_not_go_with_your_own_modules():
    from minigrad import nn
    with pytest.raises(ValueError, match="with your own Modules leave them out"):
        VanillaAutoencoder(encoder=nn.Dense(4, 2), decoder=nn.Dense(2, 4), input_dim=4,
                           channels=(2,))


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    return write_fashion_like(tmp_path_factory.mktemp("fashion"), 200, 40)


@pytest.mark.parametrize("command,extra", [
    ("retrieve", []), ("features", ["--labels", "20,200"]), ("denoise", []),
    ("manifold", ["--n", "200", "--n-test", "50", "--image-size", "13", "--grid", "3"]),
])
def test_arch_conv_on_the_command_line(tmp_path, fashion_dir, command, extra):
    out = tmp_path / command
    data = [] if command == "manifold" else ["--data-dir", str(fashion_dir)]
    latent = ["--latent", "2"] if command == "manifold" else ["--latent", "8"]
    assert cli.main([command, "--arch", "conv", "--channels", "4,8", "--kernel-size", "5",
                     "--epochs", "1", "--no-progress", "--out", str(out)]
                    + data + latent + extra) == 0
    saved = sorted(out.glob("*.npz"))
    assert saved
    for path in saved:
        config, weights = files.read_model(path)
        assert config["conv"]["kernel_size"] == 5
        kernels = [w.shape for w in weights.values() if w.ndim == 4]
        assert len(kernels) == 4 and all(shape[2:] == (5, 5) for shape in kernels)
        # each command's default --hidden for conv: a Dense 512 layer for retrieve and
        # features, none for denoise and manifold
        hidden = {"retrieve": [512], "features": [512]}.get(command, [])
        assert config["conv"]["channels"] == [4, 8]
        assert config["sizes"][1:] == hidden + [2 if command == "manifold" else 8]
    assert json.loads((out / "config.json").read_text())["options"]["arch"] == "conv"


def test_latent_none_on_the_command_line_is_fully_convolutional(tmp_path, fashion_dir):
    out = tmp_path / "denoise"
    assert cli.main(["denoise", "--arch", "conv", "--channels", "4,8", "--latent", "none",
                     "--hidden", "none", "--epochs", "1", "--no-progress", "--out", str(out),
                     "--data-dir", str(fashion_dir)]) == 0
    for path in sorted(out.glob("*.npz")):
        config, _ = files.read_model(path)
        assert config["sizes"] == [784] and config["conv"]["channels"] == [4, 8]
        assert config["conv"]["kernel_size"] == 3  # the default
    for bad, words in ((["--arch", "mlp"], "needs --arch conv and --hidden none, got --arch mlp"),
                       (["--arch", "conv", "--hidden", "16"], "got --arch conv and --hidden 16")):
        assert words in usage_error(["denoise", "--latent", "none", "--epochs", "1",
                                     "--no-progress", "--out", str(tmp_path / "x"),
                                     "--data-dir", str(fashion_dir)] + bad)


def test_bad_kernel_size_and_conv_options_for_a_dense_model_are_usage_errors(tmp_path,
                                                                             fashion_dir):
    common = ["--epochs", "1", "--no-progress", "--out", str(tmp_path / "x"),
              "--data-dir", str(fashion_dir)]
    for argv, words in (
            (["denoise", "--arch", "conv", "--kernel-size", "4"],
             "argument --kernel-size: expected an odd positive integer"),
            (["denoise", "--arch", "conv", "--kernel-size", "0"],
             "argument --kernel-size: expected a positive integer, got 0"),
            # the dense model has no convolutions: the options are not silently dropped
            (["features", "--arch", "mlp", "--kernel-size", "5"],
             "--kernel-size 5 shape the convolutions of --arch conv; this model is --arch mlp"),
            (["denoise", "--arch", "mlp", "--channels", "8,16"],
             "--channels 8,16 shape the convolutions of --arch conv")):
        assert words in usage_error(argv + common)
