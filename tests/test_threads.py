"""minigrad.threads: split_work (the BLAS on one thread, the convolutions' blocks of
images on minigrad's threads) computes what one thread computes, to the bit; the
BLAS thread count is set and restored; helpers run with the caller's FTZ flags;
errors in a helper reach the caller; fit trains convolutional models inside it."""
import threading

import numpy as np
import pytest

import minigrad as mg
from minigrad import threads
from helpers import HAS_NUMBA


def _blas_counts():
    return [get() for get, _ in threads._openblas_thread_setters()]


def test_split_work_runs_the_blas_on_one_thread_and_restores_it():
    before = _blas_counts()
    if not before:
        pytest.skip("no OpenBLAS loaded in this process (another BLAS is left as it is)")
    assert not threads.splitting() and threads.workers() == 1
    with threads.split_work(2):
        assert _blas_counts() == [1] * len(before)
        assert threads.splitting() and threads.workers() == 2
        with threads.split_work(3):  # nested: the outermost holds
            assert threads.workers() == 2
        assert threads.splitting()
    assert _blas_counts() == before
    assert not threads.splitting() and threads.workers() == 1


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_positive_integer(workers):
    with pytest.raises(ValueError, match=rf"split_work: workers={workers!r}; expected an "
                                         r"integer >= 1"):
        with threads.split_work(workers):
            pass


def test_each_block_returns_in_block_order_and_uses_the_helpers():
    names = {}

    def block(k):
        names[k] = threading.current_thread().name
        return k * k

    assert threads.each_block(block, 5) == [0, 1, 4, 9, 16]
    assert set(names.values()) == {threading.current_thread().name}  # outside: one thread
    names.clear()
    with threads.split_work(2):
        assert threads.each_block(block, 5) == [0, 1, 4, 9, 16]
    assert {names[k] for k in (0, 1)} == {threading.current_thread().name}
    assert all(names[k].startswith("minigrad-blocks") for k in (2, 3, 4))


@pytest.mark.parametrize("failing, others", [(0, [2, 3, 4]), (4, [0, 1, 2, 3])])
def test_an_error_in_any_block_reaches_the_caller_after_the_others_finish(failing, others):
    """Blocks 0-1 on the caller, 2-4 on the helper: a failing block stops its own
    thread's run (as one thread would stop), and the other thread's run finishes."""
    done = []

    def block(k):
        if k == failing:
            raise KeyError(f"block {k}")
        done.append(k)
        return k

    with threads.split_work(2), pytest.raises(KeyError, match=f"block {failing}"):
        threads.each_block(block, 5)
    assert sorted(done) == others


@pytest.mark.skipif(not mg.denormals.supported(), reason="FTZ/DAZ exist on x86-64 only")
def test_helpers_run_with_the_callers_flush_to_zero_flags():
    with threads.split_work(2):
        with mg.flush_denormals():
            inside = threads.each_block(lambda k: mg.denormals.thread_flags(), 2)
        outside = threads.each_block(lambda k: mg.denormals.thread_flags(), 2)
    assert inside == [(True, True)] * 2
    assert outside == [(False, False)] * 2


def _conv_outputs(fn, arrays, dtype):
    inputs = [mg.Tensor(a, requires_grad=True, dtype=dtype) for a in arrays]
    kwargs = dict(output_padding=1) if fn is mg.conv_transpose2d else {}
    y = fn(*inputs, stride=2, padding=1, activation="relu", **kwargs)
    (y * y).sum().backward()
    return [y.numpy()] + [t.grad for t in inputs]


