"""What an installed (not editable) package needs beyond its Python files."""
import fnmatch
import os
import sys

import pytest

from minigrad import kernels
from minigrad.kernels import _cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cuda_files():
    """Every file a CuPy kernel's spec reads, and the header all of them start with."""
    files = {"math.cuh"}
    for name in kernels.names():
        for spec in getattr(getattr(kernels.Kernels("cupy"), name), "cuda_specs", ()):
            files.add(spec.file)
    return sorted(files)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_the_cuda_sources_are_package_data():
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["minigrad.kernels"]
    for filename in cuda_files():
        assert os.path.isfile(os.path.join(ROOT, "minigrad", "kernels", filename)), filename
        assert any(fnmatch.fnmatch(filename, p) for p in patterns), \
            f"{filename} would be left out of a wheel (package-data: {patterns})"


def test_every_cuda_source_is_read_from_its_file():
    for filename in cuda_files():
        with open(os.path.join(ROOT, "minigrad", "kernels", filename), encoding="utf-8") as f:
            assert _cuda.read(filename) == f.read()
    assert _cuda.read("math.cuh") in _cuda.common_source()
    assert "mg_act" in _cuda.common_source() and "mg_deriv" in _cuda.common_source()
