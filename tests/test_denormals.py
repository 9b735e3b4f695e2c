"""Subnormal numbers stay out of training (minigrad.denormals): the flags are set
inside ``flush_denormals`` on this thread and the BLAS worker threads and restored
after; every fused kernel flushes what it writes, as its NumPy reference does; and
training on a batch that saturates the output leaves no subnormal gradient or
optimizer state, on every backend.  No timings here (see benchmarks/main_job.py)."""
import threading

import numpy as np
import pytest

import minigrad as mg
from minigrad import activations, denormals, kernels, optim
from autoencoders import VanillaAutoencoder, VariationalAutoencoder

from helpers import CPU_DEVICES, GPU_DEVICES, host

TINY32 = np.finfo(np.float32).tiny
act = activations.activation
X86 = pytest.mark.skipif(not denormals.supported(),
                         reason="flush-to-zero flags exist on x86-64 only")


def subnormal(a):
    a = host(a)
    return int(np.count_nonzero((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)))


def blas_probe():
    """Entries of a threaded matrix product of subnormal inputs that came out nonzero
    (0 when every thread that computed it reads subnormals as 0)."""
    a = np.full((512, 512), 1e-40, np.float32)
    return int(np.count_nonzero(a @ np.ones((512, 512), np.float32)))


# ----------------------------------------------------------------------------
# the flags
# ----------------------------------------------------------------------------

@X86
def test_flags_are_set_inside_and_restored_after_even_on_error():
    assert denormals.thread_flags() == (False, False)
    with mg.flush_denormals():
        assert denormals.thread_flags() == (True, True)
        with mg.flush_denormals():                 # nested: still set
            assert denormals.thread_flags() == (True, True)
        assert denormals.thread_flags() == (True, True)
    assert denormals.thread_flags() == (False, False)
    with pytest.raises(KeyError):
        with mg.flush_denormals():
            raise KeyError("boom")
    assert denormals.thread_flags() == (False, False)
    assert np.float32(1e-39) * np.float32(0.5) != 0   # the user's arithmetic: as before


@X86
def test_blas_worker_threads_flush_inside_and_compute_as_before_after():
    if not denormals.blas_libraries():
        pytest.skip("no OpenBLAS with blas_thread_shutdown_ in this process: only the "
                    "calling thread's flags apply")
    assert blas_probe() == 512 * 512          # subnormal products count, everywhere
    with mg.flush_denormals():
        assert blas_probe() == 0              # the workers' share too, not just ours
    assert blas_probe() == 512 * 512


@X86
def test_flags_belong_to_the_thread_that_enters():
    seen = {}
    ready, release = threading.Event(), threading.Event()

    def other():
        ready.set()
        release.wait(10)
        seen["flags"] = denormals.thread_flags()

    thread = threading.Thread(target=other)
    thread.start()
    ready.wait(10)
    with mg.flush_denormals():
        release.set()
        thread.join(10)
    assert seen["flags"] == (False, False)


def test_flush_subnormals_helper_keeps_nan_inf_and_normals():
    a = np.array([1e-40, -1e-39, TINY32, -TINY32, 0.0, np.nan, np.inf, 1.0], np.float32)
    out = denormals.flush_subnormals(a.copy())
    np.testing.assert_array_equal(out[:5], [0, 0, TINY32, -TINY32, 0])
    assert np.isnan(out[5]) and out[6] == np.inf and out[7] == 1.0


