"""Defects an adversarial pass found (issue 16), each tested as a class: grad mode
per thread, an optimizer over another model, an overflow in the last update."""
import threading

import numpy as np
import pytest

import minigrad as mg
from minigrad import losses, optim
from autoencoders import VanillaAutoencoder


def test_no_grad_in_one_thread_leaves_the_others_recording():
    entered, release = threading.Event(), threading.Event()
    seen = {}

    def worker():
        with mg.no_grad():
            seen["inside"] = mg.is_grad_enabled()
            entered.set()
            release.wait(10)
        seen["after"] = mg.is_grad_enabled()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert entered.wait(10)
        assert mg.is_grad_enabled()  # this thread still records
        x = mg.Tensor([1.0, 2.0], requires_grad=True)
        assert (x * x).requires_grad
    finally:
        release.set()
        thread.join(10)
    assert seen == {"inside": False, "after": True}


def test_a_new_thread_records_whatever_the_spawning_thread_does():
    seen = []
    with mg.no_grad():
        thread = threading.Thread(target=lambda: seen.append(mg.is_grad_enabled()))
        thread.start()
        thread.join(10)
    assert seen == [True]


def test_many_threads_transforming_at_once_leave_fit_working():
    model = VanillaAutoencoder([16, 4], seed=0)
    X = np.random.default_rng(0).random((64, 16), dtype=np.float32)
    threads = [threading.Thread(target=model.transform, args=(X,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert mg.is_grad_enabled()
    history = model.fit(X, epochs=1, batch_size=32)
    assert np.isfinite(history["total"][0])


def test_fit_refuses_an_optimizer_over_another_models_parameters():
    model, other = VanillaAutoencoder([16, 4], seed=0), VanillaAutoencoder([16, 4], seed=1)
    X = np.random.default_rng(0).random((32, 16), dtype=np.float32)
    with pytest.raises(ValueError, match="4 of the optimizer's 4 parameters .* are not this "
                                         "model's"):
        model.fit(X, epochs=1, optimizer=optim.Adam(other.parameters()))
    # a subset of the model's own parameters is fine: the rest stay frozen
    decoder_only = optim.Adam(model.decoder.parameters(), lr=1e-2)
    frozen = [p.numpy() for p in model.encoder.parameters()]
    model.fit(X, epochs=1, batch_size=16, optimizer=decoder_only)
    for before, p in zip(frozen, model.encoder.parameters()):
        np.testing.assert_array_equal(p.numpy(), before)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_an_overflow_in_the_last_update_is_not_returned_as_a_trained_model():
    """Every loss of the epoch is finite, but the epoch's last update overflows: fit
    raises and the model keeps the weights from before that update."""
    model = VanillaAutoencoder([16, 4], seed=0)
    X = np.random.default_rng(0).random((8, 16), dtype=np.float32)  # one batch
    before = [p.numpy() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="last update of epoch 1 of 1 made .* "
                                                 "non-finite"):
        model.fit(X, epochs=1, batch_size=8, optimizer=optim.SGD(model.parameters(), lr=1e39))
    for p, b in zip(model.parameters(), before):
        assert np.all(np.isfinite(p.numpy()))
        np.testing.assert_array_equal(p.numpy(), b)


@pytest.mark.parametrize("argv", [
    ["retrieve", "--limit", "0"], ["retrieve", "--limit", "-5"], ["denoise", "--limit", "-1"],
    ["manifold", "--epochs", "0"], ["manifold", "--latent", "-2"], ["manifold", "--n", "0"],
    ["manifold", "--batch-size", "0"], ["features", "--max-iter", "0"],
    ["manifold", "--grid", "two"]])
def test_a_count_that_is_not_positive_is_a_usage_error_naming_the_option(argv, capsys):
    from autoencoders import cli
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[1]}: expected a positive integer, got" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("make, error, words", [
    (lambda p: optim.Adam(p, lr=float("inf")), ValueError, "lr must be positive, got inf"),
    (lambda p: optim.Adam(p, lr=float("nan")), ValueError, "lr must be positive, got nan"),
    (lambda p: optim.Adam(p, eps=float("inf")), ValueError, "eps must be >= 0, got inf"),
    (lambda p: optim.AdamW(p, weight_decay=float("inf")), ValueError, "weight_decay"),
    (lambda p: optim.SGD(p, lr="0.1"), TypeError, "lr must be a number, got '0.1'"),
    (lambda p: optim.SGD(p, momentum=True), TypeError, "momentum must be a number, got True"),
    (lambda p: optim.Adam(p, betas=(0.9, "0.999")), TypeError, "betas must be a number"),
    (lambda p: optim.SGD(p, weight_decay=-1.0), ValueError, "weight_decay must be >= 0"),
])
def test_optimizer_hyper_parameters_are_finite_numbers(make, error, words):
    params = [mg.Tensor(np.zeros(3, np.float32), requires_grad=True)]
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        make(params)


