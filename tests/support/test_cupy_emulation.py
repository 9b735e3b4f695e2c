"""The host stand-in for CuPy (support/cupy_emulation.py) must be as strict as CuPy where
minigrad could go wrong on a GPU, or the emulated runs would pass code that fails
there.  These tests pin that strictness (most need no kernels and no GPU), and that
the stand-in runs the CUDA kernels of minigrad/kernels/*.cu and is undone after a test."""
import sys

import numpy as np
import pytest

import minigrad as mg
from minigrad import activations, device
from minigrad.kernels import _cuda
from support import cuda_sources as cs
from support import cupy_emulation as ce

REAL = ce._REAL_CUPY


@pytest.fixture
def cp(monkeypatch):
    fake = ce.module(library=None)
    for name in ce._CONVERTERS:
        monkeypatch.setattr(np, name, ce._no_implicit_conversion(name, getattr(np, name)))
    return fake


def test_device_arrays_refuse_host_arrays_and_lists_in_operations(cp):
    d = cp.asarray(np.arange(3.0))
    with pytest.raises(TypeError, match="numpy.ndarray of shape \\(3,\\)"):
        d + np.ones(3)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        np.ones(3) * d
    with pytest.raises(TypeError, match="numpy.ndarray"):
        cp.maximum(d, np.zeros(3))
    with pytest.raises(TypeError, match="list"):
        cp.exp([1.0, 2.0])
    with pytest.raises(TypeError, match="__setitem__"):
        d[...] = np.zeros(3)
    # numbers and NumPy scalars are fine, as in CuPy
    assert isinstance(d * 2.0 + np.float64(1.0), cp.ndarray)
    d[0] = np.float64(5.0)
    assert float(d[0]) == 5.0


def test_no_implicit_conversion_to_numpy(cp):
    d = cp.ones(3)
    for convert in (np.asarray, np.array, np.asanyarray, np.ascontiguousarray):
        with pytest.raises(TypeError, match="implicit conversion"):
            convert(d)
    with pytest.raises(TypeError, match="implicit conversion"):
        np.testing.assert_array_equal(d, d)
    host = d.get()
    assert type(host) is np.ndarray and type(cp.asnumpy(d)) is np.ndarray
    host[0] = 7.0
    assert float(d[0]) == 1.0  # .get() is a copy


def test_host_data_is_copied_to_the_device(cp):
    source = np.zeros(3)
    d = cp.asarray(source)
    source[:] = 9.0
    assert float(d.sum()) == 0.0
    assert cp.asarray(d) is d  # already on the device: no copy, as in CuPy
    with pytest.raises(TypeError, match="list holding device arrays"):
        cp.array([d, d])


def test_reductions_and_indexing_give_device_arrays(cp):
    d = cp.arange(6.0).reshape(2, 3)
    for value in (d.sum(), d.max(), d[1, 2], cp.sum(d), np.sum(d)):
        assert isinstance(value, cp.ndarray) and value.shape == ()
    assert isinstance(d[0], cp.ndarray) and isinstance(np.exp(d), cp.ndarray)


def test_owndata_is_true_only_for_fresh_memory(cp):
    fresh = cp.zeros(4) + 1.0
    assert fresh.flags.owndata and fresh.flags.c_contiguous
    assert not fresh[1:].flags.owndata and not fresh.T.flags.owndata
    assert not hasattr(fresh.flags, "writeable")  # CuPy's flags have no writeable


@pytest.mark.skipif(REAL is None, reason="needs CuPy installed (for its API surface)")
def test_only_what_cupy_has_and_with_its_parameters(cp):
    d = cp.ones((2, 2))
    assert not hasattr(REAL, "insert") and not hasattr(cp, "insert")
    with pytest.raises(TypeError, match="no implementation"):
        np.insert(d, 0, 1.0)  # NumPy dispatches to CuPy, which has no insert
    with pytest.raises(TypeError, match="cupy.ndarray.sum\\(\\) has no parameter"):
        d.sum(where=True)  # NumPy's sum has `where`; CuPy's does not
    with pytest.raises(TypeError, match="take no \\['where'\\]"):
        np.add(d, d, where=True)
    with pytest.raises(TypeError, match="cupy.zeros"):
        cp.zeros((2,), like=None)  # `like` is NumPy's only
    with pytest.raises(AttributeError):
        d.ctypes