# ----------------------------------------------------------------------------
# the kernels flush what they write, flags or not, as their NumPy reference does
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", CPU_DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_cpu_kernel_writes_no_subnormals(device, dtype):
    table = device.kernels  # the NumPy references on "numpy", the Numba kernels on "numba"
    tiny = np.finfo(dtype).tiny
    rng = np.random.default_rng(0)
    sub = np.array(tiny / 4, dtype)
    ref = kernels.Kernels("numpy")
    # dense forward: act(z + b) lands in the subnormal range for half the entries
    z = np.where(rng.random((9, 7)) < 0.5, sub, 1.0).astype(dtype)
    for activation in ("identity", "relu", "leaky_relu"):
        y = table.dense_forward(z.copy(), np.zeros(7, dtype), act(activation), 0.5)
        assert subnormal(y) == 0
        np.testing.assert_array_equal(y, ref.dense_forward(z.copy(), np.zeros(7, dtype),
                                                           act(activation), 0.5))
    # dense backward: the gradient times act'(y) = 1 is subnormal
    g = np.where(rng.random((9, 7)) < 0.5, sub, -2.0).astype(dtype)
    y = np.ones((9, 7), dtype)
    gz, gb = table.dense_backward(g, y, act("relu"), 0.01)
    assert subnormal(gz) == 0 and subnormal(gb) == 0
    np.testing.assert_array_equal(gz, ref.dense_backward(g, y, act("relu"), 0.01)[0])
    assert subnormal(table.dense_backward(g, y, act("identity"), 0.01)[0]) == 0
    # bias gradient: normal terms whose sum is subnormal
    g2 = np.array([[tiny * 1.5], [-tiny * 1.25]], dtype)
    assert subnormal(table.dense_backward(g2, np.ones_like(g2), act("identity"), 0.01)[1]) == 0
    # the losses: a saturated logit (sigmoid(-100) = 3.7e-44) against target 0
    logits = np.full((4, 5), -100.0 if dtype == np.float32 else -745.0, dtype)
    target = np.zeros_like(logits)
    for total, grad in (table.bce_with_logits(logits, target, 0.5),
                        table.mse(np.full((4, 5), sub, dtype), target, 0.5)):
        assert subnormal(grad) == 0
        np.testing.assert_array_equal(grad, 0)
    assert table.bce_with_logits(logits, target, 0.5, want_grad=False)[1] is None
    assert table.mse(np.full((4, 5), sub, dtype), target, 0.5, want_grad=False)[1] is None
    # the optimizers: moments and parameters that would decay into the range
    for update in ("adam_update", "sgd_update"):
        p = np.full(33, tiny * 2, dtype)
        grad = np.full(33, tiny * 2, dtype)
        if update == "adam_update":
            m, v = np.zeros_like(p), np.zeros_like(p)
            table.adam_update(p, grad, m, v, 1.0, 0.9, 0.999, 1e-8, 0.0, 1, False)
            assert subnormal(m) == 0 and subnormal(v) == 0
        else:
            vel = np.zeros_like(p)
            table.sgd_update(p, grad, vel, 0.75, 0.5, 0.0, False)
            assert subnormal(vel) == 0
        assert subnormal(p) == 0


def test_cuda_kernels_are_compiled_to_flush():
    from minigrad.kernels import _cuda
    assert "--ftz=true" in _cuda.OPTIONS
    assert "mg_flush" in _cuda.common_source()
    for source in ("dense.cu", "losses.cu", "optim.cu"):  # and every kernel file uses it
        assert "mg_flush(" in _cuda.read(source), source


@pytest.mark.parametrize("device", GPU_DEVICES, indirect=True)
def test_the_gpu_kernels_write_no_subnormals(device):
    """On the GPU backend (real, or the host emulation of the CUDA kernels)."""
    table, xp = device.kernels, device.xp
    sub = np.float32(TINY32 / 4)
    z = xp.asarray(np.full((8, 6), sub, np.float32))
    y = table.dense_forward(z, xp.zeros(6, dtype=np.float32), act("identity"), 0.01)
    assert subnormal(y) == 0
    gz, gb = table.dense_backward(xp.asarray(np.full((8, 6), sub, np.float32)),
                                  xp.ones((8, 6), dtype=np.float32), act("relu"), 0.01)
    assert subnormal(gz) == 0 and subnormal(gb) == 0
    logits = xp.asarray(np.full((4, 5), -100.0, np.float32))
    target = xp.zeros((4, 5), dtype=np.float32)
    assert subnormal(table.bce_with_logits(logits, target, 0.5)[1]) == 0
    assert subnormal(table.mse(xp.asarray(np.full((4, 5), sub, np.float32)), target, 0.5)[1]) == 0


# ----------------------------------------------------------------------------
# training on a batch that saturates the output: no subnormal anywhere
# ----------------------------------------------------------------------------

def saturated(flavor, seed=0):
    """A model whose decoder's output bias puts every logit near -100: sigmoid(z) - x
    for the black background is then about 3.7e-44 / batch, a float32 subnormal."""
    rng = np.random.default_rng(seed)
    X = np.zeros((32, 16), np.float32)
    X[:, :4] = rng.random((32, 4)) > 0.5               # a few bright pixels, the rest black
    model = flavor([16, 8, 2], seed=seed)
    last = model.decoder.layers[-1]
    last.bias.data[...] = last.bias.xp.asarray(np.full(16, -100.0, np.float32))
    return model, X