@pytest.mark.skipif(not HAS_NUMBA, reason="the Numba kernels need numba")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fn", [mg.conv2d, mg.conv_transpose2d],
                         ids=["conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("keep_bytes", [0, 1 << 30])
def test_split_blocks_compute_what_one_thread_computes(monkeypatch, fn, dtype, keep_bytes):
    """Seven blocks of images or more (rounded up to a multiple of the cores), on one
    thread and on two, the BLAS on one thread in both runs: output and every gradient
    equal to the bit."""
    monkeypatch.setattr(mg.conv, "KEEP_ROWS_BYTES", keep_bytes)
    rng = np.random.default_rng(3)
    weight = (4, 3, 3, 3)  # conv2d: 3 -> 4 channels; conv_transpose2d: 4 -> 3
    arrays = [rng.standard_normal((13, 4 if fn is mg.conv_transpose2d else 3, 9, 8)),
              rng.standard_normal(weight), rng.standard_normal(weight[1]
                                                            if fn is mg.conv_transpose2d
                                                            else weight[0])]
    itemsize = np.dtype(dtype).itemsize
    per_image = 27 * (5 * 4 if fn is mg.conv2d else 9 * 8) * itemsize  # bytes of rows
    monkeypatch.setattr(mg.conv, "BLOCK_BYTES", 2 * per_image)
    with mg.use_backend("numba"):
        with threads.split_work(1):
            one = _conv_outputs(fn, arrays, dtype)
        with threads.split_work(2):
            assert len(mg.conv._blocks(np, 13, per_image)) == -(-7 // threads.cores()) \
                * threads.cores()
            two = _conv_outputs(fn, arrays, dtype)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_blocks_are_even_and_a_multiple_of_the_cores(monkeypatch):
    monkeypatch.setattr(threads, "_cores", 2)
    blocks = mg.conv._blocks(np, 128, mg.conv.BLOCK_BYTES // 37)
    with threads.split_work(2):
        assert mg.conv._blocks(np, 128, mg.conv.BLOCK_BYTES // 37) == blocks
    sizes = [stop - start for start, stop in blocks]
    assert len(sizes) == 4 and sum(sizes) == 128 and max(sizes) - min(sizes) <= 1
    assert len(mg.conv._blocks(np, 128, mg.conv.BLOCK_BYTES // 20)) == 8  # 7 rounded up
    assert blocks[0][0] == 0 and all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert threads.even_bounds(7, 3) == [0, 2, 4, 7] and threads.even_bounds(0, 1) == [0, 0]
    assert mg.conv._blocks(np, 1, 10 ** 9) == [(0, 1)]
    assert mg.conv._blocks(np, 0, 100) == [(0, 0)]


@pytest.mark.parametrize("batch, splits", [(8, True), (4, False)])
def test_fit_splits_a_convolutional_model_from_min_batch_on(monkeypatch, batch, splits):
    from autoencoders import VanillaAutoencoder
    monkeypatch.setattr(threads, "MIN_BATCH", 8)
    seen = []
    real = threads.each_block

    def spy(fn, count):
        seen.append(threads.splitting())
        return real(fn, count)

    monkeypatch.setattr(threads, "each_block", spy)
    images = np.random.default_rng(0).random((16, 8, 8)).astype(np.float32)
    with mg.use_backend("numba" if HAS_NUMBA else "numpy"):
        model = VanillaAutoencoder([64, 4], image_shape=(1, 8, 8), channels=(4,), seed=0)
        model.fit(images, epochs=1, batch_size=batch, progress=False)
    assert seen and set(seen) == {splits}
    assert not threads.splitting()


@pytest.mark.skipif(not HAS_NUMBA, reason="the fused dense layer needs numba")
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("rows", [7, 1])
def test_a_dense_layer_splits_its_rows_and_computes_the_same(monkeypatch, activation, rows):
    """Inside split_work(2) a dense layer's rows go to two threads (one row: not
    split); output and gradients equal the one-thread ones (float64; gW and gb are
    sums of the two shares, so to rounding)."""
    calls = []
    real = threads.each_block
    monkeypatch.setattr(threads, "each_block", lambda fn, n: calls.append(n) or real(fn, n))
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal((rows, 6)), rng.standard_normal((6, 4)),
              rng.standard_normal(4)]

    def run():
        x, w, b = (mg.Tensor(a, requires_grad=True, dtype="float64") for a in arrays)
        layer = mg.nn.Dense(6, 4, activation=activation, dtype="float64")
        layer.weight, layer.bias = mg.nn.Parameter(w.numpy()), mg.nn.Parameter(b.numpy())
        y = layer(x)
        (y * y).sum().backward()
        return [y.numpy(), x.grad, layer.weight.grad, layer.bias.grad]

    with mg.use_backend("numba"):  # the fused DenseFunction (NumPy: primitives)
        one = run()
        assert calls == []
        with threads.split_work(2):
            two = run()
    assert calls == ([2, 2] if rows > 1 else [])
    for a, b in zip(one, two):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)