def test_a_model_with_tied_parameters_trains_saves_and_loads(tmp_path):
    """One Dense layer used by the encoder and the decoder: listed once, updated once
    per step with the sum of its two gradients, saved and loaded under one name."""
    from minigrad import nn
    from autoencoders import VanillaAutoencoder

    def build():
        rng = np.random.default_rng(0)
        shared = nn.Dense(6, 6, activation="tanh", rng=rng)
        encoder = nn.Sequential([nn.Dense(10, 6, activation="tanh", rng=rng), shared])
        decoder = nn.Sequential([shared, nn.Dense(6, 10, rng=rng)])
        return VanillaAutoencoder(encoder=encoder, decoder=decoder, input_dim=10), shared

    model, shared = build()
    params = model.parameters()
    assert len(params) == 6 and sum(p is shared.weight for p in params) == 1
    X = np.random.default_rng(1).random((32, 10)).astype(np.float32)
    # the shared weight's gradient is the sum over its two uses: finite differences agree
    model64, _ = build()
    for p in model64.parameters():
        p.data = p.data.astype(np.float64)
    model64.dtype = "float64"
    x64 = mg.Tensor(X[:4].astype(np.float64))
    shared64 = next(p for p in model64.parameters() if p.shape == (6, 6))
    # gradcheck perturbs the parameter's own data, which both uses read
    assert mg.gradcheck(lambda weight: model64.loss(x64)[0], [shared64])
    model.fit(X, epochs=2, batch_size=8, progress=False)
    assert np.all(np.isfinite(shared.weight.numpy()))
    path = model.save(tmp_path / "tied.npz")
    fresh, _ = build()
    loaded = VanillaAutoencoder.load(path, encoder=fresh.encoder, decoder=fresh.decoder)
    np.testing.assert_array_equal(loaded.transform(X), model.transform(X))


def _traced_peak(call):
    import tracemalloc
    tracemalloc.start()
    try:
        call()
    except Exception as error:  # the caller checks the error itself
        return error, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return None, 0