def state_counts(model):
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    opt = model.optimizer_
    return (sum(subnormal(g) for g in grads), sum(subnormal(a) for a in opt.m + opt.v),
            sum(subnormal(p.data) for p in model.parameters()))


@pytest.mark.parametrize("flavor", [VanillaAutoencoder, VariationalAutoencoder])
def test_training_on_a_saturating_batch_leaves_no_subnormals(device, flavor):
    model, X = saturated(flavor)
    model.fit(X, epochs=3, batch_size=16, lr=1e-3, progress=False)
    assert len(model.optimizer_.m) == len(model.parameters())
    assert state_counts(model) == (0, 0, 0)


def test_without_flushing_the_same_batch_does_make_subnormals():
    """The control for the test above: the NumPy reference built from primitives,
    no flags set, gives subnormal gradients on that batch -- what is being flushed."""
    with mg.set_backend("numpy"):
        model, X = saturated(VanillaAutoencoder)
        total, _ = model.loss(X)
        total.backward()
        assert sum(subnormal(p.grad) for p in model.parameters()) > 0


def test_a_custom_loop_inside_flush_denormals_makes_none_on_the_reference_backend():
    if not denormals.supported():
        pytest.skip("flush-to-zero flags exist on x86-64 only; the primitives of the NumPy "
                    "reference backend rely on them")
    with mg.set_backend("numpy"):
        model, X = saturated(VanillaAutoencoder)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        with mg.flush_denormals():
            for _ in range(3):
                opt.zero_grad()
                total, _ = model.loss(X)
                total.backward()
                opt.step()
        assert sum(subnormal(p.grad) for p in model.parameters()) == 0
        assert sum(subnormal(a) for a in opt.m + opt.v) == 0


# ----------------------------------------------------------------------------
# the Numba kernels compute with FTZ/DAZ on, and leave every thread as it was
# ----------------------------------------------------------------------------

@X86
@pytest.mark.parametrize("parallel", [False, True])
def test_numba_kernels_restore_the_flags_of_every_thread_they_run_on(parallel, monkeypatch):
    pytest.importorskip("numba", reason="the Numba kernels need numba")
    import numba
    from minigrad.kernels import _jit, _math
    monkeypatch.setattr(_jit, "PARALLEL_MIN_SIZE", 1 if parallel else 1 << 62)
    table = kernels.Kernels("numba")
    _jit._numba()

    @numba.njit(parallel=True)
    def flags_of_worker_threads(n):
        out = np.empty(n, np.uint32)
        for i in numba.prange(n):
            out[i] = _math.read_mxcsr()
        return out

    before = set(flags_of_worker_threads(64) & denormals.FTZ)
    x = np.full((64, 33), -100.0, np.float32)
    table.bce_with_logits(x, np.zeros_like(x), 1 / 64)
    table.dense_backward(np.full((64, 33), 1e-39, np.float32), np.ones((64, 33), np.float32),
                         act("relu"), 0.01)
    p = np.ones(4096, np.float32)
    table.adam_update(p, p.copy(), np.zeros_like(p), np.zeros_like(p), 1e-3, 0.9, 0.999,
                         1e-8, 0.0, 1, False)
    assert denormals.thread_flags() == (False, False)          # the calling thread
    assert set(flags_of_worker_threads(64) & denormals.FTZ) == before == {0}


@X86
def test_a_numba_kernel_computes_with_flush_to_zero_even_outside_the_block():
    """p - t is subnormal (tiny / 2) although p, t and the scaled result are normal:
    with FTZ/DAZ on inside the kernel the difference is 0, and so is the gradient;
    the NumPy reference, computed without the flags, keeps it (2 tiny)."""
    pytest.importorskip("numba", reason="the Numba kernels need numba")
    p = np.full((2, 3), 2 * TINY32, np.float32)
    t = np.full((2, 3), 1.5 * TINY32, np.float32)
    assert denormals.thread_flags() == (False, False)
    np.testing.assert_array_equal(kernels.Kernels("numpy").mse(p, t, 2.0)[1], 2 * TINY32)
    np.testing.assert_array_equal(kernels.Kernels("numba").mse(p, t, 2.0)[1], 0)
    assert denormals.thread_flags() == (False, False)
