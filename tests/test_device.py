"""Device moves: what can be checked without a GPU (the CuPy runs are in test_cupy*.py)."""
import numpy as np
import pytest

import minigrad as mg


def test_to_same_device_is_identity_and_numpy_is_host():
    x = mg.Tensor(np.arange(3.0), requires_grad=True, device="cpu")
    assert x.device == "cpu" and x.to("cpu") is x
    assert isinstance(x.numpy(), np.ndarray)
    y = mg.Tensor([1.0, 2.0])
    assert y.device == mg.get_backend().type and y.to(y.device) is y
    assert type(y.numpy()) is np.ndarray


def test_tensor_device_argument():
    source = np.arange(4.0)
    x = mg.Tensor(source, device="cpu")
    assert x.device == "cpu" and x.data is source  # a host array is used as it is
    assert mg.Tensor([1, 2], device="CPU").device == "cpu"
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        mg.Tensor([1.0], device="gpu")


def test_unknown_device_is_named():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        mg.Tensor([1.0]).to("tpu")


def _gpu_available():
    try:
        from minigrad.device import require_cupy
        require_cupy()
        return True
    except (ImportError, RuntimeError):
        return False


@pytest.mark.skipif(_gpu_available(), reason="a GPU is present: the error path is not reachable")
def test_cuda_without_gpu_says_what_is_missing():
    with pytest.raises((ImportError, RuntimeError), match="CuPy|CUDA device"):
        mg.Tensor([1.0]).to("cuda")