def test_a_model_file_whose_config_declares_huge_sizes_is_refused_before_building(tmp_path):
    import json
    from autoencoders import Autoencoder, VanillaAutoencoder
    path = VanillaAutoencoder([6, 3], seed=0).save(tmp_path / "small.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    config = json.loads(str(arrays["__config__"][()]))
    config["sizes"] = [200_000, 100_000, 3]        # 80 GB of float32 weights
    arrays["__config__"] = np.array(json.dumps(config))
    np.savez(tmp_path / "hostile.npz", **arrays)
    error, peak = _traced_peak(lambda: Autoencoder.load(tmp_path / "hostile.npz"))
    assert isinstance(error, ValueError), error
    assert "declares sizes [200000, 100000, 3]" in str(error) and "hostile.npz" in str(error)
    assert peak < 1 << 20


def test_an_array_header_declaring_more_than_the_file_holds_is_refused_unread(tmp_path):
    import io
    import zipfile
    from autoencoders import Autoencoder, VanillaAutoencoder
    path = VanillaAutoencoder([6, 3], seed=0).save(tmp_path / "small.npz")
    # rewrite one member: a header declaring 10^12 float32 values, 16 bytes of data
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1_000_000, 1_000_000)})
    with zipfile.ZipFile(path) as source, \
            zipfile.ZipFile(tmp_path / "hostile.npz", "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.startswith("encoder"):
                data = b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\x00" * 16
            target.writestr(info.filename, data)
    error, peak = _traced_peak(lambda: Autoencoder.load(tmp_path / "hostile.npz"))
    assert isinstance(error, ValueError), error
    assert "declares an array of shape (1000000, 1000000)" in str(error)
    assert peak < 1 << 20


@pytest.mark.parametrize("flavor, hyper, error, words", [
    ("sparse", {"l1": "0.1"}, TypeError, "SparseAutoencoder: l1 must be a number, got '0.1'"),
    ("sparse", {"l1": float("inf")}, ValueError, "l1=inf; expected a number in [0, inf) (finite)"),
    ("sparse", {"kl_weight": float("nan")}, ValueError, "kl_weight=nan"),
    ("sparse", {"sparsity": "kl", "rho": -0.1}, ValueError, "rho=-0.1; expected a number in (0, 1)"),
    ("sparse", {"sparsity": "kl", "rho": True}, TypeError, "rho must be a number, got True"),
    ("denoising", {"noise_level": float("inf")}, ValueError, "noise_level=inf"),
    ("denoising", {"noise": "gaussian", "noise_level": float("inf")}, ValueError,
     "noise_level=inf; expected a number in [0, inf) (finite)"),
    ("denoising", {"noise_level": "0.3"}, TypeError, "noise_level must be a number, got '0.3'"),
    ("denoising", {"clip": "yes"}, TypeError, "clip must be None"),
    ("contractive", {"weight": float("inf")}, ValueError, "weight=inf"),
    ("contractive", {"weight": "1"}, TypeError, "weight must be a number, got '1'"),
    ("variational", {"beta": float("inf")}, ValueError, "beta=inf"),
    ("variational", {"beta": "1"}, TypeError, "beta must be a number, got '1'"),
    ("variational", {"kl_warmup_epochs": 2.5}, TypeError, "kl_warmup_epochs must be an integer"),
    ("variational", {"kl_warmup_epochs": -1}, ValueError, "kl_warmup_epochs=-1; expected an "
                                                         "integer in [0, inf)"),
])
def test_flavor_hyper_parameters_are_finite_numbers_in_range(flavor, hyper, error, words):
    import re
    from autoencoders import FLAVORS
    with pytest.raises(error, match=re.escape(words)):
        FLAVORS[flavor]([4, 2], **hyper)


@pytest.mark.parametrize("call, words", [
    (lambda: losses.binary_cross_entropy_with_logits(np.zeros(3), np.full(3, 5.0)),
     "binary_cross_entropy_with_logits: target must lie in [0, 1], found values in [5, 5]"),
    (lambda: losses.binary_cross_entropy(np.full(3, 0.5), np.array([0.0, np.nan, 1.0])),
     "binary_cross_entropy: target must lie in [0, 1], found values in [0, 1] and 1 NaN"),
    (lambda: losses.binary_cross_entropy(np.full(3, 1.5), np.zeros(3)),
     "binary_cross_entropy: prob must lie in [0, 1], found values in [1.5, 1.5]"),
    (lambda: losses.kl_divergence(np.array([[-0.1, 1.1]]), np.array([[0.5, 0.5]])),
     "kl_divergence: p must lie in [0, inf), found values in [-0.1, 1.1]"),
    (lambda: losses.bernoulli_kl(0.05, np.array([0.2, 1.5])),
     "bernoulli_kl: rho_hat must lie in [0, 1], found values in [0.2, 1.5]"),
])
def test_losses_refuse_values_outside_their_domain(call, words):
    import re
    with pytest.raises(ValueError, match=re.escape(words)):
        call()


def test_two_threads_fit_on_two_backends_at_once_and_leave_the_global_one():
    """fit(backend=...) and the estimator's backend= switch this thread only."""
    from autoencoders.estimator import AutoencoderTransformer
    X = np.random.default_rng(0).random((64, 6)).astype(np.float32)
    before = mg.get_backend()
    started, seen, errors = threading.Barrier(2), {}, []

    def record(name):
        def callback(model, epoch, logs):  # what this thread trains on, epoch by epoch
            seen.setdefault(name, set()).add((mg.get_backend().name,
                                              model.parameters()[0].device.name))
        return callback

    def fit(name):
        try:
            started.wait(10)
            model = VanillaAutoencoder([6, 4, 2], seed=0)
            model.fit(X, epochs=4, batch_size=16, backend=name, progress=False,
                      callbacks=[record(name)])
            AutoencoderTransformer(latent=2, hidden=(4,), epochs=2, backend=name).fit(X)
        except Exception as error:  # reported below
            errors.append(error)
    threads = [threading.Thread(target=fit, args=(name,)) for name in ("numpy", "numba")]
    for thread in threads:
        thread.start()
    with mg.use_backend("numpy"):
        assert mg.get_backend().name == "numpy" and mg.Tensor([1.0]).device.name == "numpy"
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert seen == {"numpy": {("numpy", "numpy")}, "numba": {("numba", "numba")}}
    assert mg.get_backend() is before  # the process-wide choice was never touched
