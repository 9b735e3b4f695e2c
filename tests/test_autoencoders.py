"""The Autoencoder API shared by every flavor: shapes, losses and their terms,
training (history, seeding, NaN stop, progress), input checks, save and load."""
import json
import os

import numpy as np
import pytest

import minigrad as mg
from minigrad import Tensor, nn, optim
from autoencoders import (Autoencoder, ContractiveAutoencoder, DenoisingAutoencoder,
                          SparseAutoencoder, VanillaAutoencoder, VariationalAutoencoder)
from autoencoders import base, training


@pytest.fixture(autouse=True)
def numpy_backend():
    with mg.set_backend("numpy"):
        yield


def bars(n, seed, size=8, p=0.15):
    rng = np.random.default_rng(seed)
    rows, cols = rng.random((n, size)) < p, rng.random((n, size)) < p
    return (rows[:, :, None] | cols[:, None, :]).reshape(n, -1).astype(np.float32)


X = bars(64, seed=0)
FLAVORS = {
    "vanilla": (VanillaAutoencoder, {}),
    "sparse": (SparseAutoencoder, {"l1": 0.02}),
    "sparse-kl": (SparseAutoencoder, {"sparsity": "kl", "rho": 0.1, "kl_weight": 0.5}),
    "denoising": (DenoisingAutoencoder, {"noise": "salt_and_pepper", "noise_level": 0.2}),
    "contractive": (ContractiveAutoencoder, {"weight": 0.3}),
    "variational": (VariationalAutoencoder, {"beta": 0.5}),
}
TERMS = {"vanilla": {"reconstruction"}, "sparse": {"reconstruction", "l1"},
         "sparse-kl": {"reconstruction", "kl"}, "denoising": {"reconstruction"},
         "contractive": {"reconstruction", "contractive"},
         "variational": {"reconstruction", "kl"}}


def build(key, sizes=(64, 16, 4), **extra):
    cls, options = FLAVORS[key]
    return cls(list(sizes), **{"seed": 0, **options, **extra})


def quiet_fit(model, data=X, **kw):
    return model.fit(data, **{"epochs": 2, "batch_size": 16, "progress": False, **kw})


# ----------------------------------------------------------------------------
# the model and its loss
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("key", FLAVORS)
def test_shapes_and_the_numpy_round_trip(key):
    model = build(key)
    assert isinstance(model, Autoencoder) and isinstance(model, nn.Module)
    assert isinstance(model.encoder, nn.Module) and isinstance(model.decoder, nn.Module)
    assert (model.input_dim, model.latent_dim) == (64, 4)
    x = Tensor(X[:5])
    h = model.encode(x)
    assert h.shape == (5, 4)
    out = model.reconstruct(x)
    assert out.shape == (5, 64) and out.numpy().min() >= 0 and out.numpy().max() <= 1
    np.testing.assert_array_equal(out.numpy(), model.decode(h).numpy())
    # transform / inverse_transform: batched, no graph, same numbers
    codes = model.transform(X, batch_size=7)
    assert isinstance(codes, np.ndarray) and codes.shape == (64, 4) and codes.dtype == np.float32
    np.testing.assert_allclose(codes[:5], h.numpy(), rtol=1e-5, atol=1e-6)
    recon = model.inverse_transform(codes, batch_size=10)
    np.testing.assert_allclose(recon[:5], out.numpy(), rtol=1e-5, atol=1e-6)
    assert len(model.parameters()) == len(model.encoder.parameters()) + len(
        model.decoder.parameters())