def test_raw_kernel_scalars_must_have_the_parameter_c_type(host_library, monkeypatch):
    """CuPy hands a NumPy scalar's bytes to the kernel as they are: an int64 where
    the kernel takes an int would be misread on the GPU, so the stand-in refuses it."""
    from minigrad.kernels import dense
    cp = ce.install(monkeypatch, host_library)
    kernel = dense.DENSE_BACKWARD_CUDA.function(np.float32)
    n, m = 3, 2
    arrays = [cp.zeros((n, m), np.float32), cp.ones((n, m), np.float32),
              cp.empty((n, m), np.float32), cp.empty(m, np.float32), cp.empty(1, np.float64),
              cp.zeros(64, np.uint32)]
    with pytest.raises(TypeError, match="n is a int64 scalar, the kernel takes int"):
        kernel((1,), (32,), (*arrays, np.int64(n), np.int32(m), np.int32(0), np.float32(0)))
    with pytest.raises(TypeError, match="grad_y is a numpy.ndarray; CuPy kernels take device"):
        kernel((1,), (32,), (np.zeros((n, m), np.float32), *arrays[1:], np.int32(n),
                             np.int32(m), np.int32(0), np.float32(0)))


def test_the_host_library_compiles_every_cuda_spec_once(host_library):
    """Several Raw specs launch kernels of one .cu file: the file is compiled once (its
    extern "C" kernels would clash otherwise), and every kernel has its launcher."""
    specs = cs.all_specs()
    assert len({s.file for s in specs}) < len(specs)
    for spec in specs:
        for name in spec.kernel_names():
            assert hasattr(host_library.lib, f"mg_launch_{name}"), name


def test_install_runs_the_kernels_and_is_undone_after_the_test(host_library):
    before = (sys.modules.get("cupy"), device._BUILT.get("cupy"), _cuda._modules, np.asarray)
    with pytest.MonkeyPatch.context() as monkeypatch:
        fake = ce.install(monkeypatch, host_library)
        assert sys.modules["cupy"] is fake and "cupy" not in device._BUILT
        with mg.set_backend("cupy") as gpu:
            assert (gpu.name, gpu.type, gpu.xp) == ("cupy", "cuda", fake)
            z = fake.asarray(np.array([[-1.0, 2.0], [3.0, -4.0]], np.float32))
            y = gpu.kernels.dense_forward(z, fake.asarray(np.array([0.5, 0.5], np.float32)),
                                          activations.activation("relu"), 0.0)
            assert isinstance(y, fake.ndarray)
            np.testing.assert_array_equal(y.get(), [[0.0, 2.5], [3.5, 0.0]])
            assert (0, "dense.cu") in _cuda._modules  # one RawModule per (device, file)
    after = (sys.modules.get("cupy"), device._BUILT.get("cupy"), _cuda._modules, np.asarray)
    assert all(a is b for a, b in zip(after, before))  # the same objects as before


def test_kernels_that_meet_at_a_barrier_are_told_from_those_that_never_do():
    """The host shim runs a kernel without __syncthreads on one thread (and aborts if
    one is met there): the analysis must follow the __device__ functions called."""
    common = "__device__ __forceinline__ void mg_meet() { __syncthreads(); }\n"
    source = """
template <typename F>
__device__ __forceinline__ void mg_reduce(F* a) { if (a) { mg_meet(); } }
__device__ __forceinline__ void mg_scale(float* a) { a[threadIdx.x] *= 2.0f; }
extern "C" __global__ void mg_sum_f32(float* a) { mg_reduce<float>(a); }
extern "C" __global__ void mg_double_f32(float* a) { mg_scale(a); }
extern "C" __global__ void mg_direct_f32(float* a) { { a[0] = 1; } __syncthreads(); }
"""
    assert cs.synchronizing_kernels(source, common) == {"mg_sum_f32", "mg_direct_f32"}
    assert cs.synchronizing_kernels(source) == {"mg_direct_f32"}  # without the helper's body
