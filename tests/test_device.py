"""Device moves: what can be checked without a GPU (the CuPy runs are in test_cupy*.py)."""
import numpy as np
import pytest

import minigrad as mg


def test_to_same_device_is_identity_and_numpy_is_host():
    x = mg.Tensor(np.arange(3.0), requires_grad=True)
    assert x.to("cpu") is x
    assert isinstance(x.numpy(), np.ndarray)


def test_unknown_device_is_named():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        mg.Tensor([1.0]).to("tpu")


def _gpu_available():
    try:
        from minigrad.backend import require_cupy
        require_cupy()
        return True
    except (ImportError, RuntimeError):
        return False


@pytest.mark.skipif(_gpu_available(), reason="a GPU is present: the error path is not reachable")
def test_cuda_without_gpu_says_what_is_missing():
    with pytest.raises((ImportError, RuntimeError), match="CuPy|CUDA device"):
        mg.Tensor([1.0]).to("cuda")