@pytest.mark.parametrize("key", FLAVORS)
def test_loss_terms_and_how_they_add_up(key):
    model = build(key)
    total, terms = model.loss(X[:16], rng=np.random.default_rng(0))
    assert isinstance(total, Tensor) and total.shape == () and total.requires_grad
    assert set(terms) == TERMS[key] | {"total"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in terms.values())
    assert terms["total"] == pytest.approx(total.item())
    weight = {"sparse": ("l1", "l1"), "sparse-kl": ("kl_weight", "kl"),
              "contractive": ("weight", "contractive"), "variational": ("beta", "kl")}
    expected = terms["reconstruction"]
    if key in weight:
        attr, term = weight[key]
        expected += getattr(model, attr) * terms[term]
    assert terms["total"] == pytest.approx(expected, rel=1e-5)
    total.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_reconstruction_is_summed_over_pixels_and_averaged_over_the_batch():
    model = build("vanilla")
    x = X[:8]
    probs = model.reconstruct(x).numpy().astype(np.float64)
    bce = -(x * np.log(probs) + (1 - x) * np.log(1 - probs)).sum(axis=1).mean()
    assert model.loss(x)[1]["reconstruction"] == pytest.approx(bce, rel=1e-4)
    mse_model = VanillaAutoencoder([64, 16, 4], loss="mse", seed=0)
    sq = ((mse_model.reconstruct(x).numpy() - x) ** 2).sum(axis=1).mean()
    assert mse_model.loss(x)[1]["reconstruction"] == pytest.approx(sq, rel=1e-5)


@pytest.mark.parametrize("key", ["denoising", "variational"])
def test_noise_comes_from_the_generator(key):
    model = build(key)
    a = model.loss(X[:16], rng=np.random.default_rng(3))[1]["total"]
    b = model.loss(X[:16], rng=np.random.default_rng(3))[1]["total"]
    c = model.loss(X[:16], rng=np.random.default_rng(4))[1]["total"]
    assert a == b and a != c
    # corruption and sampling are for training only: reconstruct is deterministic
    np.testing.assert_array_equal(model.reconstruct(X[:4]).numpy(),
                                  model.reconstruct(X[:4]).numpy())


def test_corruptions():
    x = np.full((200, 64), 0.5, dtype=np.float32)
    rng = np.random.default_rng(0)
    masked = DenoisingAutoencoder([64, 8], noise="masking", noise_level=0.3).corrupt(x, rng)
    assert abs((masked.numpy() == 0).mean() - 0.3) < 0.02
    assert set(np.unique(masked.numpy())) == {0.0, 0.5}
    sp = DenoisingAutoencoder([64, 8], noise="salt_and_pepper", noise_level=0.2).corrupt(x, rng)
    values = sp.numpy()
    assert abs((values != 0.5).mean() - 0.2) < 0.02 and set(np.unique(values)) == {0, 0.5, 1}
    assert abs((values == 1).mean() - 0.1) < 0.02
    gauss = DenoisingAutoencoder([64, 8], noise="gaussian", noise_level=2.0).corrupt(x, rng)
    assert gauss.numpy().min() == 0.0 and gauss.numpy().max() == 1.0   # clipped (bce)
    mse = DenoisingAutoencoder([64, 8], noise="gaussian", noise_level=2.0, loss="mse")
    assert mse.corrupt(x, rng).numpy().max() > 1.0                       # not clipped (mse)


def test_vae_encodes_to_mu_and_decodes_grids():
    vae = build("variational")
    mu, log_var = vae.encoder(Tensor(X[:3]))
    np.testing.assert_array_equal(vae.encode(X[:3]).numpy(), mu.numpy())
    assert log_var.shape == (3, 4)
    grid = vae.latent_grid(5, span=2.0)
    assert grid.shape == (5, 5, 4) and grid[0, 0, 0] == 2.0 and grid[0, 0, 1] == -2.0
    assert np.all(grid[:, :, 2:] == 0)
    images = vae.decode_grid(grid)
    assert images.shape == (5, 5, 64)
    np.testing.assert_allclose(images[1, 2], vae.inverse_transform(grid[1, 2][None])[0],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        vae.decode_grid(np.zeros((3, 2)))


def test_kl_warmup_ramps_beta_linearly_from_zero():
    vae = VariationalAutoencoder([64, 8, 2], beta=2.0, kl_warmup_epochs=2, seed=0)
    seen = []
    quiet_fit(vae, epochs=4, callbacks=[lambda model, epoch, logs: seen.append(
        model.current_beta)])
    assert seen == [0.0, 1.0, 2.0, 2.0]
    assert vae.current_beta == 2.0


# ----------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("key", FLAVORS)
def test_history_has_every_term_per_epoch_for_train_and_validation(key):
    model = build(key)
    history = quiet_fit(model, epochs=3, validation_data=bars(20, seed=9))
    expected = TERMS[key] | {"total"}
    assert set(history) == expected | {"val_" + k for k in expected}
    assert all(len(v) == 3 for v in history.values())
    assert model.history_ is history


@pytest.mark.parametrize("key", ["vanilla", "denoising", "variational"])
def test_the_same_seeds_give_the_same_weights_bit_for_bit(key):
    a, b, c = build(key), build(key), build(key)
    quiet_fit(a, seed=5)
    quiet_fit(b, seed=5)
    quiet_fit(c, seed=6)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        np.testing.assert_array_equal(pa.numpy(), pb.numpy(), err_msg=name)
    assert any(not np.array_equal(pa.numpy(), pc.numpy())
               for pa, pc in zip(a.parameters(), c.parameters()))


def test_optimizers_and_callbacks():
    for optimizer in ("sgd", "adamw", mg.optim.SGD):
        model = build("vanilla")
        if optimizer is mg.optim.SGD:
            optimizer = mg.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        history = quiet_fit(model, optimizer=optimizer, lr=0.05, epochs=3)
        assert history["total"][-1] < history["total"][0]
    with pytest.raises(ValueError, match="optimizer"):
        quiet_fit(build("vanilla"), optimizer="rmsprop")
    stop_after_two = lambda model, epoch, logs: epoch == 1
    assert len(quiet_fit(build("vanilla"), epochs=10, callbacks=[stop_after_two])["total"]) == 2


class Poison(nn.Module):
    """Wraps a decoder; its ``at``-th call returns NaN and, just before, records the
    weights the model had then (those of the last batch with a finite loss)."""

    def __init__(self, inner, at):
        super().__init__()
        self.inner, self.at, self.calls, self.seen = inner, at, 0, None

    def forward(self, h):
        self.calls += 1
        if self.calls == self.at - 1:
            self.seen = [p.numpy() for p in self.model.parameters()]
        out = self.inner(h)
        return out * float("nan") if self.calls == self.at else out


def test_a_nan_loss_stops_training_naming_epoch_and_batch_and_keeps_good_weights():
    rng = np.random.default_rng(0)
    decoder = Poison(nn.Dense(4, 64, rng=rng), at=7)
    model = VanillaAutoencoder(encoder=nn.Dense(64, 4, activation="tanh", rng=rng),
                               decoder=decoder, input_dim=64)
    decoder.calls = 0                                  # forget the construction probe
    object.__setattr__(decoder, "model", model)        # a reference, not a sub-module
    # 64 examples, batches of 16: 4 batches per epoch, so call 7 is epoch 2, batch 3
    with pytest.raises(FloatingPointError, match=r"nan at epoch 2 of 5, batch 3 of 4"):
        quiet_fit(model, epochs=5)
    for p, seen in zip(model.parameters(), decoder.seen):
        assert np.all(np.isfinite(p.numpy()))
        np.testing.assert_array_equal(p.numpy(), seen)
    assert len(model.history_["total"]) == 1           # the one finished epoch


def test_progress_bar_and_its_plain_fallback(capsys, monkeypatch):
    model = build("vanilla")
    model.fit(X, epochs=2, batch_size=16, progress=True)
    err = capsys.readouterr().err
    if training._tqdm is not None:
        assert "epoch 2/2" in err and "loss=" in err
    monkeypatch.setattr(training, "_tqdm", None)
    model.fit(X, epochs=2, batch_size=16, progress=True, validation_data=X[:8])
    err = capsys.readouterr().err
    assert "epoch 1/2: loss" in err and "epoch 2/2: loss" in err and "val" in err
    model.fit(X, epochs=1, progress=False)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------

def test_flavor_registry():
    import autoencoders
    assert dict(autoencoders.FLAVORS) == {
        "vanilla": VanillaAutoencoder, "sparse": SparseAutoencoder,
        "denoising": DenoisingAutoencoder, "contractive": ContractiveAutoencoder,
        "variational": VariationalAutoencoder}


@pytest.mark.parametrize("sizes, match", [
    ([64, 0, 4], r"sizes\[1\] = 0"), ([64, -3], r"sizes\[1\] = -3"),
    ([64, 2.5], r"sizes\[1\] = 2.5"), ([64], "at least 2"), (None, "give sizes"),
])
def test_bad_sizes(sizes, match):
    with pytest.raises(ValueError, match=match):
        VanillaAutoencoder(sizes)


def test_bad_options():
    with pytest.raises(ValueError, match="output='sigmoid'"):
        VanillaAutoencoder([8, 2], output="identity")        # bce needs probabilities
    with pytest.raises(ValueError, match="loss="):
        VanillaAutoencoder([8, 2], loss="huber")
    with pytest.raises(ValueError, match="dtype"):
        VanillaAutoencoder([8, 2], dtype="float16")
    with pytest.raises(ValueError, match="activation"):
        VanillaAutoencoder([8, 2], activation="swish")
    with pytest.raises(ValueError, match="sigmoid"):
        SparseAutoencoder([8, 2], sparsity="kl", latent_activation="relu")
    with pytest.raises(ValueError, match="rho"):
        SparseAutoencoder([8, 2], sparsity="kl", rho=1.5)
    with pytest.raises(ValueError, match="noise"):
        DenoisingAutoencoder([8, 2], noise="speckle")
    with pytest.raises(ValueError, match="noise_level"):
        DenoisingAutoencoder([8, 2], noise="masking", noise_level=1.5)
    with pytest.raises(ValueError, match="weight"):
        ContractiveAutoencoder([8, 2], weight=-1)
    with pytest.raises(ValueError, match="latent_activation"):
        VariationalAutoencoder([8, 4, 2], latent_activation="relu")
    with pytest.raises(ValueError, match="kl_warmup_epochs"):
        VariationalAutoencoder([8, 4, 2], kl_warmup_epochs=-1)
    with pytest.raises(TypeError, match="base class"):
        Autoencoder([8, 2])


@pytest.mark.parametrize("data, match", [
    (np.zeros((10, 63)), "63 features per example but this autoencoder expects 64"),
    (np.zeros(64), "must be 2-D"),
    (np.zeros((10, 8, 8)), "flatten"),
    (np.zeros((0, 64)), "no examples"),
    (np.where(np.eye(10, 64) > 0, np.nan, 0.5), r"10 NaN or infinite values .* row 0, column 0"),
    (np.full((3, 64), np.inf), "NaN or infinite"),
    (np.full((3, 64), 2.0), r"values in \[2, 2\].*loss='bce' needs inputs in \[0, 1\]"),
    (np.full((3, 64), -0.5), r"\[0, 1\]"),
    (np.array([["a"] * 64]), "dtype"),
])
def test_bad_data_is_rejected_with_a_clear_message(data, match):
    model = build("vanilla")
    with pytest.raises(ValueError, match=match):
        quiet_fit(model, data=data)
    with pytest.raises(ValueError, match=match):
        model.loss(data)


def test_other_entry_points_check_their_input():
    model = build("vanilla")
    with pytest.raises(ValueError, match="64"):
        model.transform(np.zeros((3, 10)))
    with pytest.raises(ValueError, match="NaN"):
        model.transform(np.full((3, 64), np.nan))
    with pytest.raises(ValueError, match=r"expected \(n, 64\)"):
        model.encode(Tensor(np.zeros((2, 10), np.float32)))
    with pytest.raises(ValueError, match="5 values per code .* latent_dim = 4"):
        model.inverse_transform(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="validation_data"):
        quiet_fit(model, validation_data=np.zeros((3, 7)))
    for bad in ({"epochs": 0}, {"batch_size": -1}, {"lr": 0.0}):
        with pytest.raises(ValueError):
            quiet_fit(model, **bad)
    # mse takes any finite values
    mse = VanillaAutoencoder([64, 4], loss="mse", output="identity", seed=0)
    quiet_fit(mse, data=np.full((8, 64), 3.0), epochs=1)


def test_your_own_encoder_and_decoder():
    rng = np.random.default_rng(0)
    encoder = nn.Sequential(nn.Dense(64, 16, activation="relu", rng=rng), nn.Dense(16, 3))
    decoder = nn.Sequential(nn.Dense(3, 16, activation="relu", rng=rng), nn.Dense(16, 64))
    model = VanillaAutoencoder(encoder=encoder, decoder=decoder, input_dim=64)
    assert model.latent_dim == 3 and model.encoder is encoder
    assert quiet_fit(model)["total"][-1] < model.loss(X)[1]["total"] + 50
    with pytest.raises(ValueError, match="input_dim"):
        VanillaAutoencoder(encoder=encoder, decoder=decoder)
    with pytest.raises(ValueError, match="decoder maps"):
        VanillaAutoencoder(encoder=encoder, decoder=nn.Dense(3, 10), input_dim=64)
    with pytest.raises(ValueError, match="not both"):
        VanillaAutoencoder([64, 3], encoder=encoder, decoder=decoder)
    with pytest.raises(ValueError, match="latent_dim"):
        VariationalAutoencoder(encoder=encoder, decoder=decoder, input_dim=64)
    vae = VariationalAutoencoder(encoder=nn.Dense(64, 8, activation="relu", rng=rng),
                                 decoder=nn.Dense(2, 64, rng=rng), input_dim=64, latent_dim=2)
    assert vae.encode(X[:3]).shape == (3, 2)


# ----------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("key", FLAVORS)
def test_save_load_round_trip_is_exact(key, tmp_path):
    model = build(key, sizes=(64, 12, 4))
    quiet_fit(model, epochs=1)
    path = model.save(tmp_path / "model.npz")
    assert os.listdir(tmp_path) == ["model.npz"]            # no temporary file left
    for loader in (Autoencoder.load, type(model).load):
        loaded = loader(path)
        assert type(loaded) is type(model) and loaded.sizes == model.sizes
        assert loaded.config()["hyper"] == model.config()["hyper"]
        np.testing.assert_array_equal(loaded.transform(X), model.transform(X))
        np.testing.assert_array_equal(loaded.reconstruct(X).numpy(),
                                      model.reconstruct(X).numpy())
        assert (loaded.loss(X, rng=np.random.default_rng(1))[1]
                == model.loss(X, rng=np.random.default_rng(1))[1])
    other = build(key, sizes=(64, 12, 4), seed=7)
    other.load_weights(path)
    np.testing.assert_array_equal(other.transform(X), model.transform(X))


def test_file_layout_is_npz_plus_json_config_without_pickle(tmp_path):
    model = build("sparse", dtype="float64")
    path = model.save(tmp_path / "sparse")                  # .npz is added
    assert path.endswith("sparse.npz")
    with np.load(path, allow_pickle=False) as data:
        config = json.loads(str(data["__config__"]))
        assert data["encoder.0.weight"].dtype == np.float64
    assert config["flavor"] == "sparse" and config["sizes"] == [64, 16, 4]
    assert config["hyper"] == {"sparsity": "l1", "l1": 0.02, "rho": 0.05, "kl_weight": 0.1}
    assert config["format_version"] == base.FORMAT_VERSION and config["dtype"] == "float64"
    assert Autoencoder.load(path).dtype == "float64"


def test_save_is_atomic(tmp_path, monkeypatch):
    model = build("vanilla")
    path = model.save(tmp_path / "model.npz")
    before = open(path, "rb").read()

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        build("vanilla", seed=3).save(path)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["model.npz"]


def test_loading_bad_files_fails_clearly(tmp_path):
    sparse = build("sparse")
    path = sparse.save(tmp_path / "sparse.npz")
    with pytest.raises(ValueError, match=r"holds a 'sparse' autoencoder .* not a 'vanilla'"):
        VanillaAutoencoder.load(path)
    with pytest.raises(ValueError, match="'sparse' autoencoder; this model is a 'vanilla'"):
        build("vanilla").load_weights(path)
    with pytest.raises(ValueError, match=r"sizes \[64, 16, 4\]; this model has sizes"):
        build("sparse", sizes=(64, 8, 4)).load_weights(path)
    with pytest.raises(FileNotFoundError):
        Autoencoder.load(tmp_path / "missing.npz")

    data = open(path, "rb").read()
    for cut in (len(data) // 2, len(data) - 10, 100):
        truncated = tmp_path / f"truncated{cut}.npz"
        truncated.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            Autoencoder.load(truncated)

    with np.load(path) as f:
        arrays = dict(f)
    arrays["encoder.0.weight"][1, 2] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(ValueError, match=r"'encoder.0.weight' holds 1 NaN"):
        Autoencoder.load(tmp_path / "nan.npz")

    arrays = {k: v for k, v in arrays.items() if k != "decoder.0.bias"}
    np.savez(tmp_path / "missing_weight.npz", **arrays)
    with pytest.raises(ValueError, match="missing \\['decoder.0.bias'\\]"):
        Autoencoder.load(tmp_path / "missing_weight.npz")

    with np.load(path) as f:
        arrays = dict(f)
    arrays["encoder.0.weight"] = arrays["encoder.0.weight"][:, :3]
    np.savez(tmp_path / "shape.npz", **arrays)
    with pytest.raises(ValueError, match="has shape \\(64, 3\\)"):
        Autoencoder.load(tmp_path / "shape.npz")

    np.savez(tmp_path / "plain.npz", w=np.zeros(3))
    with pytest.raises(ValueError, match="without an autoencoder config"):
        Autoencoder.load(tmp_path / "plain.npz")
    np.savez(tmp_path / "pickled.npz", __config__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="truncated or corrupt|pickle"):
        Autoencoder.load(tmp_path / "pickled.npz")


def test_saving_a_model_built_from_your_own_modules(tmp_path):
    def modules(seed):
        rng = np.random.default_rng(seed)
        return nn.Dense(64, 3, activation="sigmoid", rng=rng), nn.Dense(3, 64, rng=rng)
    encoder, decoder = modules(0)
    model = ContractiveAutoencoder(encoder=encoder, decoder=decoder, input_dim=64, weight=0.5)
    path = model.save(tmp_path / "custom.npz")
    with pytest.raises(ValueError, match="pass freshly built ones"):
        Autoencoder.load(path)
    encoder, decoder = modules(1)
    loaded = Autoencoder.load(path, encoder=encoder, decoder=decoder)
    assert loaded.weight == 0.5
    np.testing.assert_array_equal(loaded.transform(X), model.transform(X))


def test_fit_leaves_each_parameter_its_own_array_with_the_final_weights():
    """fit trades each weight array with its last-good copy every step (no copy);
    afterwards every parameter has its original array back, holding the trained
    values, so a reference to p.data taken before fit sees the result."""
    model = build("vanilla")
    arrays = [p.data for p in model.parameters()]
    before = [a.copy() for a in arrays]
    model.fit(X, epochs=1, batch_size=13, progress=False)   # 5 steps: an odd number
    for p, a, b in zip(model.parameters(), arrays, before):
        assert p.data is a
        assert not np.array_equal(a, b)


def test_fit_with_an_optimizer_whose_step_takes_no_previous_keeps_last_good_weights():
    """An Optimizer subclass with a step() of its own: fit copies the last good
    weights itself, and a NaN loss still restores them."""
    class PlainSGD(optim.SGD):
        def step(self):
            super().step()

    rng = np.random.default_rng(0)
    decoder = Poison(nn.Dense(4, 64, rng=rng), at=7)
    model = VanillaAutoencoder(encoder=nn.Dense(64, 4, activation="tanh", rng=rng),
                               decoder=decoder, input_dim=64)
    decoder.calls = 0
    object.__setattr__(decoder, "model", model)
    with pytest.raises(FloatingPointError, match=r"nan at epoch 2 of 5, batch 3 of 4"):
        model.fit(X, epochs=5, batch_size=16, progress=False,
                  optimizer=PlainSGD(model.parameters(), lr=0.1))
    for p, seen in zip(model.parameters(), decoder.seen):
        np.testing.assert_array_equal(p.numpy(), seen)
